//! `[[principals]]`: names, key hashes, actions, prefixes, narrowed limits, rates, quotas,
//! certificate names.

use std::collections::HashSet;

use super::super::schema::*;
use super::{Problems, Warning, check_patterns, check_rate};

pub(super) fn validate(c: &Config, p: &mut Problems, w: &mut Vec<Warning>) {
    let l = &c.limits;
    let defaults = &l.content_types;
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    let mut access_keys = HashSet::new();
    for (i, pr) in c.principals.iter().enumerate() {
        let at = |f: &str| format!("principals[{i}].{f}");
        if let Some(reason) = super::buckets::unknown(c, &pr.bucket) {
            p.push((at("bucket"), reason));
        }
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
        for (j, hash) in pr.api_keys.iter().enumerate() {
            if !hashes.insert(*hash) {
                p.push((
                    format!("principals[{i}].api_keys[{j}]"),
                    "is listed twice".into(),
                ));
            }
        }
        for (j, id) in pr.s3_access_keys.iter().enumerate() {
            let field = format!("principals[{i}].s3_access_keys[{j}]");
            if let Err(reason) = crate::rules::validate_access_key_id(id) {
                p.push((field, reason));
            } else if !access_keys.insert(id.as_str()) {
                p.push((field, format!("`{id}` is listed twice")));
            }
        }
        if !pr.s3_access_keys.is_empty() && c.s3_api.is_none() {
            w.push(Warning {
                field: at("s3_access_keys"),
                message: "are set but there is no [s3_api]: nobody can use them".into(),
            });
        }
        if pr.api_keys.is_empty()
            && pr.s3_access_keys.is_empty()
            && pr.client_cert_subjects.is_empty()
            && pr.client_cert_sans.is_empty()
        {
            w.push(Warning {
                field: at("api_keys"),
                message: "is empty: nobody can act as this principal".into(),
            });
        }
        if let Err(reason) = crate::rules::validate_prefix(&pr.prefix) {
            p.push((at("prefix"), reason));
        }
        if pr.allow.is_empty() {
            w.push(Warning {
                field: at("allow"),
                message: "is empty: this principal may do nothing".into(),
            });
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
        if pr.max_bytes_per_day.is_some_and(|q| q.bytes() == 0) {
            p.push((
                at("max_bytes_per_day"),
                "must be at least 1 byte (leave it out for no quota)".into(),
            ));
        }
        if let Some(types) = &pr.content_types {
            check_patterns(&at("content_types"), types, p);
            for pat in types {
                if !defaults.iter().any(|d| d.covers(pat)) {
                    p.push((
                        at("content_types"),
                        format!("`{pat}` is not allowed by limits.content_types; a principal may only narrow it"),
                    ));
                }
            }
        }
        if let Some(rate) = pr.rate_limit {
            check_rate(&at("rate_limit"), rate.requests_per_second, rate.burst, p);
        }
        if !(pr.client_cert_subjects.is_empty() && pr.client_cert_sans.is_empty())
            && c.server
                .tls
                .as_ref()
                .and_then(|t| t.client_ca.as_ref())
                .is_none()
        {
            p.push((
                at("client_cert_subjects"),
                "needs server.tls.client_ca: without it no client certificate is asked for".into(),
            ));
        }
    }
}
