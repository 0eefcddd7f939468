//! SigV4 header signing for the light path's requests, with the signing key kept for the day.
//!
//! aws-sigv4's general `sign` builds a header map, a query and a signed-header list for any
//! request, and derives the signing key (four HMACs) on every call, a share of a small GET's
//! CPU worth saving (`cargo bench --bench hot_path`, `docs/performance.md`). The light path's
//! requests have one shape: a
//! path without a query and a few headers of our own. So the canonical request is written
//! here directly, and the key comes from aws-sigv4's own `generate_signing_key` once per day
//! and set of credentials, kept as an HMAC already keyed with it. The key derivation stays
//! aws-sigv4's, the hashing and the HMAC are sha2's and hmac's, and the tests below hold
//! every header to what aws-sigv4's `sign` produces.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use aws_credential_types::Credentials;
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, Request};
use sha2::{Digest, Sha256};

use crate::BoxError;

/// `x-amz-content-sha256` of a request without a body: the SHA-256 of no bytes.
pub const EMPTY_PAYLOAD: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// `x-amz-content-sha256` of a streamed upload, as the SDK sends it.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Headers aws-sigv4 leaves out of the signature by default (changed by proxies, or the
/// signature itself).
const UNSIGNED_HEADERS: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Signs requests for one region and service (`s3`).
pub struct Signer {
    region: String,
    service: String,
    /// `region/service/aws4_request`: the credential scope after its date.
    scope_tail: String,
    /// The signing key of the last request's day and credentials.
    key: ArcSwapOption<DayKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A signing key, as an HMAC keyed with it, and what it was derived from. Holding the
/// identity keeps its address from being reused by the next credentials while the key is
/// cached.
struct DayKey {
    date: [u8; 8],
    identity: Arc<Identity>,
    mac: Hmac<Sha256>,
}

impl Signer {
    pub fn new(region: impl Into<String>, service: impl Into<String>) -> Self {
        let (region, service) = (region.into(), service.into());
        Signer {
            scope_tail: format!("{region}/{service}/aws4_request"),
            region,
            service,
            key: ArcSwapOption::empty(),
        }
    }

    /// Adds `x-amz-date`, `x-amz-content-sha256` (`payload`), `x-amz-security-token` when the
    /// credentials have one, and `authorization`, as aws-sigv4 does with percent-encoding
    /// applied once, no path normalisation and the payload hash in a header. The request's
    /// path must already be encoded, it must have no query, and it must have a `host` header.
    pub fn sign<B>(
        &self,
        req: &mut Request<B>,
        identity: &Arc<Identity>,
        payload: &'static str,
        now: SystemTime,
    ) -> Result<(), BoxError> {
        let creds = identity
            .data::<Credentials>()
            .ok_or("the identity holds no AWS credentials")?;
        if req.uri().query().is_some() {
            return Err("the light path signs no query strings".into());
        }
        if !req.headers().contains_key(http::header::HOST) {
            return Err("the request has no host header".into());
        }
        let date_time = amz_date_time(now);
        let date = &date_time[..8];
        let headers = req.headers_mut();
        headers.insert(
            HeaderName::from_static("x-amz-date"),
            HeaderValue::from_str(&date_time)?,
        );
        headers.insert(
            HeaderName::from_static("x-amz-content-sha256"),
            HeaderValue::from_static(payload),
        );
        if let Some(token) = creds.session_token() {
            let mut value = HeaderValue::from_str(token)?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-amz-security-token"), value);
        }

        let mut names: Vec<&HeaderName> = req
            .headers()
            .keys()
            .filter(|n| !UNSIGNED_HEADERS.contains(&n.as_str()))
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut signed_headers = String::with_capacity(128);
        let mut canonical = String::with_capacity(512);
        canonical.push_str(req.method().as_str());
        canonical.push('\n');
        canonical.push_str(req.uri().path());
        canonical.push_str("\n\n");
        for name in &names {
            if !signed_headers.is_empty() {
                signed_headers.push(';');
            }
            signed_headers.push_str(name.as_str());
            canonical.push_str(name.as_str());
            canonical.push(':');
            for (i, value) in req.headers().get_all(*name).iter().enumerate() {
                if i > 0 {
                    canonical.push(',');
                }
                push_trimmed(&mut canonical, value.to_str()?);
            }
            canonical.push('\n');
        }
        canonical.push('\n');
        canonical.push_str(&signed_headers);
        canonical.push('\n');
        canonical.push_str(payload);

        let scope_tail = &self.scope_tail;
        let mut hex = [0; 64];
        let mut to_sign = String::with_capacity(160);
        let _ = write!(
            to_sign,
            "{ALGORITHM}\n{date_time}\n{date}/{scope_tail}\n{}",
            hex_of(&Sha256::digest(canonical.as_bytes()), &mut hex)
        );
        let mut mac = self.day_key(identity, creds, now, date).mac.clone();
        mac.update(to_sign.as_bytes());
        let signature = hex_of(&mac.finalize().into_bytes(), &mut hex);
        let authorization = format!(
            "{ALGORITHM} Credential={}/{date}/{scope_tail}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            creds.access_key_id()
        );
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&authorization)?,
        );
        Ok(())
    }

    /// The signing key for `date` (of `now`) and these credentials: the cached one, or a new
    /// one from aws-sigv4.
    fn day_key(
        &self,
        identity: &Arc<Identity>,
        creds: &Credentials,
        now: SystemTime,
        date: &str,
    ) -> Arc<DayKey> {
        if let Some(cached) = self.key.load_full()
            && cached.date.as_slice() == date.as_bytes()
            && Arc::ptr_eq(&cached.identity, identity)
        {
            return cached;
        }
        let key =
            v4::generate_signing_key(creds.secret_access_key(), now, &self.region, &self.service);
        let mut day = [0; 8];
        day.copy_from_slice(date.as_bytes());
        let fresh = Arc::new(DayKey {
            date: day,
            identity: identity.clone(),
            mac: Hmac::new_from_slice(key.as_ref()).expect("HMAC takes a key of any length"),
        });
        self.key.store(Some(fresh.clone()));
        fresh
    }
}

/// What aws-sigv4's general `sign` adds to the same request, with the settings the SDK uses
/// for S3 (and the light path used before [`Signer`]): the reference the tests hold
/// [`Signer::sign`] to, and the benchmark's baseline.
#[doc(hidden)]
pub fn reference_sign<B>(
    req: &mut Request<B>,
    identity: &Identity,
    region: &str,
    service: &str,
    payload: &'static str,
    now: SystemTime,
) -> Result<(), BoxError> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()?
        .into();
    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| Ok((k.as_str(), v.to_str()?)))
        .collect::<Result<Vec<_>, http::header::ToStrError>>()?;
    let body = match payload {
        UNSIGNED_PAYLOAD => SignableBody::UnsignedPayload,
        _ => SignableBody::Bytes(&[]),
    };
    let signable = SignableRequest::new(req.method().as_str(), uri, headers.into_iter(), body)?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date_time(now: SystemTime) -> String {
    let t = time::OffsetDateTime::from(now);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A 32-byte digest in lowercase hex.
fn hex_of<'a>(digest: &[u8], buf: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(digest, buf).expect("a 32-byte digest fills 64 hex digits");
    std::str::from_utf8(buf).expect("hex digits are ASCII")
}

/// A header value as SigV4 (and S3) canonicalise it: spaces trimmed from both ends, runs of
/// spaces inside made one. Only spaces: a tab stays.
fn push_trimmed(out: &mut String, value: &str) {
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        out.push_str(value);
        return;
    }
    let mut last_space = false;
    for c in value.chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn identity(secret: &str, token: Option<&str>) -> Arc<Identity> {
        Arc::new(
            Credentials::new(
                "AKIDEXAMPLE",
                secret,
                token.map(str::to_owned),
                None,
                "test",
            )
            .into(),
        )
    }

    fn request(method: &str, path: &str, headers: &[(&str, String)]) -> Request<()> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:9000{path}"))
            .header("host", "127.0.0.1:9000");
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        req.body(()).unwrap()
    }

    /// Signs a copy with each signer and compares every header.
    fn same_as_aws_sigv4(
        signer: &Signer,
        req: &Request<()>,
        identity: &Arc<Identity>,
        payload: &'static str,
        now: SystemTime,
    ) -> Result<(), TestCaseError> {
        let copy = |r: &Request<()>| {
            let mut c = Request::new(());
            *c.method_mut() = r.method().clone();
            *c.uri_mut() = r.uri().clone();
            *c.headers_mut() = r.headers().clone();
            c
        };
        let (mut ours, mut theirs) = (copy(req), copy(req));
        signer.sign(&mut ours, identity, payload, now).unwrap();
        reference_sign(&mut theirs, identity, &signer.region, "s3", payload, now).unwrap();
        prop_assert_eq!(ours.headers(), theirs.headers());
        Ok(())
    }

    proptest! {
        #[test]
        fn signs_as_aws_sigv4_does(
            method in prop::sample::select(vec!["GET", "HEAD", "PUT"]),
            path in "(/[a-zA-Z0-9._~%-]{0,12}){1,4}",
            range in proptest::option::of("bytes=[0-9]{1,4}-[0-9]{0,4}"),
            // Printable ASCII with runs of spaces anywhere, tabs too.
            etag in proptest::option::of("([ \t]{0,3}[!-~]{0,5}){0,5}"),
            content_type in proptest::option::of("( {0,3}[!-~]{0,5}){0,5}"),
            sse in any::<bool>(),
            token in proptest::option::of("[A-Za-z0-9+/=]{1,40}"),
            secret in "[A-Za-z0-9+/]{40}",
            region in prop::sample::select(vec!["us-east-1", "eu-west-1", "ap-south-2"]),
            unsigned in any::<bool>(),
            secs in 0u64..4_102_444_800,
        ) {
            let mut headers = Vec::new();
            if let Some(r) = range { headers.push(("range", r)); }
            if let Some(e) = etag { headers.push(("if-none-match", e)); }
            if let Some(t) = content_type { headers.push(("content-type", t)); }
            if sse { headers.push(("x-amz-server-side-encryption", "aws:kms".to_owned())); }
            if method == "PUT" { headers.push(("content-length", "1024".to_owned())); }
            let req = request(method, &path, &headers);
            let identity = identity(&secret, token.as_deref());
            let payload = if unsigned { UNSIGNED_PAYLOAD } else { EMPTY_PAYLOAD };
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            same_as_aws_sigv4(&Signer::new(region, "s3"), &req, &identity, payload, now)?;
        }
    }

    #[test]
    fn the_cached_key_follows_the_day_and_the_credentials() {
        let signer = Signer::new("us-east-1", "s3");
        let req = request("GET", "/bench/a%20b", &[("range", "bytes=0-9".into())]);
        let first = identity("secret-one-0000000000000000000000000000000", None);
        let second = identity("secret-two-0000000000000000000000000000000", Some("tok"));
        let day = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (who, when) in [
            (&first, day),
            (&first, day + Duration::from_secs(60)),
            (&first, day + Duration::from_secs(86_400)),
            (&second, day + Duration::from_secs(86_400)),
            (&first, day + Duration::from_secs(86_400)),
        ] {
            same_as_aws_sigv4(&signer, &req, who, EMPTY_PAYLOAD, when).unwrap();
        }
    }

    #[test]
    fn header_values_are_trimmed_as_s3_does() {
        let mut out = String::new();
        push_trimmed(&mut out, "  a   b \t c  ");
        assert_eq!(out, "a b \t c");
    }

    #[test]
    fn refuses_what_it_does_not_sign() {
        let signer = Signer::new("us-east-1", "s3");
        let id = identity("s", None);
        let mut with_query = request("GET", "/b/k?x=1", &[]);
        assert!(
            signer
                .sign(&mut with_query, &id, EMPTY_PAYLOAD, SystemTime::now())
                .is_err()
        );
        let mut no_host = Request::get("http://127.0.0.1/b/k").body(()).unwrap();
        assert!(
            signer
                .sign(&mut no_host, &id, EMPTY_PAYLOAD, SystemTime::now())
                .is_err()
        );
    }
}
