//! The one build step: a parsed and validated [`Config`] becomes what requests read. It
//! loads what lives outside the file (certificates, JWKS, secrets from the environment),
//! builds the principals, their key table and certificate names, and reports every problem
//! with its field, to which [`crate::config::Source`] adds the file and line. `serve`,
//! `SIGHUP` reload and `check-config` all go through it, once per config.
//!
//! What outlives a reload (the load-shedding counts, the quota ledger, the connection to
//! Redis) is built once at start, as [`Lasting`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::api::AppState;
use crate::auth::client_cert::{parse_san, parse_subject};
use crate::auth::{JwtVerifier, KeyTable, LinkSigner};
use crate::config::{self, Config};
use crate::limits::{AuthFailures, Limits, Shed};
use crate::policy::Principal;
use crate::relay::Buckets;

/// One thing in a config that could not be built, by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    /// Dotted path of the field, e.g. `principals[1].client_cert_subjects`.
    pub field: String,
    pub reason: String,
}

impl BuildError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same reason, about another field (a builder shared by two sections).
    pub fn in_field(self, field: impl Into<String>) -> Self {
        Self::new(field, self.reason)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for BuildError {}

/// Every problem found building one config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildErrors(pub Vec<BuildError>);

impl fmt::Display for BuildErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildErrors {}

impl From<BuildError> for BuildErrors {
    fn from(e: BuildError) -> Self {
        Self(vec![e])
    }
}

impl BuildErrors {
    /// As `(field, reason)` pairs, for [`crate::config::Source::locate`].
    pub fn problems(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|e| (e.field.clone(), e.reason.clone()))
            .collect()
    }
}

/// Who may call and how they prove it: what a config builds beside its buckets.
pub struct Identities {
    pub keys: KeyTable,
    pub jwt: Option<JwtVerifier>,
    pub links: Option<LinkSigner>,
    /// Configured principals by name (the principal a link names).
    pub principals: HashMap<String, Arc<Principal>>,
    /// Configured principals by client-certificate subject or SAN (mTLS).
    pub subjects: HashMap<String, Arc<Principal>>,
    /// `server.tls`, for new handshakes.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `[s3_api]`: the door's settings, its access keys and its TLS config.
    pub door: Option<crate::door::Settings>,
    pub access_keys: crate::auth::access_keys::AccessKeys,
    pub door_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Builds the identities of `config`. `buckets` are the names of the running buckets (the
/// first is the default); `previous` the principals a reload replaces, whose rate state
/// carries over when their settings did not change.
pub fn identities(
    config: &Config,
    buckets: &[&str],
    previous: Option<&HashMap<String, Arc<Principal>>>,
) -> Result<Identities, BuildErrors> {
    let mut errors = Vec::new();
    let defaults = Limits::from_config(&config.limits);
    let mut access_keys = crate::auth::access_keys::AccessKeys::default();
    let master = match &config.s3_api {
        None => None,
        Some(door) => match door.resolve_secret() {
            Ok(m) if m.len() >= crate::auth::MIN_SECRET_BYTES => Some(m),
            Ok(_) => {
                errors.push(BuildError::new(
                    "s3_api.secrets_env",
                    format!(
                        "the master secret is shorter than {} bytes",
                        crate::auth::MIN_SECRET_BYTES
                    ),
                ));
                None
            }
            Err(reason) => {
                errors.push(BuildError::new("s3_api.secrets_env", reason));
                None
            }
        },
    };

    // Every principal's bucket must be one the process runs: adding a bucket is a restart.
    let mut bucket_of = |field: String, name: &Option<String>| match name {
        None => buckets.first().map(|b| b.to_string()),
        Some(name) if buckets.contains(&name.as_str()) => Some(name.clone()),
        Some(name) => {
            errors.push(BuildError::new(
                field,
                format!(
                    "the bucket `{name}` is not running (running: {}); adding a bucket takes \
                     a restart",
                    buckets.join(", ")
                ),
            ));
            None
        }
    };
    let mut keys = KeyTable::default();
    let mut principals = HashMap::new();
    let mut subjects: HashMap<String, Arc<Principal>> = HashMap::new();
    let mut principal_configs = Vec::new();
    for (i, p) in config.principals.iter().enumerate() {
        principal_configs.push(config::PrincipalConfig {
            bucket: bucket_of(format!("principals[{i}].bucket"), &p.bucket),
            ..p.clone()
        });
    }
    let jwt_config = config.jwt.as_ref().map(|j| config::JwtConfig {
        bucket: bucket_of("jwt.bucket".into(), &j.bucket),
        ..j.clone()
    });
    for (i, p) in principal_configs.iter().enumerate() {
        let mut principal = Principal::from_config(p, &defaults, &config.rate_limit);
        if let Some(old) = previous.and_then(|m| m.get(&p.name)) {
            principal = principal.keeping_gate_of(old);
        }
        let principal = Arc::new(principal);
        keys.insert(p.api_keys.iter().map(|h| h.0), principal.clone());
        if let Some(master) = &master {
            access_keys.insert(master.as_bytes(), &p.s3_access_keys, &principal);
        }
        let names = p
            .client_cert_subjects
            .iter()
            .map(|s| ("client_cert_subjects", s, parse_subject(s)))
            .chain(
                p.client_cert_sans
                    .iter()
                    .map(|s| ("client_cert_sans", s, parse_san(s))),
            );
        for (field, text, parsed) in names {
            let field = format!("principals[{i}].{field}");
            match parsed {
                Ok(name) if subjects.contains_key(&name) => {
                    errors.push(BuildError::new(field, format!("`{text}` is listed twice")));
                }
                Ok(name) => {
                    subjects.insert(name, principal.clone());
                }
                Err(reason) => errors.push(BuildError::new(field, reason)),
            }
        }
        principals.insert(p.name.clone(), principal);
    }
    let jwt = match &jwt_config {
        Some(j) => JwtVerifier::from_config(j, &defaults, &config.rate_limit)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };
    let links = match &config.links {
        Some(l) => LinkSigner::from_config(l).map_err(|e| errors.push(e)).ok(),
        None => None,
    };
    let tls = match &config.server.tls {
        Some(t) => crate::server::tls::server_config(t)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };
    let door_tls = match config.s3_api.as_ref().and_then(|d| d.tls.as_ref()) {
        Some(t) => crate::server::tls::server_config(t)
            .map_err(|e| errors.push(e.in_field("s3_api.tls")))
            .ok(),
        None => None,
    };
    if !errors.is_empty() {
        return Err(BuildErrors(errors));
    }
    Ok(Identities {
        keys,
        jwt,
        links,
        principals,
        subjects,
        tls,
        door: config
            .s3_api
            .as_ref()
            .map(crate::door::Settings::from_config),
        access_keys,
        door_tls,
    })
}

/// What `check-config` builds: the identities of `config` with its own buckets.
pub fn check(config: &Config) -> Result<(), BuildErrors> {
    let buckets = config.bucket_configs();
    let names: Vec<&str> = buckets.iter().map(|b| b.name.as_str()).collect();
    identities(config, &names, None).map(|_| ())
}

/// What outlives every reload, built once at start: the load-shedding counts, the quota
/// ledger and, with `[redis]`, the limits shared with the other instances.
#[derive(Clone, Debug)]
pub struct Lasting {
    /// `server.max_concurrent_requests` and `max_requests_per_address`.
    pub shed: Arc<Shed>,
    pub ledger: Arc<crate::limits::quota::Ledger>,
    pub shared: Option<Arc<crate::limits::shared::SharedLimits>>,
    /// The memory the S3 door's aws-chunked chunks are gathered in (s3s holds each whole
    /// to check its signature): `backend.upload_buffer_memory`, in bytes.
    pub chunk_room: Arc<tokio::sync::Semaphore>,
}

impl Lasting {
    /// Connects to `[redis]` when there is one (a Redis that does not answer yet is not an
    /// error: limits are per instance until it does).
    pub async fn start(config: &Config) -> Result<Self, BuildError> {
        let ledger = Arc::new(crate::limits::quota::Ledger::default());
        let shared = match &config.redis {
            Some(redis) => Some(
                crate::limits::shared::SharedLimits::start(
                    redis,
                    config.rate_limit.unauthenticated_per_ip,
                    ledger.clone(),
                )
                .await
                .map_err(|e| BuildError::new("redis", e))?,
            ),
            None => None,
        };
        let shed = Arc::new(Shed::new(
            config.server.max_concurrent_requests,
            config.server.requests_per_address(),
        ));
        let room = usize::try_from(config.backend.upload_buffer_memory.bytes())
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Self {
            shed,
            ledger,
            shared,
            chunk_room: Arc::new(tokio::sync::Semaphore::new(room)),
        })
    }
}

/// Builds the per-request state and the TLS config from a validated config. On reload,
/// `previous` is the state it replaces: the failed-auth counts carry over, and so does each
/// principal's rate state when its settings did not change.
pub fn state(
    config: &Config,
    buckets: Buckets,
    lasting: &Lasting,
    previous: Option<&AppState>,
) -> Result<(AppState, Tls), BuildErrors> {
    let names = buckets.names();
    let built = identities(config, &names, previous.map(|s| &s.principals))?;
    Ok(assemble(config, built, buckets, lasting, previous))
}

/// The per-request state from identities built already (start-up builds them before it
/// connects to anything, so a bad certificate stops it at once).
pub fn assemble(
    config: &Config,
    built: Identities,
    buckets: Buckets,
    lasting: &Lasting,
    previous: Option<&AppState>,
) -> (AppState, Tls) {
    let state = AppState {
        buckets,
        ledger: lasting.ledger.clone(),
        shared: lasting.shared.clone(),
        keys: built.keys,
        jwt: built.jwt,
        links: built.links,
        principals: built.principals,
        subjects: built.subjects,
        door: built.door,
        access_keys: built.access_keys,
        chunk_room: lasting.chunk_room.clone(),
        public_url: config.server.public_url.clone(),
        body_idle_timeout: config.server.body_idle_timeout.get(),
        auth_failures: previous
            .map(|s| s.auth_failures.clone())
            .unwrap_or_else(|| {
                Arc::new(AuthFailures::new(config.rate_limit.unauthenticated_per_ip))
            }),
    };
    (
        state,
        Tls {
            public: built.tls,
            door: built.door_tls,
        },
    )
}

/// The TLS configs new handshakes use, per listener.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub public: Option<Arc<rustls::ServerConfig>>,
    pub door: Option<Arc<rustls::ServerConfig>>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_sections_are_checked_before_anything_starts() {
        let base = "[backend]\nkind = \"embedded\"\n";
        let fields = |extra: &str| -> Vec<String> {
            let text = format!("{base}{extra}");
            let errors = match crate::config::parse(&text, Some(std::path::Path::new("t.toml"))) {
                Err(e) => e,
                Ok(loaded) => loaded.source.locate(
                    super::check(&loaded.config)
                        .expect_err("the config should not build")
                        .problems(),
                ),
            };
            // Every problem has its file, and a line when the field is in the text.
            assert!(errors.0.iter().all(|e| e.file.is_some()), "{errors}");
            errors.0.into_iter().map(|e| e.field).collect()
        };
        // A links secret variable that is not set.
        let f = fields("[links]\nsecrets_env = [\"PORTCULLIS_SURELY_UNSET_VARIABLE\"]\n");
        assert!(f.contains(&"links.secrets_env".to_string()), "{f:?}");
        // JWT: no prefix template, `link` in allow (the file's rules); then no key (built).
        let f = fields("[jwt]\nissuer = \"i\"\naudience = \"a\"\nallow = [\"link\"]\n");
        assert!(f.contains(&"jwt.prefix_template".to_string()), "{f:?}");
        assert!(f.contains(&"jwt.allow".to_string()), "{f:?}");
        let f = fields("[jwt]\nissuer = \"i\"\naudience = \"a\"\nprefix_template = \"\"\n");
        assert_eq!(f, ["jwt"]);
        let f = fields(
            "[jwt]\nissuer = \"i\"\naudience = \"a\"\nprefix_template = \"\"\njwks_file = \"/nonexistent.json\"\n",
        );
        assert_eq!(f, ["jwt.jwks_file"]);
        // Every problem of a config at once, in file order.
        let f = fields(
            "[links]\nsecrets_env = [\"PORTCULLIS_SURELY_UNSET_VARIABLE\"]\n[server]\ntls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n",
        );
        assert_eq!(f, ["links.secrets_env", "server.tls"]);
        // CORS origins must be bare origins.
        let f = fields("[cors]\nallowed_origins = [\"https://a.example/path\", \"a.example\"]\n");
        assert!(f.contains(&"cors.allowed_origins[0]".to_string()), "{f:?}");
        assert!(f.contains(&"cors.allowed_origins[1]".to_string()), "{f:?}");
        // Client certificate subjects need a client CA; TLS files must load.
        let f = fields("[[principals]]\nname = \"d\"\nclient_cert_subjects = [\"CN=d\"]\n");
        assert!(
            f.contains(&"principals[0].client_cert_subjects".to_string()),
            "{f:?}"
        );
        let f =
            fields("[server]\ntls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n");
        assert!(f.contains(&"server.tls".to_string()), "{f:?}");
    }
}
