//! `ListObjectsV2` and `ListObjects`, confined to the principal's prefix.
//!
//! A request's prefix inside the principal's lists as asked. One above it (`""` for a
//! principal confined to `alice/`) lists the principal's prefix instead, and when the
//! delimiter falls between the two, answers the one common prefix that leads there, as S3
//! would show it. Any other prefix is `AccessDenied`.

use s3s::dto::*;
use s3s::{S3Response, S3Result};

use super::ops::{Ops, Parts, answer, etag, timestamp};
use crate::error::ApiError;
use crate::policy::percent_encode_key;
use crate::relay::{ListPage, ListQuery};

/// Where a listing's prefix meets the principal's.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// List under this prefix.
    List(String),
    /// Answer this one common prefix and nothing else.
    One(String),
    /// Outside the principal's prefix.
    Outside,
}

pub(super) fn scope(own: &str, asked: &str, delimiter: Option<&str>) -> Scope {
    if asked.starts_with(own) {
        return Scope::List(asked.to_owned());
    }
    if !own.starts_with(asked) {
        return Scope::Outside;
    }
    if let Some(d) = delimiter.filter(|d| !d.is_empty()) {
        let rest = &own[asked.len()..];
        if let Some(i) = rest.find(d) {
            return Scope::One(format!("{asked}{}", &rest[..i + d.len()]));
        }
    }
    Scope::List(own.to_owned())
}

/// S3's `encoding-type=url`: keys and prefixes percent-encoded (everything but unreserved
/// characters and `/`), which clients that ask for it decode.
struct Encoding(bool);

impl Encoding {
    fn of(e: Option<&EncodingType>) -> Self {
        Self(e.is_some_and(|e| e.as_str() == EncodingType::URL))
    }

    fn apply(&self, s: String) -> String {
        if self.0 { percent_encode_key(&s) } else { s }
    }
}

fn max_keys(asked: Option<i32>) -> i32 {
    asked.unwrap_or(1000).clamp(0, 1000)
}

/// The page for the prefix the client `asked` (recorded in the log), confined to the
/// principal's: as the backend lists it, or the one common prefix leading there.
async fn page(
    ops: &Ops,
    head: &http::Request<()>,
    identity: &crate::auth::Identity,
    asked: &str,
    mut query: ListQuery,
) -> Result<ListPage, ApiError> {
    crate::obs::note(head, |n| n.key = Some(asked.to_owned()));
    match scope(
        &identity.principal.prefix,
        asked,
        query.delimiter.as_deref(),
    ) {
        Scope::Outside => Err(identity.principal.outside_prefix()),
        Scope::One(prefix) => {
            let after = query
                .continuation
                .as_deref()
                .or(query.start_after.as_deref())
                .unwrap_or("");
            let shown = query.max_keys > 0 && after < prefix.as_str();
            Ok(ListPage {
                common_prefixes: if shown { vec![prefix] } else { Vec::new() },
                ..Default::default()
            })
        }
        Scope::List(prefix) => {
            query.prefix = prefix;
            let bucket = ops.state.bucket_of(&identity.principal)?;
            crate::api::timed(head, "list", bucket.list_page(&query)).await
        }
    }
}

fn contents(page: &ListPage, enc: &Encoding) -> Vec<Object> {
    page.objects
        .iter()
        .map(|o| Object {
            key: Some(enc.apply(o.key.clone())),
            size: Some(o.size as i64),
            e_tag: o.etag.as_deref().and_then(etag),
            last_modified: timestamp(o.last_modified),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes(page: &ListPage, enc: &Encoding) -> Vec<CommonPrefix> {
    page.common_prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(enc.apply(p.clone())),
        })
        .collect()
}

pub(super) async fn list_v2(
    ops: &Ops,
    p: Parts<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    answer(&p.head, async {
        let identity = ops
            .admitted_list(&p.head, p.credentials.as_ref(), &p.input.bucket)
            .await?;
        let i = &p.input;
        let asked = i.prefix.clone().unwrap_or_default();
        let query = ListQuery {
            prefix: String::new(),
            delimiter: i.delimiter.clone().filter(|d| !d.is_empty()),
            max_keys: max_keys(i.max_keys),
            continuation: i.continuation_token.clone(),
            start_after: i.start_after.clone(),
        };
        let page = page(ops, &p.head, &identity, &asked, query).await?;
        let enc = Encoding::of(i.encoding_type.as_ref());
        let contents = contents(&page, &enc);
        let common = prefixes(&page, &enc);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket.clone()),
            prefix: Some(enc.apply(asked)),
            delimiter: i.delimiter.clone().map(|d| enc.apply(d)),
            max_keys: Some(max_keys(i.max_keys)),
            key_count: Some((contents.len() + common.len()) as i32),
            continuation_token: i.continuation_token.clone(),
            next_continuation_token: page.next_token.clone().filter(|_| page.truncated),
            start_after: i.start_after.clone().map(|s| enc.apply(s)),
            is_truncated: Some(page.truncated),
            contents: Some(contents),
            common_prefixes: Some(common),
            encoding_type: i.encoding_type.clone(),
            ..Default::default()
        }))
    })
    .await
}

pub(super) async fn list_v1(
    ops: &Ops,
    p: Parts<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    answer(&p.head, async {
        let identity = ops
            .admitted_list(&p.head, p.credentials.as_ref(), &p.input.bucket)
            .await?;
        let i = &p.input;
        let asked = i.prefix.clone().unwrap_or_default();
        let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
        // A marker that is a common prefix skips everything under it, as S3 does.
        let start_after = i
            .marker
            .clone()
            .filter(|m| !m.is_empty())
            .map(|m| match &delimiter {
                Some(d) if m.ends_with(d.as_str()) => format!("{m}\u{10FFFF}"),
                _ => m,
            });
        let query = ListQuery {
            prefix: String::new(),
            delimiter: delimiter.clone(),
            max_keys: max_keys(i.max_keys),
            continuation: None,
            start_after,
        };
        let page = page(ops, &p.head, &identity, &asked, query).await?;
        let enc = Encoding::of(i.encoding_type.as_ref());
        // With a delimiter S3 says where to go on; without one, clients use the last key.
        let last = page
            .objects
            .last()
            .map(|o| o.key.clone())
            .into_iter()
            .chain(page.common_prefixes.last().cloned())
            .max();
        let next_marker = last.filter(|_| page.truncated && delimiter.is_some());
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(enc.apply(asked)),
            delimiter: i.delimiter.clone().map(|d| enc.apply(d)),
            marker: Some(i.marker.clone().unwrap_or_default()),
            max_keys: Some(max_keys(i.max_keys)),
            is_truncated: Some(page.truncated),
            next_marker: next_marker.map(|m| enc.apply(m)),
            contents: Some(contents(&page, &enc)),
            common_prefixes: Some(prefixes(&page, &enc)),
            encoding_type: i.encoding_type.clone(),
            ..Default::default()
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_confined() {
        use Scope::*;
        assert_eq!(scope("", "x/", Some("/")), List("x/".into()));
        assert_eq!(
            scope("alice/", "alice/docs/", Some("/")),
            List("alice/docs/".into())
        );
        // Above the principal's prefix: the path that leads there, or its own prefix.
        assert_eq!(scope("alice/", "", Some("/")), One("alice/".into()));
        assert_eq!(scope("alice/docs/", "al", Some("/")), One("alice/".into()));
        assert_eq!(scope("alice/", "", None), List("alice/".into()));
        assert_eq!(scope("alice/", "ali", Some("/")), One("alice/".into()));
        assert_eq!(scope("team-a", "team", Some("/")), List("team-a".into()));
        // Beside it: nothing to see.
        assert_eq!(scope("alice/", "bob/", Some("/")), Outside);
        assert_eq!(scope("alice/", "alicf", None), Outside);
    }
}
