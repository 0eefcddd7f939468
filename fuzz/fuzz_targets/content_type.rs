//! Content types, type patterns, digests and sniffing: never panic on client input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::limits::{TypePattern, expected_digests, media_type, sniff};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let (head, body) = data.split_at(split);
    if let Ok(s) = std::str::from_utf8(head) {
        let essence = media_type(s);
        if let Some(e) = &essence {
            assert_eq!(media_type(e).as_deref(), Some(e.as_str()));
        }
        if let Ok(p) = s.parse::<TypePattern>() {
            assert!(p.covers(&p));
            if let Some(e) = &essence {
                let _ = p.matches(e);
            }
        }
        let _ = sniff(essence.as_deref(), body);
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(s) {
            headers.insert("content-md5", v.clone());
            headers.insert("repr-digest", v);
            let _ = expected_digests(&headers);
        }
    }
});
