//! Conditional requests (RFC 9110 section 13): entity-tag lists in `If-Match` and
//! `If-None-Match`, and `If-Range`.
//!
//! S3 evaluates one entity tag (or `*`) per header and has no `If-Range`. So a single tag
//! goes to S3 as it is, and what S3 cannot take, a list, is evaluated here against the
//! answer's `ETag`, as is `If-Range`.

use std::time::SystemTime;

use crate::error::ApiError;

/// One entity tag of a list: its opaque tag (with the quotes) and whether it is weak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    opaque: String,
    weak: bool,
}

impl Tag {
    /// `W/"x"`, `"x"`, or (as S3 and many clients allow) a bare `x`, taken as `"x"`.
    fn parse(text: &str) -> Option<Tag> {
        let text = text.trim();
        let (weak, rest) = match text.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.is_empty() || rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        let quoted = rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"');
        let inner = if quoted {
            &rest[1..rest.len() - 1]
        } else {
            rest
        };
        if inner.contains('"') {
            return None;
        }
        Some(Tag {
            opaque: format!("\"{inner}\""),
            weak,
        })
    }

    fn strong_eq(&self, other: &Tag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    fn weak_eq(&self, other: &Tag) -> bool {
        self.opaque == other.opaque
    }
}

/// The value of `If-Match` or `If-None-Match`: `*`, or a list of entity tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum EntityTags {
    Any,
    List(Vec<Tag>),
}

impl EntityTags {
    /// Parses a header value; a malformed one is `400`.
    pub(super) fn parse(name: &str, value: &str) -> Result<Self, ApiError> {
        if value.trim() == "*" {
            return Ok(EntityTags::Any);
        }
        let tags: Option<Vec<Tag>> = split_list(value)
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .map(Tag::parse)
            .collect();
        match tags {
            Some(tags) if !tags.is_empty() => Ok(EntityTags::List(tags)),
            _ => Err(ApiError::bad_request(format!(
                "{name} is not `*` or a list of entity tags"
            ))),
        }
    }

    /// What S3 can evaluate itself: `*` or one tag, as a header value.
    pub(super) fn for_s3(&self) -> Option<String> {
        match self {
            EntityTags::Any => Some("*".into()),
            EntityTags::List(tags) if tags.len() == 1 => {
                let t = &tags[0];
                Some(if t.weak {
                    format!("W/{}", t.opaque)
                } else {
                    t.opaque.clone()
                })
            }
            EntityTags::List(_) => None,
        }
    }

    /// `If-Match`: does the current representation's tag pass (strong comparison)?
    pub(super) fn matches_strong(&self, etag: Option<&str>) -> bool {
        let Some(current) = etag.and_then(Tag::parse) else {
            return false;
        };
        match self {
            EntityTags::Any => true,
            EntityTags::List(tags) => tags.iter().any(|t| t.strong_eq(&current)),
        }
    }

    /// `If-None-Match`: is the current representation's tag listed (weak comparison)?
    pub(super) fn matches_weak(&self, etag: Option<&str>) -> bool {
        let Some(current) = etag.and_then(Tag::parse) else {
            return false;
        };
        match self {
            EntityTags::Any => true,
            EntityTags::List(tags) => tags.iter().any(|t| t.weak_eq(&current)),
        }
    }
}

/// Splits a list at the commas outside quoted strings (an entity tag may hold a comma).
fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// `If-Range`: an entity tag, or a date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IfRange {
    Tag(Tag),
    Date(SystemTime),
    /// Neither: the range is not honoured (RFC 9110 section 13.1.5).
    Invalid,
}

impl IfRange {
    pub(crate) fn parse(value: &str) -> IfRange {
        let value = value.trim();
        if let Ok(date) = httpdate::parse_http_date(value) {
            return IfRange::Date(date);
        }
        match Tag::parse(value) {
            Some(tag) if value.contains('"') => IfRange::Tag(tag),
            _ => IfRange::Invalid,
        }
    }

    /// Does the representation still match, so the range may be sent? A tag must match
    /// strongly; a date must equal the last modification (and so be a strong validator).
    pub(crate) fn holds(&self, etag: Option<&str>, last_modified: Option<SystemTime>) -> bool {
        match self {
            IfRange::Tag(want) => etag
                .and_then(Tag::parse)
                .is_some_and(|current| want.strong_eq(&current)),
            IfRange::Date(date) => last_modified.is_some_and(|m| {
                m.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .ok()
                    == date
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .ok()
            }),
            IfRange::Invalid => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(v: &str) -> EntityTags {
        EntityTags::parse("If-Match", v).unwrap()
    }

    #[test]
    fn lists_and_comparisons() {
        let list = tags(r#""a", W/"b", "c,d""#);
        assert!(list.matches_strong(Some(r#""a""#)));
        assert!(
            !list.matches_strong(Some(r#""b""#)),
            "a weak tag never matches strongly"
        );
        assert!(list.matches_weak(Some(r#""b""#)));
        assert!(
            list.matches_strong(Some(r#""c,d""#)),
            "a comma inside quotes"
        );
        assert!(!list.matches_strong(Some(r#""z""#)));
        assert!(!list.matches_strong(None));
        assert_eq!(list.for_s3(), None);
        assert_eq!(tags("abc").for_s3().as_deref(), Some(r#""abc""#));
        assert!(tags("abc").matches_strong(Some(r#""abc""#)));
        assert_eq!(tags(" * ").for_s3().as_deref(), Some("*"));
        assert!(tags("*").matches_strong(Some(r#""x""#)));
        assert!(!tags("*").matches_strong(None));
        for bad in ["", ",", r#""a"b""#, "a b", "W/"] {
            assert!(EntityTags::parse("If-Match", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn if_range() {
        let modified = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(modified);
        assert!(IfRange::parse(&date).holds(None, Some(modified)));
        assert!(
            !IfRange::parse(&date).holds(None, Some(modified + std::time::Duration::from_secs(1)))
        );
        assert!(IfRange::parse(r#""e1""#).holds(Some(r#""e1""#), None));
        assert!(!IfRange::parse(r#"W/"e1""#).holds(Some(r#""e1""#), None));
        assert!(!IfRange::parse(r#""e1""#).holds(Some(r#""e2""#), None));
        assert!(!IfRange::parse("garbage").holds(Some(r#""garbage""#), None));
    }

    proptest! {
        #[test]
        fn a_listed_tag_always_matches(tags_in in prop::collection::vec("[a-z0-9,]{1,8}", 1..5), pick in 0usize..5) {
            let value = tags_in.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
            let list = EntityTags::parse("If-None-Match", &value).unwrap();
            let chosen = format!("\"{}\"", tags_in[pick % tags_in.len()]);
            prop_assert!(list.matches_strong(Some(&chosen)) && list.matches_weak(Some(&chosen)));
        }
    }
}
