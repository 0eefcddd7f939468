//! Rules that a single field's type cannot express: addresses, ranges, cross-field
//! consistency, uniqueness. Returns every problem at once, each with its field path.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use super::schema::*;
use super::units::Size;
use crate::limits::TypePattern;
use crate::policy::validate_prefix;

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

    // [server]
    if c.server.listen.parse::<SocketAddr>().is_err() {
        bad(
            "server.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:8080",
                c.server.listen
            ),
        );
    }
    if let Some(url) = &c.server.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        bad(
            "server.public_url",
            format!("`{url}` must start with https:// or http://"),
        );
    }
    if c.server.tls.is_some() {
        bad(
            "server.tls",
            "TLS termination is not in this build yet; terminate TLS at a load balancer and \
             remove this line (the gateway will not serve plain HTTP when TLS was asked for)"
                .into(),
        );
    }
    for (field, span) in [
        ("server.header_read_timeout", c.server.header_read_timeout),
        ("server.body_idle_timeout", c.server.body_idle_timeout),
    ] {
        if span.get().is_zero() {
            bad(field, "must be more than zero".into());
        }
    }
    for (i, proxy) in c.server.trusted_proxies.iter().enumerate() {
        if parse_net(proxy).is_none() {
            bad(
                &format!("server.trusted_proxies[{i}]"),
                format!("`{proxy}` is not an address or a network like 10.0.0.0/8"),
            );
        }
    }
    if c.server.max_concurrent_requests == 0 {
        bad(
            "server.max_concurrent_requests",
            "must be at least 1".into(),
        );
    }

    // [admin]
    if c.admin.listen.parse::<SocketAddr>().is_err() {
        bad(
            "admin.listen",
            format!("`{}` is not an address like 127.0.0.1:9090", c.admin.listen),
        );
    }

    // [backend]
    let b = &c.backend;
    match b.kind {
        BackendKind::S3 => {
            if b.bucket.is_empty() {
                bad("backend.bucket", "is required for kind = \"s3\"".into());
            }
            if b.region.is_empty() {
                bad("backend.region", "must not be empty".into());
            }
        }
        BackendKind::Embedded => {
            if b.endpoint.is_some() {
                bad(
                    "backend.endpoint",
                    "does not go with kind = \"embedded\"".into(),
                );
            }
        }
    }
    if !b.bucket.is_empty() && !valid_bucket_name(&b.bucket) {
        bad(
            "backend.bucket",
            format!(
                "`{}` is not a valid bucket name (3-63 of a-z 0-9 . -)",
                b.bucket
            ),
        );
    }
    if let Some(endpoint) = &b.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        bad(
            "backend.endpoint",
            format!("`{endpoint}` must start with http:// or https://"),
        );
    }
    if b.part_size < MIN_PART || b.part_size > MAX_PART {
        bad(
            "backend.part_size",
            format!("{} is outside S3's part sizes, 5MiB to 5GiB", b.part_size),
        );
    }
    match (b.sse, &b.kms_key_id) {
        (Some(Sse::AwsKms), None) => bad(
            "backend.kms_key_id",
            "is required with sse = \"aws:kms\"".into(),
        ),
        (Some(Sse::Aes256) | None, Some(_)) => bad(
            "backend.kms_key_id",
            "only goes with sse = \"aws:kms\"".into(),
        ),
        _ => {}
    }

    // [limits]
    let l = &c.limits;
    if l.max_object_size.bytes() == 0 || l.max_object_size > MAX_OBJECT {
        bad(
            "limits.max_object_size",
            "must be between 1 byte and 5TiB (S3's largest object)".into(),
        );
    }
    let defaults = check_patterns("limits.content_types", &l.content_types, &mut p);

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

    // Sections whose features come later: accepted so configs stay valid, never half-applied.
    if c.cors.is_some() {
        w.push(Warning {
            field: "cors".into(),
            message: "CORS is not in this build yet; no CORS headers are sent".into(),
        });
    }
    if c.links.is_some() {
        w.push(Warning {
            field: "links".into(),
            message: "signed links are not in this build yet".into(),
        });
    }
    if c.jwt.is_some() {
        w.push(Warning {
            field: "jwt".into(),
            message: "JWT bearer tokens are not in this build yet; they are refused".into(),
        });
    }

    // [log]
    if c.log.access_log.is_empty() {
        p.push((
            "log.access_log".into(),
            "must be \"stdout\" or a file path".into(),
        ));
    }

    // [[principals]]
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, pr) in c.principals.iter().enumerate() {
        let at = |f: &str| format!("principals[{i}].{f}");
        if pr.name.is_empty()
            || !pr
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
        {
            p.push((
                at("name"),
                format!("`{}` must be 1 or more of A-Z a-z 0-9 - _ . @", pr.name),
            ));
        } else if !names.insert(pr.name.as_str()) {
            p.push((
                at("name"),
                format!("`{}` is used by an earlier principal", pr.name),
            ));
        }
        for (j, key) in pr.api_keys.iter().enumerate() {
            match crate::auth::parse_key_hash(key) {
                Ok(hash) => {
                    if !hashes.insert(hash) {
                        p.push((
                            format!("principals[{i}].api_keys[{j}]"),
                            "is listed twice".into(),
                        ));
                    }
                }
                Err(reason) => p.push((format!("principals[{i}].api_keys[{j}]"), reason)),
            }
        }
        if pr.api_keys.is_empty() && pr.client_cert_subjects.is_empty() {
            w.push(Warning {
                field: at("api_keys"),
                message: "is empty: nobody can act as this principal".into(),
            });
        }
        if pr.allow.is_empty() {
            w.push(Warning {
                field: at("allow"),
                message: "is empty: this principal may do nothing".into(),
            });
        }
        if let Err(reason) = validate_prefix(&pr.prefix) {
            p.push((at("prefix"), reason));
        }
        if let Some(size) = pr.max_object_size
            && size > l.max_object_size
        {
            p.push((
                at("max_object_size"),
                format!(
                    "{size} is above limits.max_object_size ({}); a principal may only narrow it",
                    l.max_object_size
                ),
            ));
        }
        if let Some(types) = &pr.content_types {
            let mine = check_patterns(&at("content_types"), types, &mut p);
            for (pat, text) in mine.iter().zip(types) {
                if !defaults.iter().any(|d| d.covers(pat)) {
                    p.push((
                        at("content_types"),
                        format!("`{text}` is not allowed by limits.content_types; a principal may only narrow it"),
                    ));
                }
            }
        }
        if let Some(rate) = pr.rate_limit {
            check_rate(
                &at("rate_limit"),
                rate.requests_per_second,
                rate.burst,
                &mut p,
            );
        }
        if !pr.client_cert_subjects.is_empty() {
            w.push(Warning {
                field: at("client_cert_subjects"),
                message: "mTLS is not in this build yet".into(),
            });
        }
    }
    if c.principals.is_empty() {
        w.push(Warning {
            field: "principals".into(),
            message: "none configured: every request will be refused".into(),
        });
    }

    if p.is_empty() { Ok(w) } else { Err(p) }
}

fn check_patterns(field: &str, patterns: &[String], p: &mut Problems) -> Vec<TypePattern> {
    if patterns.is_empty() {
        p.push((
            field.into(),
            "is empty: no upload could ever be accepted".into(),
        ));
    }
    patterns
        .iter()
        .filter_map(|s| match s.parse::<TypePattern>() {
            Ok(t) => Some(t),
            Err(reason) => {
                p.push((field.into(), reason));
                None
            }
        })
        .collect()
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

/// S3's bucket naming rules, the parts that matter for addressing.
fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// An address (`10.0.0.1`) or a network (`10.0.0.0/8`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}
