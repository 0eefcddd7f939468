//! The one path decoder: never panics, and every key it accepts keeps the key rules and
//! decodes again to itself once re-encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzz_props::key(data));
