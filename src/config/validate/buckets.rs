//! `[backend]` and `[[buckets]]`: names, S3 bucket names, endpoints, part sizes, encryption.

use std::collections::HashSet;

use super::super::schema::*;
use super::{MAX_PART, MIN_PART, Problems};
use crate::rules::is_s3_client_bucket_name;

pub(super) fn validate(c: &Config, p: &mut Problems) {
    let b = &c.backend;
    let mut bad = |field: &str, reason: String| p.push((field.to_owned(), reason));
    let buckets = c.bucket_configs();
    let mut names = HashSet::new();
    for (i, bucket) in buckets.iter().enumerate() {
        let field = |f: &str| c.bucket_field(i, f);
        if !valid_display_name(&bucket.name) {
            bad(
                &field("name"),
                format!(
                    "`{}` is not a bucket name clients can use (1-63 of a-z 0-9 . _ -, starting \
                     with a letter or digit)",
                    bucket.name
                ),
            );
        } else if !names.insert(bucket.name.as_str()) {
            bad(
                &field("name"),
                format!("`{}` names two buckets", bucket.name),
            );
        } else if c.s3_api.is_some() && !is_s3_client_bucket_name(&bucket.name) {
            bad(
                &field("name"),
                format!(
                    "`{}` cannot be named by S3 clients, and [s3_api] serves it: 3-63 of \
                     a-z 0-9 . -, starting and ending with a letter or digit, not an IP address",
                    bucket.name
                ),
            );
        }
        match b.kind {
            BackendKind::S3 => {
                if bucket.bucket.is_empty() {
                    bad(&field("bucket"), "is required for kind = \"s3\"".into());
                }
                if bucket.region.is_empty() {
                    bad(&field("region"), "must not be empty".into());
                }
            }
            BackendKind::Embedded => {
                if bucket.bucket.is_empty() && !c.buckets.is_empty() {
                    bad(
                        &field("bucket"),
                        format!(
                            "is required: the name `{}` is not an S3 bucket name the embedded \
                             backend can use for it",
                            bucket.name
                        ),
                    );
                }
                if bucket.endpoint.is_some() {
                    bad(
                        &field("endpoint"),
                        "does not go with kind = \"embedded\"".into(),
                    );
                }
            }
        }
        if !bucket.bucket.is_empty() && !valid_bucket_name(&bucket.bucket) {
            bad(
                &field("bucket"),
                format!(
                    "`{}` is not a valid bucket name (3-63 of a-z 0-9 . -)",
                    bucket.bucket
                ),
            );
        }
        if let Some(endpoint) = &bucket.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bad(
                &field("endpoint"),
                format!("`{endpoint}` must start with http:// or https://"),
            );
        }
        if bucket.part_size < MIN_PART || bucket.part_size > MAX_PART {
            bad(
                &field("part_size"),
                format!(
                    "{} is outside S3's part sizes, 5MiB to 5GiB",
                    bucket.part_size
                ),
            );
        }
        if b.upload_buffer_memory < bucket.part_size {
            bad(
                "backend.upload_buffer_memory",
                format!(
                    "{} is less than {} ({}): no upload of unknown length could buffer a part",
                    b.upload_buffer_memory,
                    field("part_size"),
                    bucket.part_size
                ),
            );
        }
        match (bucket.sse, &bucket.kms_key_id) {
            (Some(Sse::AwsKms), None) => bad(
                &field("kms_key_id"),
                "is required with sse = \"aws:kms\"".into(),
            ),
            (Some(Sse::Aes256) | None, Some(_)) => bad(
                &field("kms_key_id"),
                "only goes with sse = \"aws:kms\"".into(),
            ),
            _ => {}
        }
    }
}

/// Why `name` (a principal's or `[jwt]`'s `bucket`) names no bucket, if it does not.
pub(super) fn unknown(c: &Config, name: &Option<String>) -> Option<String> {
    let name = name.as_ref()?;
    let buckets = c.bucket_configs();
    if buckets.iter().any(|b| &b.name == name) {
        return None;
    }
    let names: Vec<String> = buckets.iter().map(|b| format!("`{}`", b.name)).collect();
    Some(format!(
        "`{name}` is not one of the buckets ({})",
        names.join(", ")
    ))
}

/// A bucket's name as clients see it: also a path segment of the S3 door's URLs, so no `/`.
fn valid_display_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

pub(in crate::config) fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}
