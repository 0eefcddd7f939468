//! S3 access keys for the front door (SPEC section 11). The config names only the ids; each
//! id's secret is derived from one master secret, so no secret is ever written in a file and
//! removing an id revokes it.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::policy::Principal;

/// What every id `portcullis keygen --s3` makes starts with.
pub const ID_PREFIX: &str = "PCAK";

/// The secret of access key `id`: `base64url_nopad(HMAC-SHA256(master, "portcullis-s3-v1:" + id))`.
pub fn derive_secret(master: &[u8], id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("HMAC takes a key of any length");
    mac.update(b"portcullis-s3-v1:");
    mac.update(id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A new access key id: `PCAK` and 16 random characters of `A-Z0-9`.
pub fn generate_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{ID_PREFIX}{tail}")
}

/// The configured access key ids, each with its derived secret and principal.
#[derive(Default)]
pub struct AccessKeys {
    by_id: HashMap<String, (String, Arc<Principal>)>,
}

impl std::fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("AccessKeys")
            .field("ids", &self.by_id.len())
            .finish()
    }
}

impl AccessKeys {
    /// Adds the ids of `principal`, deriving their secrets from `master`.
    pub fn insert<'a>(
        &mut self,
        master: &[u8],
        ids: impl IntoIterator<Item = &'a String>,
        principal: &Arc<Principal>,
    ) {
        for id in ids {
            self.by_id
                .insert(id.clone(), (derive_secret(master, id), principal.clone()));
        }
    }

    /// The secret and principal of `id`. (The id is public; the signature check that uses
    /// the secret compares in constant time.)
    pub fn get(&self, id: &str) -> Option<(&str, &Arc<Principal>)> {
        self.by_id.get(id).map(|(s, p)| (s.as_str(), p))
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_derived_as_the_spec_says() {
        let master = b"0123456789abcdef0123456789abcdef";
        let secret = derive_secret(master, "PCAK7QF2M9XC4LD8B1ZA");
        assert_eq!(secret.len(), 43);
        // From openssl: printf 'portcullis-s3-v1:PCAK7QF2M9XC4LD8B1ZA' | openssl dgst -sha256
        // -mac HMAC -macopt key:0123...cdef -binary | base64, in its URL-safe form.
        assert_eq!(secret, "LkDbSMzjrRVSJqJ85UwXNyFP1MlQISqXsyoS3RwK5eE");
        assert_ne!(secret, derive_secret(master, "PCAK7QF2M9XC4LD8B1ZB"));
    }

    #[test]
    fn generated_ids_have_the_documented_shape() {
        for _ in 0..100 {
            let id = generate_id();
            assert_eq!(id.len(), 20);
            assert!(id.starts_with(ID_PREFIX));
            crate::rules::validate_access_key_id(&id).unwrap();
        }
    }
}
