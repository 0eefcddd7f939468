//! A config file, whatever its bytes: an error with a location, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = portcullis::config::parse(text, None) {
        assert!(!errors.0.is_empty());
        let _ = errors.to_string();
    }
});
