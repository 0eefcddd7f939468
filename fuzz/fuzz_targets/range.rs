//! `Range` parsing: never panics; what it accepts is canonical and parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzz_props::range(data));
