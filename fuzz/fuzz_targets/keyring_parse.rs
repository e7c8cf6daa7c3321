//! A key file as an operator may get it wrong: never a panic; a parsed
//! ring has 1..n distinct keys.
#![no_main]

use kubeha_core::frame::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ring) = Keyring::parse(text) {
        let ids = ring.ids();
        assert!(!ids.is_empty());
        assert!(ring.shares_key_with(&ring));
    }
});
