//! Policy: may this principal do this action on this key, and within which limits.
//!
//! A principal is what authentication produces; the policy step only reads it. The same
//! `403 forbidden` answers every refusal, before S3 is asked, so the answer never says
//! whether an object exists.

mod key;

pub(crate) use crate::rules::check_chars;
pub use crate::rules::{Action, MAX_KEY_BYTES, validate_prefix};
pub use key::{ObjectKey, percent_decode_once, percent_encode_key};

use std::sync::Arc;

use crate::config::{PrincipalConfig, Rate, RateLimitConfig};
use crate::error::ApiError;
use crate::limits::{Limits, PrincipalGate};

/// An authenticated caller and everything the policy needs to know about it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: Arc<str>,
    allow: u8,
    /// The bucket it works in, by the name clients see.
    pub bucket: Arc<str>,
    /// Every key it touches starts with this (empty: the whole bucket).
    pub prefix: String,
    /// Its effective limits (defaults narrowed by its own).
    pub limits: Limits,
    /// Its request rate and concurrent-transfer cap.
    pub gate: Arc<PrincipalGate>,
    /// Bytes in and out per UTC day.
    pub max_bytes_per_day: Option<u64>,
}

impl Principal {
    /// Builds a principal from its (validated) config, the gateway's default limits and
    /// `[rate_limit]`. Its `bucket` is resolved already (the builder puts the first bucket's
    /// name where the file names none).
    pub fn from_config(c: &PrincipalConfig, defaults: &Limits, rates: &RateLimitConfig) -> Self {
        let rate = c.rate_limit.unwrap_or(Rate {
            requests_per_second: rates.requests_per_second,
            burst: rates.burst,
        });
        Self {
            name: Arc::from(c.name.as_str()),
            max_bytes_per_day: c.max_bytes_per_day.map(|q| q.bytes()),
            allow: c.allow.iter().fold(0, |acc, a| acc | a.bit()),
            bucket: Arc::from(c.bucket.as_deref().unwrap_or_default()),
            prefix: c.prefix.clone(),
            limits: defaults.narrowed(c.max_object_size, c.content_types.as_deref()),
            gate: Arc::new(
                PrincipalGate::new(rate, rates.max_concurrent_per_principal)
                    .with_byte_rate(rates.bytes_per_second.map(|b| b.bytes())),
            ),
        }
    }

    /// On reload: keeps `old`'s gate (its rate and in-flight state) when its settings did
    /// not change, so a reload neither refills a bucket nor forgets running transfers.
    pub fn keeping_gate_of(mut self, old: &Principal) -> Self {
        if self.gate.same_settings(&old.gate) {
            self.gate = old.gate.clone();
        }
        self
    }

    /// Whether `action` is in the principal's `allow`.
    pub fn may(&self, action: Action) -> bool {
        self.allow & action.bit() != 0
    }

    /// May the principal do `action` on `key`? One answer for every refusal.
    pub fn authorize(&self, action: Action, key: &ObjectKey) -> Result<(), ApiError> {
        if !self.may(action) {
            return Err(ApiError::forbidden());
        }
        if !key.as_str().starts_with(&self.prefix) {
            return Err(self.outside_prefix());
        }
        Ok(())
    }

    /// `403` for a key outside the prefix, naming the prefix: it is the caller's own, and
    /// the answer is the same whether or not the key exists.
    pub(crate) fn outside_prefix(&self) -> ApiError {
        ApiError::new(
            crate::error::Code::Forbidden,
            format!("keys of this principal start with `{}`", self.prefix),
        )
    }

    /// May the principal list under `prefix`? Listing is confined to its own prefix.
    pub fn authorize_list(&self, prefix: &str) -> Result<(), ApiError> {
        if !self.may(Action::List) {
            return Err(ApiError::forbidden());
        }
        if !prefix.starts_with(&self.prefix) {
            return Err(self.outside_prefix());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Size;

    fn alice() -> Principal {
        let c = PrincipalConfig {
            name: "alice".into(),
            allow: vec![Action::Get, Action::List],
            prefix: "users/alice/".into(),
            ..Default::default()
        };
        Principal::from_config(
            &c,
            &Limits::new(Size::gib(1), vec!["*/*".parse().unwrap()]),
            &Default::default(),
        )
    }

    fn key(s: &str) -> ObjectKey {
        ObjectKey::parse(s.into()).unwrap()
    }

    #[test]
    fn allow_and_prefix() {
        let a = alice();
        assert!(a.authorize(Action::Get, &key("users/alice/x")).is_ok());
        assert!(a.authorize(Action::Put, &key("users/alice/x")).is_err());
        assert!(a.authorize(Action::Get, &key("users/alicex")).is_err());
        assert!(a.authorize(Action::Get, &key("users/bob/x")).is_err());
        assert!(a.authorize_list("users/alice/photos/").is_ok());
        assert!(a.authorize_list("users/").is_err());
    }
}
