//! `serve --dev`'s config: the embedded backend, one principal with every permission on the
//! whole bucket, signed links, and CORS for pages served on this machine.

use crate::auth::generate_key;
use crate::config::{self, AuditMode, BackendKind, Config, LogFormat, PrincipalConfig, Rate};
use crate::policy::Action;

/// `serve --dev`: embedded backend, one principal with every permission on the whole bucket.
pub fn config(key_hash: crate::rules::KeyHash) -> Config {
    let mut c = Config::default();
    c.backend.kind = BackendKind::Embedded;
    // Any free port: 9090 is often taken (Prometheus itself); the banner prints the address.
    c.admin.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.backend.bucket = config::EMBEDDED_BUCKET.into();
    c.log.format = LogFormat::Pretty;
    // The embedded backend implements none of the audit's calls: nothing to learn at start.
    c.backend.audit = AuditMode::Off;
    c.rate_limit.max_concurrent_per_principal = 1024;
    // Pages served by a local dev server (any port) may call it.
    c.cors = Some(config::CorsConfig {
        allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
        max_age: config::units::Span::secs(600),
        allow_credentials: false,
    });
    // Signed links with a secret that lives as long as the process.
    let (secret, _) = generate_key();
    c.links = Some(config::LinksConfig {
        secrets_env: Vec::new(),
        default_ttl: config::units::Span::secs(60),
        max_ttl: config::units::Span::secs(24 * 3600),
        secrets: vec![secret],
    });
    c.principals.push(PrincipalConfig {
        name: "dev".into(),
        // Generous, so `portcullis load` against a dev gateway measures the gateway rather
        // than the default rate limit.
        rate_limit: Some(Rate {
            requests_per_second: 100_000,
            burst: 100_000,
        }),
        api_keys: vec![key_hash],
        allow: vec![
            Action::Get,
            Action::Put,
            Action::Delete,
            Action::List,
            Action::Link,
        ],
        s3_access_keys: vec![crate::auth::access_keys::generate_id()],
        ..Default::default()
    });
    // The S3 door, with a master secret that lives as long as the process.
    let (master, _) = generate_key();
    c.s3_api = Some(config::S3ApiConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9000)),
        tls: None,
        secrets_env: None,
        region: "us-east-1".into(),
        max_presign_ttl: config::units::Span::secs(7 * 24 * 3600),
        domain: None,
        secret: Some(master),
    });
    c
}
