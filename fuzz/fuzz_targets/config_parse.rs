//! `Config::parse` on any text: an error that names the file, never a panic.
#![no_main]

use std::path::Path;

use kubeha_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/kubeha/kubeha.toml");
    match Config::parse(path, text, "host-1") {
        Ok(c) => assert!(!c.needs_control_tier() || c.control_key_file.is_some()),
        Err(e) => assert!(e.to_string().contains("/etc/kubeha/kubeha.toml")),
    }
});
