//! integration tests

mod haproxy;
mod haproxy_bench;
