//! The header decoder and validator on arbitrary bytes: `cargo +nightly fuzz run header` in
//! rust/core (docs/SECURITY.md). Seeds: `corpus/header/` (golden files and attack files).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| eqx_msg_core::fuzzing::exercise(data));
