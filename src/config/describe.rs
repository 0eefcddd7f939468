//! What a config resolves to, in words and numbers: printed by `check-config`, so that what
//! the operator wrote and what the gateway will do can be compared (`"1 MB"` is 1,000,000
//! bytes, `"1MiB"` 1,048,576).

use std::fmt::Write as _;

use super::units::{Size, Span};
use super::{BackendKind, Config};

fn size(s: Size) -> String {
    format!("{} bytes ({s})", s.bytes())
}

fn span(s: Span) -> String {
    format!("{s}")
}

/// One line per part of the config, then one per principal.
pub fn describe(c: &Config) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str("  ");
        out.push_str(&text);
        out.push('\n');
    };
    let s = &c.server;
    line(format!(
        "listen {} ({}), admin {}, links {}",
        s.listen,
        if s.tls.is_some() { "TLS" } else { "plain HTTP" },
        c.admin.listen,
        match (&c.links, &s.public_url) {
            (None, _) => "off".to_owned(),
            (Some(_), Some(url)) => format!("absolute on {url}"),
            (Some(_), None) => "relative (no public_url)".to_owned(),
        }
    ));
    line(format!(
        "deadlines: header_read {}, keep_alive {}, body_idle {}, shutdown_grace {}",
        span(s.header_read_timeout),
        span(s.keep_alive_timeout),
        span(s.body_idle_timeout),
        span(s.shutdown_grace)
    ));
    line(format!(
        "capacity: {} requests at once ({} per client address), {} connections",
        s.max_concurrent_requests,
        s.requests_per_address(),
        s.max_connections
    ));
    let b = &c.backend;
    let buckets = c.bucket_configs();
    for bucket in buckets.iter() {
        line(match b.kind {
            BackendKind::Embedded => format!(
                "bucket {}: embedded, S3 bucket {}, data in {}",
                bucket.name,
                bucket.bucket,
                b.root.display()
            ),
            BackendKind::S3 => format!(
                "bucket {}: S3 bucket {} in {}{}, part_size {}",
                bucket.name,
                bucket.bucket,
                bucket.region,
                bucket
                    .endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default(),
                size(bucket.part_size)
            ),
        });
    }
    line(format!(
        "uploads: part buffers at most {} together",
        size(b.upload_buffer_memory)
    ));
    let l = &c.limits;
    line(format!(
        "limits: max_object_size {}, content_types {}, sniff {}",
        size(l.max_object_size),
        patterns(&l.content_types),
        if l.sniff { "on" } else { "off" }
    ));
    let r = &c.rate_limit;
    line(format!(
        "rate: {}/s burst {} per principal, {} transfers at once, failed auth {}/s burst {} per address{}",
        r.requests_per_second,
        r.burst,
        r.max_concurrent_per_principal,
        r.unauthenticated_per_ip.requests_per_second,
        r.unauthenticated_per_ip.burst,
        r.bytes_per_second
            .map(|b| format!(", bodies at {}/s", size(b)))
            .unwrap_or_default()
    ));
    if let Some(cors) = &c.cors {
        line(format!("cors: {}", cors.allowed_origins.join(" ")));
    }
    if let Some(links) = &c.links {
        line(format!(
            "links: default lifetime {}, at most {}",
            span(links.default_ttl),
            span(links.max_ttl)
        ));
    }
    if let Some(d) = &c.s3_api {
        line(format!(
            "s3 door: listen {} ({}), region {}, presigned URLs at most {}, {}",
            d.listen,
            if d.tls.is_some() { "TLS" } else { "plain HTTP" },
            d.region,
            span(d.max_presign_ttl),
            match &d.domain {
                Some(domain) => format!("path style and BUCKET.{domain}"),
                None => "path style".to_owned(),
            }
        ));
    }
    if let Some(j) = &c.jwt {
        line(format!(
            "jwt: issuer {}, audience {}, principal from `{}`, prefix {:?}, allow {}",
            j.issuer,
            j.audience,
            j.principal_claim,
            j.prefix_template.as_deref().unwrap_or(""),
            actions(&j.allow)
        ));
    }
    for p in &c.principals {
        let max = p
            .max_object_size
            .map_or(l.max_object_size, |m| m.min(l.max_object_size));
        let rate = p.rate_limit.map_or(
            format!("{}/s burst {}", r.requests_per_second, r.burst),
            |r| format!("{}/s burst {}", r.requests_per_second, r.burst),
        );
        let _ = writeln!(
            out,
            "  principal {}: bucket {}, prefix {:?}, allow {}, max_object_size {}, content_types {}, rate {}, {} key(s), {} S3 access key(s), {} certificate name(s)",
            p.name,
            p.bucket.as_deref().unwrap_or(&buckets[0].name),
            p.prefix,
            actions(&p.allow),
            size(max),
            patterns(p.content_types.as_ref().unwrap_or(&l.content_types)),
            rate,
            p.api_keys.len(),
            p.s3_access_keys.len(),
            p.client_cert_subjects.len() + p.client_cert_sans.len()
        );
    }
    out
}

fn patterns(types: &[crate::rules::TypePattern]) -> String {
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn actions(allow: &[crate::rules::Action]) -> String {
    if allow.is_empty() {
        return "nothing".into();
    }
    allow
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_shown_in_bytes() {
        let loaded = super::super::parse(
            "[limits]\nmax_object_size = \"1 MB\"\n[[principals]]\nname = \"a\"\napi_keys = [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\nallow = [\"get\"]\nprefix = \"p/\"\n[backend]\nkind = \"embedded\"\n",
            None,
        )
        .unwrap();
        let text = super::describe(&loaded.config);
        assert!(text.contains("max_object_size 1000000 bytes"), "{text}");
        assert!(
            text.contains("principal a: bucket files, prefix \"p/\", allow get"),
            "{text}"
        );
        assert!(
            text.contains("bucket files: embedded, S3 bucket portcullis"),
            "{text}"
        );
    }
}
