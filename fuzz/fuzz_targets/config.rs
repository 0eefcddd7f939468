//! A config file, whatever its bytes: an error with a location, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzz_props::config(data));
