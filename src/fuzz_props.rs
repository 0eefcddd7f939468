//! The properties the fuzz targets in `fuzz/` check, one function each, so that
//! `cargo fuzz` drives them with coverage-guided input and `cargo test` runs them on random
//! input too (a target that no longer compiles, or a property that breaks, shows in CI).
//! Each takes arbitrary bytes and panics when a property fails.

use crate::config::units::{Size, Span};
use crate::limits::{TypePattern, expected_digests, media_type, sniff};
use crate::policy::{ObjectKey, percent_encode_key};

/// A path that decodes to a key gives a key that keeps the key rules and round-trips.
pub fn key(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = ObjectKey::from_path(path) {
        let k = key.as_str();
        assert!(!k.is_empty() && k.len() <= 1024);
        assert!(!k.starts_with('/'));
        assert!(!k.split('/').any(|s| s.is_empty() || s == "." || s == ".."));
        assert!(!k.chars().any(|c| c.is_control() || c == '\\'));
        let encoded = percent_encode_key(k);
        assert_eq!(ObjectKey::from_path(&encoded).unwrap(), key);
    }
}

/// A range that parses is canonical: parsing it again gives it back.
pub fn range(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(canonical) = crate::api::parse_range(s) {
        assert_eq!(crate::api::parse_range(&canonical).unwrap(), canonical);
    }
}

/// Media types, type patterns, sniffing and digest headers never panic; a media type is its
/// own essence; a pattern covers itself.
pub fn content_type(data: &[u8]) {
    let split = data
        .first()
        .map_or(0, |b| *b as usize % (data.len().max(1)));
    let (head, body) = data.split_at(split);
    let Ok(s) = std::str::from_utf8(head) else {
        return;
    };
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

/// Sizes and durations never panic.
pub fn units(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.parse::<Size>();
    let _ = s.parse::<Span>();
}

/// A config that does not load says at least one thing about why.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = crate::config::parse(text, None) {
        assert!(!errors.0.is_empty());
        let _ = errors.to_string();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_fuzz_property_holds_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            super::key(&data);
            super::range(&data);
            super::content_type(&data);
            super::units(&data);
            super::config(&data);
        }

        #[test]
        fn the_key_property_holds_on_key_like_text(path in "[a-z%0-9/. +()é]{0,40}") {
            super::key(path.as_bytes());
        }

        #[test]
        fn the_config_property_holds_on_config_like_text(text in "(\\[[a-z_]{1,8}\\]\n)?([a-z_]{1,10} = (\"[a-z0-9 ]{0,8}\"|[0-9]{1,4}|true)\n){0,4}") {
            super::config(text.as_bytes());
        }
    }
}
