//! Rules that a single field's type cannot express: addresses, ranges, cross-field
//! consistency, uniqueness. Returns every problem at once, each with its field path.

use std::fmt;

pub(super) mod buckets;
mod principals;

use super::schema::*;
use super::units::Size;
use crate::rules::{TypePattern, validate_prefix};

/// Something legal but worth telling the operator at start and in `check-config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// S3 refuses parts under 5 MiB (but the last) and over 5 GiB.
const MIN_PART: Size = Size::mib(5);
const MAX_PART: Size = Size::gib(5);
/// The largest object S3 stores.
const MAX_OBJECT: Size = Size::gib(5 * 1024);

type Problems = Vec<(String, String)>;

pub(super) fn validate(c: &Config) -> Result<Vec<Warning>, Problems> {
    let mut p: Problems = Vec::new();
    let mut w: Vec<Warning> = Vec::new();
    let mut bad = |field: &str, reason: String| p.push((field.to_owned(), reason));

    // [server] (addresses, networks, patterns, key hashes and prefixes are parsed by serde)
    if let Some(url) = &c.server.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        bad(
            "server.public_url",
            format!("`{url}` must start with https:// or http://"),
        );
    }
    // The TLS files themselves are read by the build step (`crate::build`).
    match &c.server.tls {
        Some(_) => {}
        None => {
            let addr = c.server.listen;
            if !addr.ip().is_loopback() {
                w.push(Warning {
                    field: "server.tls".into(),
                    message: format!(
                        "not set: plain HTTP on {addr}; keys and tokens cross the network in \
                         clear unless a TLS-terminating load balancer is in front"
                    ),
                });
            }
        }
    }
    for (field, span) in [
        ("server.header_read_timeout", c.server.header_read_timeout),
        ("server.keep_alive_timeout", c.server.keep_alive_timeout),
        ("server.body_idle_timeout", c.server.body_idle_timeout),
    ] {
        if span.get().is_zero() {
            bad(field, "must be more than zero".into());
        }
    }
    if c.server.worker_threads.is_some_and(|n| n == 0 || n > 1024) {
        bad("server.worker_threads", "must be from 1 to 1024".into());
    }
    if c.server.max_concurrent_requests == 0 {
        bad(
            "server.max_concurrent_requests",
            "must be at least 1".into(),
        );
    }
    if c.server
        .max_requests_per_address
        .is_some_and(|n| n == 0 || n > c.server.max_concurrent_requests)
    {
        bad(
            "server.max_requests_per_address",
            "must be from 1 to server.max_concurrent_requests".into(),
        );
    }
    if c.server.max_connections == 0 {
        bad("server.max_connections", "must be at least 1".into());
    }

    // [backend] and [[buckets]]
    if c.backend.download_gather > Size::mib(1) {
        bad(
            "backend.download_gather",
            format!("{} is more than 1MiB", c.backend.download_gather),
        );
    }
    buckets::validate(c, &mut p);
    let bad_bucket = |name: &Option<String>| buckets::unknown(c, name);
    let mut bad = |field: &str, reason: String| p.push((field.to_owned(), reason));

    // [limits]
    let l = &c.limits;
    if l.max_object_size.bytes() == 0 || l.max_object_size > MAX_OBJECT {
        bad(
            "limits.max_object_size",
            "must be between 1 byte and 5TiB (S3's largest object)".into(),
        );
    }
    check_patterns("limits.content_types", &l.content_types, &mut p);

    // [rate_limit]
    let r = &c.rate_limit;
    check_rate("rate_limit", r.requests_per_second, r.burst, &mut p);
    check_rate(
        "rate_limit.unauthenticated_per_ip",
        r.unauthenticated_per_ip.requests_per_second,
        r.unauthenticated_per_ip.burst,
        &mut p,
    );
    if r.max_concurrent_per_principal == 0 {
        p.push((
            "rate_limit.max_concurrent_per_principal".into(),
            "must be at least 1".into(),
        ));
    }
    if let Some(b) = r.bytes_per_second
        && b.bytes() < 1024
    {
        p.push((
            "rate_limit.bytes_per_second".into(),
            "must be at least 1KiB".into(),
        ));
    }

    // [cors]
    if let Some(cors) = &c.cors {
        if cors.allowed_origins.is_empty() {
            p.push((
                "cors.allowed_origins".into(),
                "is empty: list origins like \"https://app.example.com\" or remove [cors]".into(),
            ));
        }
        for (i, origin) in cors.allowed_origins.iter().enumerate() {
            let field = format!("cors.allowed_origins[{i}]");
            if origin == "*" {
                if cors.allow_credentials {
                    p.push((
                        field,
                        "\"*\" with allow_credentials = true would let any site act with the \
                         caller's credentials; list the origins"
                            .into(),
                    ));
                } else if cors.allowed_origins.len() > 1 {
                    p.push((field, "\"*\" must be the only origin when used".into()));
                }
            } else if let Err(reason) = check_origin(origin) {
                p.push((field, reason));
            }
        }
    }

    if c.cors.is_some() && c.links.is_some() && c.server.public_url.is_none() {
        w.push(Warning {
            field: "server.public_url".into(),
            message: "is not set, so signed links are relative (/v1/objects/...): a page on \
                      another origin (the reason for [cors]) would send its upload to its own \
                      origin. Set it to this gateway's public URL"
                .into(),
        });
    }

    // [links]
    if let Some(links) = &c.links {
        for name in links.secrets_env.iter().skip(1) {
            if std::env::var_os(name).is_none() {
                w.push(Warning {
                    field: "links.secrets_env".into(),
                    message: format!("${name} is not set; links signed with it no longer verify"),
                });
            }
        }
        if links.default_ttl.get().is_zero() || links.max_ttl.get().is_zero() {
            p.push((
                "links".into(),
                "default_ttl and max_ttl must be more than zero".into(),
            ));
        }
        if links.default_ttl > links.max_ttl {
            p.push((
                "links.default_ttl".into(),
                format!(
                    "{} is above links.max_ttl ({})",
                    links.default_ttl, links.max_ttl
                ),
            ));
        }
    }

    // [jwt]
    if let Some(jwt) = &c.jwt {
        for (field, value) in [("jwt.issuer", &jwt.issuer), ("jwt.audience", &jwt.audience)] {
            if value.is_empty() {
                p.push((field.into(), "must not be empty".into()));
            }
        }
        match &jwt.prefix_template {
            None => p.push((
                "jwt.prefix_template".into(),
                "is required: like \"users/{sub}/\" (or \"\" to give every token holder the \
                 whole bucket)"
                    .into(),
            )),
            Some(t) => {
                // With every `{claim}` as a plain name, the result must be a valid prefix.
                let sample = t.replace(['{', '}'], "");
                if let Err(reason) = validate_prefix(&sample) {
                    p.push(("jwt.prefix_template".into(), reason));
                }
            }
        }
        if let Some(reason) = bad_bucket(&jwt.bucket) {
            p.push(("jwt.bucket".into(), reason));
        }
        if jwt.allow.contains(&crate::rules::Action::Link) {
            p.push((
                "jwt.allow".into(),
                "\"link\" is not allowed for JWT principals: a link must die with its \
                 principal, and a token's principal cannot be removed"
                    .into(),
            ));
        }
    }

    // [redis]
    if let Some(r) = &c.redis {
        if r.url_env.is_empty() && r.url.is_none() {
            p.push((
                "redis.url_env".into(),
                "must name the environment variable that holds the URL".into(),
            ));
        } else {
            match r.resolve_url() {
                Err(reason) => p.push(("redis.url_env".into(), reason)),
                Ok(url) => {
                    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                        // The URL may hold a password: name the variable, not its value.
                        p.push((
                            "redis.url_env".into(),
                            format!(
                                "${} is not a redis://, rediss:// or unix:// URL ({:?})",
                                r.url_env,
                                e.kind()
                            ),
                        ));
                    }
                }
            }
        }
        if r.timeout.get().is_zero() || r.timeout.get() > std::time::Duration::from_secs(10) {
            p.push((
                "redis.timeout".into(),
                "must be between 1ms and 10s: every shared decision waits at most this long".into(),
            ));
        }
        if let Some(ca) = &r.ca_file
            && let Err(e) = std::fs::read(ca)
        {
            p.push((
                "redis.ca_file".into(),
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
    }

    // [s3_api] (the master secret and the TLS files are read by the build step)
    if let Some(s3) = &c.s3_api {
        let taken = [
            ("server.listen", c.server.listen),
            ("admin.listen", c.admin.listen),
        ];
        for (field, addr) in taken {
            if s3.listen == addr && addr.port() != 0 {
                p.push((
                    "s3_api.listen".into(),
                    format!("{addr} is {field} too; the door needs its own address"),
                ));
            }
        }
        if s3.secrets_env.is_none() && s3.secret.is_none() {
            p.push((
                "s3_api.secrets_env".into(),
                "must name the environment variable that holds the master secret".into(),
            ));
        }
        if s3.region.is_empty()
            || s3.region.len() > 64
            || !s3
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            p.push((
                "s3_api.region".into(),
                format!("`{}` must be 1-64 of a-z 0-9 -, like us-east-1", s3.region),
            ));
        }
        let ttl = s3.max_presign_ttl.get();
        if ttl.is_zero() || ttl > std::time::Duration::from_secs(7 * 24 * 3600) {
            p.push((
                "s3_api.max_presign_ttl".into(),
                "must be between 1s and 7d (S3's own limit)".into(),
            ));
        }
        if let Some(domain) = &s3.domain
            && (domain.is_empty()
                || domain.starts_with('.')
                || domain.ends_with('.')
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            p.push((
                "s3_api.domain".into(),
                format!("`{domain}` must be a host name like s3.example.com"),
            ));
        }
        if s3.tls.is_none() && !s3.listen.ip().is_loopback() {
            w.push(Warning {
                field: "s3_api.tls".into(),
                message: format!(
                    "not set: plain HTTP on {}; SigV4 protects the requests' integrity, not \
                     their bytes, unless a TLS-terminating load balancer is in front",
                    s3.listen
                ),
            });
        }
    }

    // [log]
    if c.log.access_log.is_empty() {
        p.push((
            "log.access_log".into(),
            "must be \"stdout\" or a file path".into(),
        ));
    }

    // [[principals]]
    principals::validate(c, &mut p, &mut w);
    if c.principals.is_empty() {
        w.push(Warning {
            field: "principals".into(),
            message: "none configured: every request will be refused".into(),
        });
    }

    if p.is_empty() { Ok(w) } else { Err(p) }
}

fn check_patterns(field: &str, patterns: &[TypePattern], p: &mut Problems) {
    if patterns.is_empty() {
        p.push((
            field.into(),
            "is empty: no upload could ever be accepted".into(),
        ));
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after.
/// A CORS origin: `scheme://host[:port]`, or `scheme://host:*` for any port.
pub fn check_origin(origin: &str) -> Result<(), String> {
    // `http://localhost:*`: that host on any port.
    let origin = origin.strip_suffix(":*").unwrap_or(origin);
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("`{origin}` must start with https:// or http://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) || origin.ends_with('/') {
        return Err(format!(
            "`{origin}` must be scheme://host[:port], with no path or trailing `/`"
        ));
    }
    http::HeaderValue::from_str(origin).map_err(|_| format!("`{origin}` is not a valid origin"))?;
    Ok(())
}

fn check_rate(field: &str, rps: u32, burst: u32, p: &mut Problems) {
    if rps == 0 {
        p.push((
            format!("{field}.requests_per_second"),
            "must be at least 1".into(),
        ));
    }
    if burst == 0 {
        p.push((format!("{field}.burst"), "must be at least 1".into()));
    }
}
