//! `GET /v1/objects?prefix=P&limit=N&cursor=C`: one page of the keys under a prefix, confined
//! to the principal's own prefix.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, Response, StatusCode};
use serde_json::json;

use super::admission::authenticate;
use super::{AppState, respond, timed};
use crate::Body;
use crate::error::ApiError;
use crate::policy::{MAX_KEY_BYTES, check_chars};

/// The most keys in one page, as on S3.
pub(crate) const MAX_LIMIT: i32 = 1000;

struct ListQuery {
    prefix: Option<String>,
    limit: i32,
    start_after: Option<String>,
}

fn parse_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        prefix: None,
        limit: MAX_LIMIT,
        start_after: None,
    };
    let mut seen = HashSet::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !seen.insert(name.clone()) {
            return Err(ApiError::bad_request(format!("`{name}` is given twice")));
        }
        match &*name {
            "prefix" => {
                if value.len() > MAX_KEY_BYTES {
                    return Err(ApiError::bad_request("prefix is longer than 1024 bytes"));
                }
                check_chars(&value).map_err(|e| ApiError::bad_request(format!("prefix: {e}")))?;
                q.prefix = Some(value.into_owned());
            }
            "limit" => {
                q.limit = value
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("limit must be a whole number from 1 to 1000")
                    })?;
            }
            "cursor" => {
                let key = URL_SAFE_NO_PAD
                    .decode(value.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES)
                    .ok_or_else(|| {
                        ApiError::bad_request("cursor is not one this gateway issued")
                    })?;
                q.start_after = Some(key);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`"
                )));
            }
        }
    }
    Ok(q)
}

pub(super) async fn list(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let identity = authenticate(state, &req).await?;
    let q = parse_query(req.uri().query())?;
    let prefix = q
        .prefix
        .unwrap_or_else(|| identity.principal.prefix.clone());
    identity.principal.authorize_list(&prefix)?;
    crate::obs::note(&req, |n| n.key = Some(prefix.clone()));

    let page = timed(
        &req,
        "list",
        state
            .bucket_of(&identity.principal)?
            .list(&prefix, q.limit, q.start_after),
    )
    .await?;

    let objects: Vec<_> = page
        .objects
        .iter()
        .map(|o| {
            json!({
                "key": o.key,
                "size": o.size,
                "etag": o.etag,
                "last_modified": o.last_modified.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            })
        })
        .collect();
    let next_cursor = page.last_key.map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes()));
    Ok(respond::json(
        StatusCode::OK,
        &json!({ "objects": objects, "next_cursor": next_cursor }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(Some("prefix=a%2Bb+c%2F&limit=5&cursor=YQ")).unwrap();
        assert_eq!(q.prefix.as_deref(), Some("a+b c/"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.start_after.as_deref(), Some("a"));
        assert!(parse_query(Some("limit=0")).is_err());
        assert!(parse_query(Some("limit=1001")).is_err());
        assert!(parse_query(Some("prefix=a&prefix=b")).is_err());
        assert!(parse_query(Some("delimiter=/")).is_err());
        assert!(parse_query(Some("cursor=%%%")).is_err());
        assert!(parse_query(Some("prefix=a%00")).is_err());
    }
}
