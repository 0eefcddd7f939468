//! Authentication: who is calling. Bearer API keys (here), bearer JWTs (`jwt`), signed
//! links (`links`) and TLS client certificates all produce the same [`Identity`].
//!
//! API keys are stored only as SHA-256 hashes. The presented key is hashed and compared in
//! constant time against every configured hash, so neither the time taken nor the log
//! reveals which one matched or how close a guess came.

pub mod access_keys;
pub mod client_cert;
mod jwt;
mod links;

pub use jwt::{JwtVerifier, LEEWAY_SECS, looks_like_jwt};
pub use links::{LinkGrant, LinkSigner, MIN_SECRET_BYTES, is_link_query, unix_now};

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::units::Size;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::policy::Principal;

/// How a request was authenticated (the access log's `auth` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Link,
    Mtls,
    /// The S3 front door: an access key and a SigV4 signature.
    SigV4,
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Link => "link",
            AuthMethod::Mtls => "mtls",
            AuthMethod::SigV4 => "sigv4",
            AuthMethod::None => "none",
        }
    }
}

/// The outcome of authentication.
#[derive(Clone, Debug)]
pub struct Identity {
    pub principal: Arc<Principal>,
    pub method: AuthMethod,
    /// When the credential is a signed link: what it allows, which narrows the principal.
    pub link: Option<LinkGrant>,
}

impl Identity {
    /// The principal's limits, narrowed by a link's `max_size`.
    pub fn limits(&self) -> std::borrow::Cow<'_, Limits> {
        match self.link.as_ref().and_then(|l| l.max_size) {
            Some(max) if max < self.principal.limits.max_object_size.bytes() => {
                let mut narrowed = self.principal.limits.clone();
                narrowed.max_object_size = Size(max);
                std::borrow::Cow::Owned(narrowed)
            }
            _ => std::borrow::Cow::Borrowed(&self.principal.limits),
        }
    }
}

/// The configured API key hashes, each with its principal.
#[derive(Debug, Default)]
pub struct KeyTable {
    entries: Vec<([u8; 32], Arc<Principal>)>,
}

impl KeyTable {
    /// Adds a principal with the hashes of its keys.
    pub fn insert(
        &mut self,
        hashes: impl IntoIterator<Item = [u8; 32]>,
        principal: Arc<Principal>,
    ) {
        for h in hashes {
            self.entries.push((h, principal.clone()));
        }
    }

    /// Authenticates a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        self.authenticate_key(bearer(headers)?)
    }

    /// Authenticates a bearer token as an API key.
    pub fn authenticate_key(&self, token: &str) -> Result<Identity, ApiError> {
        self.lookup(token)
            .map(|principal| Identity {
                principal,
                method: AuthMethod::ApiKey,
                link: None,
            })
            .ok_or_else(|| ApiError::invalid_token("the key is not valid"))
    }

    /// Finds the principal of a presented key, comparing with every hash in constant time.
    pub fn lookup(&self, key: &str) -> Option<Arc<Principal>> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The token of an `Authorization: Bearer` header. The scheme is case-insensitive (RFC 9110
/// section 11.1); a request with two `Authorization` headers is refused, since which one a
/// hop in front of us read is anyone's guess.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Err(ApiError::unauthenticated(
            "an Authorization: Bearer header is required",
        ));
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            "the request has more than one Authorization header",
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_matches(' '))
        .filter(|t| !t.is_empty() && !t.contains(' '))
        .ok_or_else(|| ApiError::invalid_token("the Authorization header must be `Bearer <key>`"))
}

pub use crate::rules::parse_key_hash;

/// A new random API key (32 random bytes, URL-safe) and its `sha256:` hash for the config.
pub fn generate_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "pcs_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_key(&key);
    (key, hash)
}

/// The `sha256:` form of a key.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_said_once() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(http::header::AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer(&with(&[v])).unwrap(), "abc", "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Bearer a b"] {
            assert_eq!(
                bearer(&with(&[v])).unwrap_err().code,
                crate::error::Code::Unauthenticated,
                "{v}"
            );
        }
        let twice = bearer(&with(&["Bearer abc", "Bearer def"])).unwrap_err();
        assert_eq!(twice.code, crate::error::Code::BadRequest);
    }

    #[test]
    fn keys_authenticate_by_hash() {
        let (key, hash) = generate_key();
        assert!(key.len() >= 43 + 4);
        let mut table = KeyTable::default();
        let c = crate::config::PrincipalConfig {
            name: "dev".into(),
            ..Default::default()
        };
        let p = Arc::new(Principal::from_config(
            &c,
            &Limits::new(Size(1), vec![]),
            &Default::default(),
        ));
        table.insert([parse_key_hash(&hash).unwrap()], p);
        let mut h = HeaderMap::new();
        assert!(table.authenticate(&h).is_err());
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(&*table.authenticate(&h).unwrap().principal.name, "dev");
        h.insert("authorization", format!("Bearer {key}x").parse().unwrap());
        assert!(table.authenticate(&h).is_err());
        h.insert("authorization", format!("Basic {key}").parse().unwrap());
        assert!(table.authenticate(&h).is_err());
    }

    #[test]
    fn hashes_parse() {
        assert!(parse_key_hash(&format!("sha256:{}", "ab".repeat(32))).is_ok());
        assert!(parse_key_hash(&format!("sha256:{}", "ab".repeat(31))).is_err());
        assert!(parse_key_hash(&"ab".repeat(32)).is_err());
        assert!(parse_key_hash(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }
}
