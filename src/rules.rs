//! The syntax the config and the requests share: actions, content-type patterns, the
//! characters of keys and prefixes, API key hashes. A leaf: it imports nothing from the
//! crate, so `config` can parse with it and `policy`, `limits` and `auth` can act on what it
//! parsed.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// S3's limit on key length, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// What a request does, as named in a principal's `allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// GET and HEAD of an object.
    Get,
    Put,
    Delete,
    List,
    /// Issue signed links.
    Link,
}

impl Action {
    /// The name used in configs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Put => "put",
            Action::Delete => "delete",
            Action::List => "list",
            Action::Link => "link",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A content-type pattern: `*/*`, `image/*` or `image/png`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypePattern {
    kind: String,
    /// `None` for `*`.
    subtype: Option<String>,
}

impl TypePattern {
    /// Does this pattern allow the media type `mime` (lower-case `type/subtype`, no parameters)?
    pub fn matches(&self, mime: &str) -> bool {
        let Some((kind, subtype)) = mime.split_once('/') else {
            return false;
        };
        (self.kind == "*" || self.kind == kind)
            && self.subtype.as_deref().is_none_or(|s| s == subtype)
    }

    /// Does this pattern allow everything `other` allows?
    pub fn covers(&self, other: &TypePattern) -> bool {
        (self.kind == "*" || self.kind == other.kind)
            && (self.subtype.is_none() || self.subtype == other.subtype)
    }
}

impl FromStr for TypePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let bad =
            || format!("`{s}` is not a content-type pattern like `image/png`, `image/*` or `*/*`");
        let (kind, subtype) = lower.split_once('/').ok_or_else(bad)?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !(kind == "*" || token(kind))
            || !(subtype == "*" || token(subtype))
            || (kind == "*" && subtype != "*")
        {
            return Err(bad());
        }
        Ok(Self {
            kind: kind.into(),
            subtype: (subtype != "*").then(|| subtype.into()),
        })
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.kind,
            self.subtype.as_deref().unwrap_or("*")
        )
    }
}

/// Parses a configured `sha256:<64 hex>` key hash.
pub fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_part = s.strip_prefix("sha256:").ok_or_else(|| {
        "must be `sha256:` followed by 64 hex digits (see `portcullis keygen`)".to_string()
    })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| {
        "must be `sha256:` followed by 64 hex digits (see `portcullis keygen`)".to_string()
    })?;
    Ok(out)
}

pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes; the most is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    check_chars(key)?;
    if key.starts_with('/') {
        return Err("the key must not start with `/`".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(
                    "the key must not have an empty path segment (`//` or a trailing `/`)".into(),
                );
            }
            "." | ".." => return Err(format!("the key must not have a `{segment}` path segment")),
            _ => {}
        }
    }
    Ok(())
}

/// Characters no key, prefix or cursor may hold.
pub fn check_chars(s: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "control character U+{:04X} is not allowed",
            c as u32
        ));
    }
    if s.contains('\\') {
        return Err("`\\` is not allowed".into());
    }
    // Bidirectional overrides and isolates make a key display as another (`exe.txt` shown
    // as `txt.exe`); RFC 9839 lists them among the code points to refuse.
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(format!(
            "bidirectional control character U+{:04X} is not allowed",
            c as u32
        ));
    }
    Ok(())
}

/// A principal's configured prefix: empty (the whole bucket) or segments ending in `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.ends_with('/') {
        return Err(format!(
            "`{prefix}` must end with `/`, or `{prefix}` would also cover `{prefix}-other/`"
        ));
    }
    check_key(&prefix[..prefix.len() - 1]).map_err(|e| e.replace("the key", "the prefix"))
}

/// A configured API key's hash: `sha256:<64 hex>` in the file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(sha256:...)")
    }
}

impl FromStr for KeyHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_key_hash(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl TypePattern {
    /// `*/*`.
    pub fn any() -> Self {
        Self {
            kind: "*".into(),
            subtype: None,
        }
    }
}

impl<'de> Deserialize<'de> for TypePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An address or network a config lists (`10.0.0.0/8`, or `192.0.2.7` for one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net(pub ipnet::IpNet);

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| format!("`{s}` is not an address or a network like 10.0.0.0/8"))
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A principal's prefix, checked as it is read: empty (the whole bucket) or key segments
/// ending in `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        validate_prefix(s).map(|()| Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bucket name S3 clients can put in a request, as s3s reads the door's paths: 3-63 of
/// `a-z 0-9 . -`, a letter or digit at each end, not an IP address.
pub fn is_s3_client_bucket_name(name: &str) -> bool {
    s3s::path::check_bucket_name(name)
}

/// The shape of an S3 access key id (`portcullis keygen --s3` makes `PCAK` and 16 more):
/// 16 to 128 of `A-Z 0-9`, as AWS's own ids.
pub fn validate_access_key_id(id: &str) -> Result<(), String> {
    if (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not an access key id: 16-128 of A-Z 0-9 (portcullis keygen --s3 makes one)"
        ))
    }
}
