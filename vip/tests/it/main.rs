#![cfg(target_os = "linux")]
//! Integration tests of kubeha-vip against the real kernel. They need root:
//! each builds its own network namespaces (prefix `khvip-`) and removes them
//! again. Without root they print why and return.

mod lab;

mod arp4;
mod errors;
mod lifetime;
mod ndp6;
