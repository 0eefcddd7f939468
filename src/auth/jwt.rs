//! Bearer JWTs from an identity provider (`[jwt]`), verified with `jsonwebtoken`.
//!
//! Keys come from a JWKS file (RS256, ES256) and/or an HS256 secret in the environment. A
//! token is checked only against keys of the algorithm its header names, so an HS256 token
//! "signed" with an RSA public key meets no HMAC key made from it (algorithm confusion);
//! `alg: none` is not an algorithm the crate knows and fails to parse. A `kid` must name a
//! configured key. `exp`, `nbf`, `iss` and `aud` are required and checked with
//! [`LEEWAY_SECS`] of clock skew.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{AuthMethod, Identity};
use crate::build::BuildError;
use crate::config::{JwtConfig, RateLimitConfig};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::policy::{Principal, check_chars};
use crate::rules::Prefix;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// JWT principals remembered for their rate limits; past this, idle ones are forgotten.
const MAX_REMEMBERED: usize = 10_000;

struct JwtKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// The checks for tokens of this key, built once.
    validation: Validation,
}

/// Verifies tokens and turns their claims into principals.
pub struct JwtVerifier {
    keys: Vec<JwtKey>,
    issuer: String,
    audience: String,
    claim: String,
    template: String,
    config: crate::config::PrincipalConfig,
    defaults: Limits,
    rates: RateLimitConfig,
    principals: Mutex<HashMap<(String, String), Arc<Principal>>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads the keys `[jwt]` names. Every problem is a sentence naming the source.
    pub fn from_config(
        c: &JwtConfig,
        defaults: &Limits,
        rates: &RateLimitConfig,
    ) -> Result<Self, BuildError> {
        let mut keys = Vec::new();
        if let Some(path) = &c.jwks_file {
            let bad = |reason: String| BuildError::new("jwt.jwks_file", reason);
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| bad(format!("{}: not a JWKS document: {e}", path.display())))?;
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone();
                let name = kid.as_deref().unwrap_or("(no kid)");
                let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                    (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => {
                        Algorithm::RS256
                    }
                    (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                        if p.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    _ => {
                        return Err(bad(format!(
                            "{}: key {name}: only RS256 (RSA) and ES256 (P-256) keys are accepted",
                            path.display()
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| bad(format!("{}: key {name}: {e}", path.display())))?;
                keys.push(JwtKey {
                    kid,
                    alg,
                    key,
                    validation: validation(alg, c),
                });
            }
        }
        if let Some(var) = &c.hs256_secret_env {
            let bad = |reason: String| BuildError::new("jwt.hs256_secret_env", reason);
            let secret = std::env::var(var).map_err(|_| bad(format!("${var} is not set")))?;
            if secret.len() < 32 {
                return Err(bad(format!(
                    "the HS256 secret in ${var} is shorter than 32 bytes"
                )));
            }
            keys.push(JwtKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| bad(format!("${var}: {e}")))?,
                validation: validation(Algorithm::HS256, c),
            });
        }
        if keys.is_empty() {
            return Err(BuildError::new(
                "jwt",
                "no key: set jwks_file or hs256_secret_env",
            ));
        }
        Ok(Self {
            keys,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            claim: c.principal_claim.clone(),
            template: c.prefix_template.clone().unwrap_or_default(),
            config: crate::config::PrincipalConfig {
                allow: c.allow.clone(),
                bucket: c.bucket.clone(),
                ..Default::default()
            },
            defaults: defaults.clone(),
            rates: rates.clone(),
            principals: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies `token` and returns its principal.
    pub fn authenticate(&self, token: &str) -> Result<Identity, ApiError> {
        let refuse = |why: &dyn std::fmt::Display| {
            ApiError::invalid_token("the token is not valid").detail(why)
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(&e))?;
        let mut candidates = self.keys.iter().filter(|k| k.alg == header.alg);
        let key = match &header.kid {
            Some(kid) => candidates.find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None => {
                let first = candidates.next();
                if candidates.next().is_some() {
                    return Err(refuse(&"no kid, and several keys of its algorithm"));
                }
                first
            }
        }
        .ok_or_else(|| refuse(&"no configured key for its kid and algorithm"))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.key,
            &key.validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ApiError::invalid_token("the token has expired")
            }
            _ => refuse(&e),
        })?;
        let claims = data.claims;
        let name = claim_str(&claims, &self.claim)
            .ok_or_else(|| refuse(&format_args!("no usable `{}` claim", self.claim)))?;
        let prefix = self.prefix_for(&claims)?;
        // Its own namespace: a token whose subject is `alice` is never the configured
        // principal `alice` (links name their principal, and find it by name).
        Ok(Identity {
            principal: self.principal(&format!("jwt:{name}"), prefix),
            method: AuthMethod::Jwt,
            link: None,
        })
    }

    /// `prefix_template` with each `{claim}` replaced by that claim's value. A value that
    /// could step outside its folder (`/`, `..`, control characters) is refused.
    fn prefix_for(&self, claims: &serde_json::Map<String, Value>) -> Result<Prefix, ApiError> {
        let mut out = String::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(ApiError::forbidden)?;
            let value =
                claim_str(claims, &rest[open + 1..close]).ok_or_else(ApiError::forbidden)?;
            out.push_str(value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out.parse().map_err(|_| ApiError::forbidden())
    }

    fn principal(&self, name: &str, prefix: Prefix) -> Arc<Principal> {
        let mut known = self.principals.lock().unwrap_or_else(|e| e.into_inner());
        let id = (name.to_owned(), prefix.as_str().to_owned());
        if let Some(p) = known.get(&id) {
            return p.clone();
        }
        if known.len() >= MAX_REMEMBERED {
            known.retain(|_, p| Arc::strong_count(p) > 1);
        }
        let config = crate::config::PrincipalConfig {
            name: id.0.clone(),
            prefix: prefix.to_string(),
            ..self.config.clone()
        };
        let p = Arc::new(Principal::from_config(&config, &self.defaults, &self.rates));
        known.insert(id, p.clone());
        p
    }
}

/// What every token of one key must pass: only that key's algorithm, `exp`, `iss` and `aud`
/// present, `nbf` when present, all with [`LEEWAY_SECS`] of clock skew.
fn validation(alg: Algorithm, c: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_issuer(&[&c.issuer]);
    v.set_audience(&[&c.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// Whether a bearer token has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// A claim usable as a name or a folder: a non-empty string, at most 128 bytes, no `/`,
/// not `.` or `..`, no control characters.
fn claim_str<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    let v = claims.get(name)?.as_str()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.contains('/')
        && v != "."
        && v != ".."
        && check_chars(v).is_ok();
    ok.then_some(v)
}
