//! Object keys: the one function that turns a request path into a bucket key.
//!
//! A peer gateway once had an auth bypass because its policy check and its handler decoded
//! the path differently. Here the path is percent-decoded exactly once, by [`ObjectKey::from_path`],
//! and the resulting [`ObjectKey`] is the only type the policy and the relay accept, so the key
//! the policy checked is byte for byte the key sent to S3.

use std::fmt;

use crate::rules::check_key;

/// A bucket key that passed every rule of SPEC section 4. Only constructible by parsing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Decodes a percent-encoded path segment (everything after `/v1/objects/`) once and checks it.
    pub fn from_path(encoded: &str) -> Result<Self, String> {
        Self::parse(percent_decode_once(encoded)?)
    }

    /// Checks an already-decoded key (from JSON bodies, cursors).
    pub fn parse(key: String) -> Result<Self, String> {
        check_key(&key)?;
        Ok(Self(key))
    }

    /// The key as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment, for `Content-Disposition` file names.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-encodes a key for a path the way a careful client does: everything but
/// unreserved characters and `/`. [`ObjectKey::from_path`] turns it back into the same key.
pub fn percent_encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

/// Percent-decodes `s` exactly once into UTF-8. A `%` not followed by two hex digits is an
/// error rather than a literal, so that no two spellings of a path can mean different keys.
pub fn percent_decode_once(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err("a `%` in the path must start an escape like %20".into());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "the key is not valid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::validate_prefix;
    use proptest::prelude::*;

    #[test]
    fn decodes_once() {
        let k = ObjectKey::from_path("users/alice/a%20b%2Bc+d%25e%3F%23%26.png").unwrap();
        assert_eq!(k.as_str(), "users/alice/a b+c+d%e?#&.png");
        // %2525 is a literal "%25", not "%".
        assert_eq!(ObjectKey::from_path("a%2525").unwrap().as_str(), "a%25");
        assert_eq!(
            ObjectKey::from_path("%C3%A9t%C3%A9").unwrap().as_str(),
            "été"
        );
    }

    #[test]
    fn refuses_bad_keys() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/..",
            "a%2F..%2Fb%2F..",
            "a\\b",
            "a%5Cb",
            "a%00b",
            "a%0Ab",
            "a%7F",
            "%FF",
            "%C3",
            "a%zz",
            "a%2",
            "%",
            "invoice%E2%80%AEfdp.exe",
            "a%E2%80%AAb",
            "a%E2%81%A6b",
            "a%E2%81%A9b",
        ] {
            assert!(
                ObjectKey::from_path(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(ObjectKey::from_path(&"a".repeat(1024)).is_ok());
        assert!(ObjectKey::from_path(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn prefixes() {
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("users/alice/").is_ok());
        for bad in ["users/alice", "/users/", "users//", "../", "a/../", "a\\b/"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        /// Any valid key, encoded as a client would, decodes back to itself.
        #[test]
        fn encode_decode_roundtrip(key in "[a-zA-Z0-9 +()%:@!'*=&?#~,;$é日本/._-]{1,64}") {
            let encoded = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC).to_string();
            match ObjectKey::parse(key.clone()) {
                Ok(k) => prop_assert_eq!(ObjectKey::from_path(&encoded).unwrap(), k),
                Err(_) => prop_assert!(ObjectKey::from_path(&encoded).is_err()),
            }
        }

        /// Decoding never panics and never yields a key that breaks a rule.
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            if let Ok(k) = ObjectKey::from_path(&s) {
                prop_assert!(!k.as_str().split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".."));
                prop_assert!(!k.as_str().chars().any(char::is_control));
            }
        }
    }
}
