//! integration tests

mod haproxy;
