//! Signed links (SPEC section 5): a URL on the gateway that performs one method on one key
//! until it expires, on behalf of the principal that issued it.
//!
//! The link's query carries the grant and an HMAC-SHA256 over it. The MAC input is a fixed
//! sequence of length-prefixed fields, so no two grants share an input however their text is
//! chosen. The first configured secret signs; every configured secret verifies (rotation).
//! A link names its principal, which is looked up again on every use: removing the principal
//! or its `link` permission, or dropping the secret, revokes the link.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::Method;
use sha2::Sha256;

use crate::build::BuildError;
use crate::config::LinksConfig;
use crate::error::{ApiError, Code};
use crate::policy::{ObjectKey, percent_encode_key};

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Domain separation for the MAC input; a new link format gets a new tag.
const MAC_TAG: &[u8] = b"portcullis-link-v2";

/// The query parameters a link may carry; any other, or any twice, and it is refused.
const PARAMS: [&str; 8] = [
    "method",
    "expires",
    "principal",
    "bucket",
    "max_size",
    "content_type",
    "create_only",
    "sig",
];

/// What a link allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkGrant {
    /// `GET` (HEAD too) or `PUT`.
    pub method: Method,
    pub key: ObjectKey,
    /// Unix seconds.
    pub expires: u64,
    /// The issuing principal, by name.
    pub principal: String,
    /// The bucket the key is in, by name: a link opens its key in that bucket only.
    pub bucket: String,
    /// A PUT link's size cap (the principal's own still applies).
    pub max_size: Option<u64>,
    /// A PUT link's content type: the upload must declare it (or declares nothing and gets it).
    pub content_type: Option<String>,
    /// A PUT link that only creates: `If-None-Match: *`, so a replay cannot overwrite.
    pub create_only: bool,
}

/// Signs and verifies links with the configured secrets.
pub struct LinkSigner {
    secrets: Vec<Vec<u8>>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("secrets", &self.secrets.len())
            .field("default_ttl", &self.default_ttl)
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

impl LinkSigner {
    /// Reads the secrets from the environment variables `[links]` names. The first must be
    /// set; a later one that is not set is skipped (the end of a rotation).
    pub fn from_config(c: &LinksConfig) -> Result<Self, BuildError> {
        let bad = |reason: String| BuildError::new("links.secrets_env", reason);
        let mut secrets = Vec::new();
        for (i, name) in c.secrets_env.iter().enumerate() {
            match std::env::var(name) {
                Ok(v) if v.len() >= MIN_SECRET_BYTES => secrets.push(v.into_bytes()),
                Ok(_) => {
                    return Err(bad(format!(
                        "the secret in ${name} is shorter than {MIN_SECRET_BYTES} bytes \
                         (e.g. `openssl rand -base64 48`)"
                    )));
                }
                Err(_) if i == 0 => {
                    return Err(bad(format!("${name} (the signing secret) is not set")));
                }
                Err(_) => {}
            }
        }
        secrets.extend(c.secrets.iter().map(|s| s.as_bytes().to_vec()));
        if secrets.is_empty() {
            return Err(bad(
                "no secret: list at least one environment variable in secrets_env".into(),
            ));
        }
        Ok(Self {
            secrets,
            default_ttl: c.default_ttl.get(),
            max_ttl: c.max_ttl.get(),
        })
    }

    /// A signer with the given secrets (tests and benchmarks).
    pub fn new(secrets: Vec<Vec<u8>>, default_ttl: Duration, max_ttl: Duration) -> Self {
        Self {
            secrets,
            default_ttl,
            max_ttl,
        }
    }

    /// The lifetime for a requested `expires_in`: the default when absent, refused above
    /// `max_ttl` or below one second.
    pub fn ttl(&self, expires_in: Option<u64>) -> Result<Duration, ApiError> {
        let Some(secs) = expires_in else {
            return Ok(self.default_ttl);
        };
        if secs == 0 {
            return Err(ApiError::bad_request(
                "expires_in must be at least 1 second",
            ));
        }
        if secs > self.max_ttl.as_secs() {
            return Err(ApiError::bad_request(format!(
                "expires_in is above this gateway's maximum of {} seconds",
                self.max_ttl.as_secs()
            )));
        }
        Ok(Duration::from_secs(secs))
    }

    /// The link's path and query, relative to the gateway's base URL.
    pub fn sign(&self, grant: &LinkGrant) -> String {
        let sig = URL_SAFE_NO_PAD.encode(mac(&self.secrets[0], grant).finalize().into_bytes());
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("method", grant.method.as_str());
        query.append_pair("expires", &grant.expires.to_string());
        query.append_pair("principal", &grant.principal);
        query.append_pair("bucket", &grant.bucket);
        if let Some(max) = grant.max_size {
            query.append_pair("max_size", &max.to_string());
        }
        if let Some(t) = &grant.content_type {
            query.append_pair("content_type", t);
        }
        if grant.create_only {
            query.append_pair("create_only", "1");
        }
        query.append_pair("sig", &sig);
        format!(
            "/v1/objects/{}?{}",
            percent_encode_key(grant.key.as_str()),
            query.finish()
        )
    }

    /// Checks a link's query for a request of `method` on `key` at `now` (Unix seconds).
    /// Any change to any field is `link_invalid`; a genuine link past its time is
    /// `link_expired`.
    pub fn verify(
        &self,
        method: &Method,
        key: &ObjectKey,
        query: &str,
        now: u64,
    ) -> Result<LinkGrant, ApiError> {
        let mut fields: [Option<String>; PARAMS.len()] = Default::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let i = PARAMS
                .iter()
                .position(|p| *p == name)
                .ok_or_else(|| invalid("the link has a parameter it was not signed with"))?;
            if fields[i].replace(value.into_owned()).is_some() {
                return Err(invalid("the link repeats a parameter"));
            }
        }
        let [
            m,
            expires,
            principal,
            bucket,
            max_size,
            content_type,
            create_only,
            sig,
        ] = fields;
        let (Some(m), Some(expires), Some(principal), Some(bucket), Some(sig)) =
            (m, expires, principal, bucket, sig)
        else {
            return Err(invalid("the link is missing a parameter"));
        };
        let grant = LinkGrant {
            method: match m.as_str() {
                "GET" => Method::GET,
                "PUT" => Method::PUT,
                _ => return Err(invalid("the link's method is not GET or PUT")),
            },
            key: key.clone(),
            expires: number(&expires)?,
            principal,
            bucket,
            max_size: max_size.as_deref().map(number).transpose()?,
            content_type,
            create_only: match create_only.as_deref() {
                None => false,
                Some("1") => true,
                Some(_) => return Err(invalid("create_only must be 1")),
            },
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig.as_bytes())
            .map_err(|_| invalid("the signature is not base64url"))?;
        // `verify_slice` compares in constant time.
        if !self
            .secrets
            .iter()
            .any(|secret| mac(secret, &grant).verify_slice(&sig).is_ok())
        {
            return Err(invalid("the signature does not match"));
        }
        let allowed =
            grant.method == method || (grant.method == Method::GET && method == Method::HEAD);
        if !allowed {
            return Err(invalid("the link is for another method"));
        }
        if now >= grant.expires {
            return Err(ApiError::new(Code::LinkExpired, "the link has expired"));
        }
        Ok(grant)
    }
}

/// Whether a query string is meant as a signed link's (it carries any of a link's
/// parameters); whether it is a valid one is [`LinkSigner::verify`]'s question.
pub fn is_link_query(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(name, _)| PARAMS.contains(&&*name))
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(secret: &[u8], g: &LinkGrant) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    let max = g.max_size.map(|m| m.to_string()).unwrap_or_default();
    let expires = g.expires.to_string();
    let fields: [&[u8]; 8] = [
        g.method.as_str().as_bytes(),
        g.key.as_str().as_bytes(),
        expires.as_bytes(),
        g.principal.as_bytes(),
        g.bucket.as_bytes(),
        max.as_bytes(),
        g.content_type.as_deref().unwrap_or("").as_bytes(),
        if g.create_only { b"1" } else { b"" },
    ];
    field(&mut mac, MAC_TAG);
    for f in fields {
        field(&mut mac, f);
    }
    mac
}

/// One length-prefixed field of the MAC input.
fn field(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

fn number(s: &str) -> Result<u64, ApiError> {
    // Digits only: no sign, no spaces, no leading `+` that would sign differently.
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("a number in the link is malformed"));
    }
    s.parse()
        .map_err(|_| invalid("a number in the link is malformed"))
}

fn invalid(detail: &'static str) -> ApiError {
    ApiError::new(Code::LinkInvalid, "the link is not valid").detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer(secrets: &[&str]) -> LinkSigner {
        LinkSigner::new(
            secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            Duration::from_secs(60),
            Duration::from_secs(900),
        )
    }

    fn grant() -> LinkGrant {
        LinkGrant {
            method: Method::PUT,
            key: ObjectKey::parse("users/alice/a b+c.png".into()).unwrap(),
            expires: 2_000,
            principal: "alice".into(),
            bucket: "files".into(),
            max_size: Some(1024),
            content_type: Some("image/png".into()),
            create_only: true,
        }
    }

    fn query(link: &str) -> &str {
        link.split_once('?').unwrap().1
    }

    #[test]
    fn a_link_verifies_for_its_method_and_key_until_it_expires() {
        let s = signer(&["k".repeat(32).as_str()]);
        let g = grant();
        let link = s.sign(&g);
        assert!(link.starts_with("/v1/objects/users/alice/a%20b%2Bc.png?"));
        assert_eq!(
            s.verify(&Method::PUT, &g.key, query(&link), 1_999).unwrap(),
            g
        );
        let e = s
            .verify(&Method::PUT, &g.key, query(&link), 2_000)
            .unwrap_err();
        assert_eq!(e.code, Code::LinkExpired);
        let e = s.verify(&Method::GET, &g.key, query(&link), 1).unwrap_err();
        assert_eq!(e.code, Code::LinkInvalid);
        let other = ObjectKey::parse("users/alice/other".into()).unwrap();
        let e = s.verify(&Method::PUT, &other, query(&link), 1).unwrap_err();
        assert_eq!(e.code, Code::LinkInvalid);
    }

    #[test]
    fn rotation_old_secrets_verify_only_while_listed() {
        let old = signer(&["o".repeat(32).as_str()]);
        let link = old.sign(&grant());
        let rotated = signer(&["n".repeat(32).as_str(), "o".repeat(32).as_str()]);
        assert!(
            rotated
                .verify(&Method::PUT, &grant().key, query(&link), 1)
                .is_ok()
        );
        let done = signer(&["n".repeat(32).as_str()]);
        assert!(
            done.verify(&Method::PUT, &grant().key, query(&link), 1)
                .is_err()
        );
    }

    #[test]
    fn unknown_or_repeated_parameters_are_refused() {
        let s = signer(&["k".repeat(32).as_str()]);
        let link = s.sign(&grant());
        let q = query(&link);
        for bad in [
            format!("{q}&x=1"),
            format!("{q}&principal=alice"),
            format!("{q}&sig=AA"),
        ] {
            let e = s.verify(&Method::PUT, &grant().key, &bad, 1).unwrap_err();
            assert_eq!(e.code, Code::LinkInvalid, "{bad}");
        }
    }

    #[test]
    fn ttl_is_bounded() {
        let s = signer(&["k".repeat(32).as_str()]);
        assert_eq!(s.ttl(None).unwrap(), Duration::from_secs(60));
        assert_eq!(s.ttl(Some(900)).unwrap(), Duration::from_secs(900));
        assert!(s.ttl(Some(901)).is_err());
        assert!(s.ttl(Some(0)).is_err());
    }

    proptest! {
        /// Changing any byte of the query (other than to an equivalent encoding of the same
        /// text) never yields a link that verifies to a different grant.
        #[test]
        fn tampering_never_verifies_to_another_grant(pos in 0usize..400, byte in 0u8..128) {
            let s = signer(&["k".repeat(32).as_str()]);
            let g = grant();
            let link = s.sign(&g);
            let mut q = query(&link).as_bytes().to_vec();
            let pos = pos % q.len();
            q[pos] = byte;
            if let Ok(q) = std::str::from_utf8(&q)
                && let Ok(found) = s.verify(&Method::PUT, &g.key, q, 1)
            {
                prop_assert_eq!(found, g);
            }
        }
    }
}
