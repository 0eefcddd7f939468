//! Content types, type patterns, digests and sniffing: never panic on client input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis::fuzz_props::content_type(data));
