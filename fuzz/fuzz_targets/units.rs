//! Size and duration units from configs: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::units::{Size, Span};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = s.parse::<Size>();
    let _ = s.parse::<Span>();
});
