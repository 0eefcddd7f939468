//! Conditional reads as S3 documents them (RFC 9110 section 13.2.2 order): `If-Match`, then
//! `If-Unmodified-Since` (412); `If-None-Match`, then `If-Modified-Since` (304).

use http::HeaderMap;
use s3s::dto::{ETag, ETagCondition, HeadObjectOutput, Timestamp};
use s3s::{S3Error, S3ErrorCode, S3Result};

pub(super) struct Conditions {
    pub(super) if_match: Option<ETagCondition>,
    pub(super) if_none_match: Option<ETagCondition>,
    pub(super) if_modified_since: Option<Timestamp>,
    pub(super) if_unmodified_since: Option<Timestamp>,
}

impl Conditions {
    pub(super) fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
            && self.if_unmodified_since.is_none()
    }

    pub(super) fn evaluate(&self, head: &HeadObjectOutput) -> S3Result<()> {
        let etag = head.e_tag.as_ref();
        let modified = head.last_modified.clone().map(whole_seconds);

        if let Some(cond) = &self.if_match {
            if !matches(cond, etag, true) {
                return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
            }
        } else if let (Some(since), Some(m)) = (&self.if_unmodified_since, modified)
            && m > whole_seconds(since.clone())
        {
            return Err(S3Error::new(S3ErrorCode::PreconditionFailed));
        }

        let not_modified = match &self.if_none_match {
            Some(cond) => matches(cond, etag, false),
            None => match (&self.if_modified_since, modified) {
                (Some(since), Some(m)) => m <= whole_seconds(since.clone()),
                _ => false,
            },
        };
        if not_modified {
            let mut err = S3Error::new(S3ErrorCode::NotModified);
            let mut headers = HeaderMap::new();
            if let Some(v) = etag.and_then(|e| e.to_http_header().ok()) {
                headers.insert(http::header::ETAG, v);
            }
            err.set_headers(headers);
            return Err(err);
        }
        Ok(())
    }
}

fn matches(cond: &ETagCondition, etag: Option<&ETag>, strong: bool) -> bool {
    match (cond, etag) {
        (ETagCondition::Any, Some(_)) => true,
        (ETagCondition::ETag(want), Some(have)) => {
            if strong {
                want.strong_cmp(have)
            } else {
                want.weak_cmp(have)
            }
        }
        (_, None) => false,
    }
}

fn whole_seconds(t: Timestamp) -> i64 {
    time::OffsetDateTime::from(t).unix_timestamp()
}
