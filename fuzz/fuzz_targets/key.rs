//! The one path decoder: never panics, and every key it accepts keeps the key rules and
//! decodes again to itself once re-encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::ObjectKey;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(key) = ObjectKey::from_path(path) {
        let k = key.as_str();
        assert!(!k.is_empty() && k.len() <= 1024);
        assert!(!k.starts_with('/'));
        assert!(!k.split('/').any(|s| s.is_empty() || s == "." || s == ".."));
        assert!(!k.chars().any(|c| c.is_control() || c == '\\'));
        let encoded = portcullis::policy::percent_encode_key(k);
        assert_eq!(ObjectKey::from_path(&encoded).unwrap(), key);
    }
});
