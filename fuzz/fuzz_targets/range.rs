//! `Range` parsing: never panics; what it accepts is canonical and parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(canonical) = portcullis::api::parse_range(s) {
        assert_eq!(portcullis::api::parse_range(&canonical).unwrap(), canonical);
    }
});
