//! Admission: who is calling, and whether they may do this now. The `/v1` routes call one
//! phase ([`admit_object`] for object routes, [`authenticate`] for the others) before anything
//! else, and the S3 front door is to call the same one; they differ only in how they parse the
//! request and answer it.

use std::sync::Arc;

use http::Request;

use super::AppState;
use crate::Body;
use crate::auth::{AuthMethod, Identity, bearer, is_link_query, looks_like_jwt, unix_now};
use crate::error::ApiError;
use crate::limits::{Admission, Permit};
use crate::obs::{ClientIp, ConnInfo, note};
use crate::policy::{Action, ObjectKey, Principal};

/// The admission phase of an object route, in order: resolve the key (the one decode),
/// authenticate (a signed link stands in for a header here), authorize the action on the key,
/// then admit within the principal's rate and concurrent-transfer cap. Every object handler
/// starts with it, and a refusal at any step answers the request.
pub(super) async fn admit_object(
    state: &AppState,
    req: &Request<Body>,
    encoded_key: &str,
    action: Action,
) -> Result<(ObjectKey, Identity), ApiError> {
    let key = resolve(req, encoded_key)?;
    let identity = identify(state, req, Some(&key)).await?;
    identity.principal.authorize(action, &key)?;
    admit(state, req, &identity).await?;
    Ok((key, identity))
}

/// The admission phase of the other routes (lists, links, `/v1/me`): authenticate, then
/// admit; they authorize what they act on themselves.
pub(super) async fn authenticate(
    state: &AppState,
    req: &Request<Body>,
) -> Result<Identity, ApiError> {
    let identity = identify(state, req, None).await?;
    admit(state, req, &identity).await?;
    Ok(identity)
}

/// Who is calling: the credential checked, and recorded in the request's note. Failed
/// attempts count against the client's address; while it is over that budget its requests are
/// refused before any credential is checked.
///
/// `object` is the key of an object route, where a signed link may stand in for a header.
async fn identify(
    state: &AppState,
    req: &Request<Body>,
    object: Option<&ObjectKey>,
) -> Result<Identity, ApiError> {
    let ip = req.extensions().get::<ClientIp>().map(|c| c.0);
    if let Some(ip) = ip {
        state.auth_failures.check(ip)?;
    }
    let identity = match credential(state, req, object) {
        Ok(identity) => identity,
        // Only a presented credential that fails is an attempt; a missing one is not. It
        // counts here and, with `[redis]`, on every instance; either being over the budget
        // answers `429`.
        Err((err, true)) => {
            let Some(ip) = ip else { return Err(err) };
            let err = state.auth_failures.failed(ip, err);
            if let Some(shared) = &state.shared
                && let Some(blocked) = shared.failed(ip).await
                && err.code != crate::error::Code::RateLimited
            {
                return Err(blocked);
            }
            return Err(err);
        }
        Err((err, false)) => return Err(err),
    };
    note(req, |n| {
        n.principal = Some(identity.principal.name.to_string());
        n.bucket = Some(identity.principal.bucket.clone());
        n.auth = Some(identity.method);
    });
    Ok(identity)
}

/// Within the principal's request rate, concurrent-transfer cap and daily quota; the transfer
/// permit rides on the response body to its last byte.
///
/// The local limits decide first; with `[redis]`, an admitted request then asks the shared
/// ones (one round trip: the address's failed-auth block, the quota, the rate), so a
/// lockout on any instance holds here whether or not this request's credential was right.
pub(crate) async fn admit<B>(
    state: &AppState,
    req: &Request<B>,
    identity: &Identity,
) -> Result<(), ApiError> {
    let principal = &identity.principal;
    let permit = principal.gate.admit()?;
    // An upload's declared length must fit the quota before its body is read.
    // Read only for a principal with a quota: the rest never need it.
    let declared = (principal.max_bytes_per_day.is_some() && req.method() == http::Method::PUT)
        .then(|| req.headers().get(http::header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match &state.shared {
        Some(shared) => {
            let ask = crate::limits::shared::Ask {
                principal: &principal.name,
                rate: principal.gate.rate(),
                quota: principal.max_bytes_per_day,
                declared,
                ip: req.extensions().get::<ClientIp>().map(|c| c.0),
            };
            shared.admit(ask).await?;
        }
        None => {
            if let Some(max) = principal.max_bytes_per_day {
                state
                    .ledger
                    .check(&principal.name, max, declared, std::time::SystemTime::now())?;
            }
        }
    }
    if let Some(admission) = req.extensions().get::<Admission>() {
        admission.hold(Permit::Transfer(permit));
    }
    Ok(())
}

/// Finds the request's credential and checks it: a signed link on an object route, else the
/// `Authorization` header (a JWT when it looks like one and `[jwt]` is set, else an API key),
/// else a client certificate. The flag says whether a credential was presented.
fn credential(
    state: &AppState,
    req: &Request<Body>,
    object: Option<&ObjectKey>,
) -> Result<Identity, (ApiError, bool)> {
    let has_header = req.headers().contains_key(http::header::AUTHORIZATION);
    // On an object route `resolve` has admitted no query but a link's.
    let link = object.zip(req.uri().query());
    if let Some((key, query)) = link {
        if has_header {
            return Err((
                ApiError::bad_request("send a signed link or an Authorization header, not both"),
                false,
            ));
        }
        let signer = state.links.as_ref().ok_or_else(|| {
            (
                ApiError::new(crate::error::Code::LinkInvalid, "the link is not valid")
                    .detail("signed links are not configured"),
                true,
            )
        })?;
        let grant = signer
            .verify(req.method(), key, query, unix_now())
            .map_err(|e| (e, true))?;
        // The principal as it is now: gone, no longer allowed to link, or moved to another
        // bucket, and the link dies.
        let principal = state
            .principals
            .get(&grant.principal)
            .filter(|p| p.may(Action::Link) && *p.bucket == *grant.bucket)
            .cloned()
            .ok_or_else(|| {
                (
                    ApiError::new(crate::error::Code::LinkInvalid, "the link is not valid")
                        .detail("its principal is gone, may no longer issue links, or works in another bucket now"),
                    true,
                )
            })?;
        return Ok(Identity {
            principal,
            method: AuthMethod::Link,
            link: Some(grant),
        });
    }
    if has_header {
        let token = bearer(req.headers()).map_err(|e| (e, true))?;
        let result = match &state.jwt {
            Some(jwt) if looks_like_jwt(token) => jwt.authenticate(token),
            _ => state.keys.authenticate_key(token),
        };
        return result.map_err(|e| (e, true));
    }
    if let Some(cert) = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.client_cert.as_deref())
    {
        // The subject and every SAN must agree on one principal.
        let mut found: Option<&Arc<Principal>> = None;
        for name in cert.names() {
            if let Some(p) = state.subjects.get(name) {
                if found.is_some_and(|f| !Arc::ptr_eq(f, p)) {
                    return Err((
                        ApiError::unauthenticated(
                            "the client certificate names more than one principal",
                        ),
                        true,
                    ));
                }
                found = Some(p);
            }
        }
        return found
            .map(|p| Identity {
                principal: p.clone(),
                method: AuthMethod::Mtls,
                link: None,
            })
            .ok_or_else(|| {
                (
                    ApiError::unauthenticated(
                        "the client certificate is not mapped to a principal",
                    ),
                    true,
                )
            });
    }
    Err((
        ApiError::unauthenticated("an Authorization: Bearer header is required"),
        false,
    ))
}

/// Resolves the key (the one decode), records it, and refuses query strings other than a
/// signed link's (whose parameters the link check accepts one by one): an object route is
/// exactly one S3 operation, and no `?acl`, `?versionId`, `?uploads` or `?response-*` can
/// turn it into another.
fn resolve(req: &Request<Body>, encoded_key: &str) -> Result<ObjectKey, ApiError> {
    if let Some(q) = req.uri().query()
        && !is_link_query(q)
    {
        return Err(ApiError::bad_request(
            "object routes take no query parameters (other than a signed link's)",
        ));
    }
    let key = ObjectKey::from_path(encoded_key).map_err(ApiError::invalid_key)?;
    note(req, |n| n.key = Some(key.as_str().to_owned()));
    Ok(key)
}
