//! Limits applied to uploads while they stream: size, content type (declared and sniffed),
//! digests and the body idle timeout.
//!
//! The size is refused from `Content-Length` before a byte of the body is read, and every body
//! is counted as it streams by [`GuardedBody`], which fails at the first byte over the limit.

mod body;
mod digest;
pub mod quota;
mod rate;
pub mod shared;
mod shed;
mod sniff;
mod throttle;

pub use body::{
    BodyFailure, BodyWatch, ChecksumAlgorithm, ChecksumValue, ExpectedChecksum, ExpectedDigests,
    Guard, GuardedBody, IdleTimer, Prefixed,
};
pub use digest::expected_digests;
pub use rate::{AuthFailures, PrincipalGate, address_key, rate_limited};
pub use shed::{Admission, Permit, Shed, ShedLayer, ShedPermit, Shedding};
pub use sniff::{SNIFF_BYTES, Sniffed, sniff};
pub use throttle::{ByteRate, Throttled};

use crate::config::units::Size;
use crate::error::ApiError;

pub use crate::rules::TypePattern;

/// The media type of a `Content-Type` value: lower-case `type/subtype` without parameters,
/// or `None` when it is not one.
pub fn media_type(content_type: &str) -> Option<String> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, subtype) = essence.split_once('/')?;
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (token(kind) && token(subtype)).then_some(essence)
}

/// The limits one principal's uploads are held to.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_object_size: Size,
    pub content_types: Vec<TypePattern>,
    /// Check the first bytes against the declared type.
    pub sniff: bool,
}

impl Limits {
    pub fn new(max_object_size: Size, content_types: Vec<TypePattern>) -> Self {
        Self {
            max_object_size,
            content_types,
            sniff: true,
        }
    }

    /// From `[limits]` (validated already).
    pub fn from_config(c: &crate::config::LimitsConfig) -> Self {
        Self {
            sniff: c.sniff,
            ..Self::new(c.max_object_size, c.content_types.clone())
        }
    }

    /// These limits narrowed by a principal's own.
    pub fn narrowed(&self, max: Option<Size>, types: Option<&[TypePattern]>) -> Self {
        Self {
            max_object_size: max.map_or(self.max_object_size, |m| m.min(self.max_object_size)),
            content_types: match types {
                Some(t) => t.to_vec(),
                None => self.content_types.clone(),
            },
            sniff: self.sniff,
        }
    }

    /// Refuses a declared length over the limit, before any byte of the body is read.
    pub fn check_length(&self, length: u64) -> Result<(), ApiError> {
        if length > self.max_object_size.bytes() {
            return Err(ApiError::too_large(self.max_object_size));
        }
        Ok(())
    }

    /// Refuses a declared content type that no pattern allows.
    pub fn check_type(&self, media_type: &str) -> Result<(), ApiError> {
        if self.content_types.iter().any(|p| p.matches(media_type)) {
            Ok(())
        } else {
            Err(ApiError::unsupported_type(media_type))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> TypePattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns() {
        assert!(p("*/*").matches("image/png"));
        assert!(p("image/*").matches("image/png"));
        assert!(!p("image/*").matches("text/html"));
        assert!(p("Image/PNG").matches("image/png"));
        assert!(!p("image/png").matches("image/pngx"));
        assert!(p("image/*").covers(&p("image/png")));
        assert!(!p("image/png").covers(&p("image/*")));
        for bad in [
            "",
            "image",
            "*/png",
            "image/",
            "/png",
            "im age/png",
            "image/png; q=1",
        ] {
            assert!(bad.parse::<TypePattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(
            media_type("Text/HTML; charset=utf-8").as_deref(),
            Some("text/html")
        );
        assert_eq!(media_type("image/png").as_deref(), Some("image/png"));
        assert_eq!(media_type("nonsense"), None);
        assert_eq!(media_type("a/b c"), None);
    }

    proptest! {
        #[test]
        fn covering_pattern_matches_all_it_covers(kind in "[a-z]{1,6}", sub in "[a-z]{1,6}") {
            let mime = format!("{kind}/{sub}");
            let exact = p(&mime);
            let wide = p(&format!("{kind}/*"));
            prop_assert!(exact.matches(&mime));
            prop_assert!(wide.covers(&exact) && wide.matches(&mime) && p("*/*").covers(&wide));
        }

        #[test]
        fn length_limit_is_exact(max in 0u64..1_000_000, len in 0u64..2_000_000) {
            let l = Limits::new(Size(max), vec![p("*/*")]);
            prop_assert_eq!(l.check_length(len).is_ok(), len <= max);
        }
    }
}
