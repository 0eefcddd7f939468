//! Issuing signed links: `POST /v1/links`, and the presigned-URL-shaped `POST /s3/upload-url`
//! and `GET /s3/download-url` that return the same links.

use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;

use super::admission::authenticate;
use super::{AppState, respond};
use crate::Body;
use crate::auth::{Identity, LinkGrant, LinkSigner, unix_now};
use crate::error::{ApiError, Code};
use crate::limits::media_type;
use crate::policy::{Action, ObjectKey};

/// Largest JSON body accepted by the link routes.
const MAX_JSON: usize = 16 * 1024;

/// `POST /v1/links`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    key: String,
    method: String,
    expires_in: Option<u64>,
    max_size: Option<u64>,
    content_type: Option<String>,
    #[serde(default)]
    create_only: bool,
}

/// `POST /s3/upload-url`: the body a presigned-URL front end sends. Other fields it may
/// carry (a file name, a size) are ignored.
#[derive(Deserialize)]
struct UploadUrlRequest {
    key: String,
    #[serde(alias = "contentType")]
    content_type: Option<String>,
    #[serde(alias = "expiresIn")]
    expires_in: Option<u64>,
    max_size: Option<u64>,
    #[serde(default)]
    create_only: bool,
}

pub(super) async fn create(
    state: &AppState,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let identity = authenticate(state, &req).await?;
    let mut req = req;
    let r: LinkRequest = read_json(state, req.body_mut()).await?;
    let method = match r.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "PUT" => Method::PUT,
        _ => return Err(ApiError::bad_request("method must be GET or PUT")),
    };
    issue(
        state,
        &req,
        &identity,
        Wanted {
            key: r.key,
            method,
            expires_in: r.expires_in,
            max_size: r.max_size,
            content_type: r.content_type,
            create_only: r.create_only,
        },
        StatusCode::CREATED,
    )
}

pub(super) async fn upload_url(
    state: &AppState,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let identity = authenticate(state, &req).await?;
    let mut req = req;
    let r: UploadUrlRequest = read_json(state, req.body_mut()).await?;
    issue(
        state,
        &req,
        &identity,
        Wanted {
            key: under_prefix(&identity, r.key),
            method: Method::PUT,
            expires_in: r.expires_in,
            max_size: r.max_size,
            // `File.type` of a file the browser cannot type is "": no type.
            content_type: r.content_type.filter(|t| !t.trim().is_empty()),
            create_only: r.create_only,
        },
        StatusCode::OK,
    )
}

pub(super) async fn download_url(
    state: &AppState,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let identity = authenticate(state, &req).await?;
    let mut key = None;
    let mut expires_in = None;
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let slot_taken = match &*name {
            "key" => key.replace(value.into_owned()).is_some(),
            "expires_in" | "expiresIn" => expires_in
                .replace(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("expires_in must be a whole number of seconds")
                })?)
                .is_some(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; this route takes key and expires_in"
                )));
            }
        };
        if slot_taken {
            return Err(ApiError::bad_request(format!("`{name}` is given twice")));
        }
    }
    let key = key.ok_or_else(|| ApiError::bad_request("key is required"))?;
    let key = under_prefix(&identity, key);
    issue(
        state,
        &req,
        &identity,
        Wanted {
            key,
            method: Method::GET,
            expires_in,
            max_size: None,
            content_type: None,
            create_only: false,
        },
        StatusCode::OK,
    )
}

/// On the presigned-URL routes a key is what a page has at hand, often a bare file name: one
/// that does not start with the principal's prefix is placed under it (`photo.png` becomes
/// `users/alice/photo.png`). The answer says which key the link is for.
fn under_prefix(identity: &Identity, key: String) -> String {
    let prefix = &identity.principal.prefix;
    if key.starts_with(prefix.as_str()) {
        key
    } else {
        format!("{prefix}{}", key.trim_start_matches('/'))
    }
}

/// What the caller asked a link to allow.
struct Wanted {
    key: String,
    method: Method,
    expires_in: Option<u64>,
    max_size: Option<u64>,
    content_type: Option<String>,
    create_only: bool,
}

/// Checks that the principal may link and may itself do what the link would, signs it, and
/// answers `{"url","method","expires_at"}` (expiry in RFC 3339) with `status`.
fn issue(
    state: &AppState,
    req: &Request<Body>,
    identity: &Identity,
    w: Wanted,
    status: StatusCode,
) -> Result<Response<Body>, ApiError> {
    let signer: &LinkSigner = state.links.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::NotFound,
            "signed links are not enabled on this gateway",
        )
    })?;
    let key = ObjectKey::parse(w.key).map_err(ApiError::invalid_key)?;
    crate::obs::note(req, |n| n.key = Some(key.as_str().to_owned()));
    let principal = &identity.principal;
    let action = if w.method == Method::PUT {
        Action::Put
    } else {
        Action::Get
    };
    if !principal.may(Action::Link) {
        return Err(ApiError::forbidden());
    }
    principal.authorize(action, &key)?;
    if w.method == Method::GET
        && (w.max_size.is_some() || w.content_type.is_some() || w.create_only)
    {
        return Err(ApiError::bad_request(
            "max_size, content_type and create_only apply to PUT links only",
        ));
    }
    if let Some(t) = &w.content_type {
        // The whole value becomes a header when the link is used: visible ASCII only, so
        // parameters cannot carry CR, LF, NUL, DEL or bytes a header may not hold.
        if t.bytes()
            .any(|b| !(b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b)))
        {
            return Err(ApiError::bad_request(
                "content_type may hold only visible ASCII characters and spaces",
            ));
        }
        let essence = media_type(t).ok_or_else(|| {
            ApiError::bad_request("content_type is not a media type like `image/png`")
        })?;
        principal.limits.check_type(&essence)?;
    }
    if w.max_size == Some(0) {
        return Err(ApiError::bad_request("max_size must be at least 1 byte"));
    }
    let ttl = signer.ttl(w.expires_in)?;
    let expires = unix_now() + ttl.as_secs();
    let grant = LinkGrant {
        method: w.method,
        key,
        expires,
        principal: principal.name.to_string(),
        bucket: principal.bucket.to_string(),
        max_size: w.max_size,
        content_type: w.content_type,
        create_only: w.create_only,
    };
    let path = signer.sign(&grant);
    let url = match &state.public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => path,
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(expires);
    Ok(respond::json(
        status,
        &json!({
            "url": url,
            "key": grant.key.as_str(),
            "method": grant.method.as_str(),
            "expires_at": humantime::format_rfc3339_seconds(at).to_string(),
        }),
    ))
}

/// Reads a small JSON body, within `MAX_JSON` bytes and the body idle timeout.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: &mut Body,
) -> Result<T, ApiError> {
    let mut bytes = Vec::new();
    loop {
        let frame = tokio::time::timeout(state.body_idle_timeout, body.frame())
            .await
            .map_err(|_| ApiError::new(Code::BodyTimeout, "the request body stalled"))?;
        match frame {
            None => break,
            Some(Err(_)) => return Err(ApiError::bad_request("the JSON body was cut off")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > MAX_JSON {
                        return Err(ApiError::bad_request("the JSON body is over 16 KiB"));
                    }
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the JSON body is not valid: {e}")))
}
