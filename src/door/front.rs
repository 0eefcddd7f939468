//! The checks in front of s3s: what s3s 0.14.1 accepts and the door must not.
//!
//! - SigV2 (header or query) and browser POST-policy uploads are refused;
//! - the credential scope's region must be `s3_api.region` (a wrong one counts as a failed
//!   authentication);
//! - a presigned URL's `X-Amz-Expires` is at most `s3_api.max_presign_ttl`;
//! - every `x-amz-*` header must be signed (S3 refuses the same);
//! - ACLs other than `private` and `bucket-owner-full-control`, grants, SSE-C, tagging,
//!   object lock and website redirects are refused, and `x-amz-meta-*` is at most 2 KiB.

use http::{HeaderMap, Method, Request};
use s3s::{S3Error, S3ErrorCode};

use super::Settings;
use super::errors::refusal;

/// The most user metadata an object takes (S3's own limit).
pub(super) const MAX_METADATA: usize = 2048;

/// Why the door refused a request before s3s saw it.
pub(super) struct Refusal {
    pub error: S3Error,
    /// A presented credential failed: it counts toward the address's limit.
    pub failed_auth: bool,
}

impl Refusal {
    fn new(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: refusal(code, message),
            failed_auth: false,
        }
    }

    fn failed_auth(mut self) -> Self {
        self.failed_auth = true;
        self
    }
}

/// The headers a request's signature covers, by lowercase name.
pub(super) struct Signed(Vec<String>);

impl Signed {
    fn covers(&self, name: &str) -> bool {
        self.0.iter().any(|s| s == name)
    }
}

pub(super) fn check<B>(settings: &Settings, req: &Request<B>) -> Result<Signed, Refusal> {
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("");
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let v2_query = param("Signature").is_some() || param("AWSAccessKeyId").is_some();
    if authorization.is_some_and(|a| a.starts_with("AWS ")) || v2_query {
        return Err(Refusal::new(
            S3ErrorCode::InvalidRequest,
            "The authorization mechanism you have provided is not supported. Please use \
             AWS4-HMAC-SHA256.",
        ));
    }
    if req.method() == Method::POST
        && headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            })
    {
        return Err(Refusal::new(
            S3ErrorCode::NotImplemented,
            "browser POST uploads are not accepted here; use PutObject or a presigned PUT",
        ));
    }

    let presigned = param("X-Amz-Signature").is_some() || param("X-Amz-Credential").is_some();
    if authorization.is_some() && presigned {
        // s3s would check the query's signature and the door the header's limits: one only.
        return Err(Refusal::new(
            S3ErrorCode::InvalidArgument,
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or \
             the Authorization header should be specified",
        ));
    }
    let signed: Vec<String> = if let Some(a) = authorization {
        let Some(parsed) = parse_authorization(a) else {
            return Err(Refusal::new(
                S3ErrorCode::AuthorizationHeaderMalformed,
                "the Authorization header is not AWS4-HMAC-SHA256 Credential=..., \
                 SignedHeaders=..., Signature=...",
            )
            .failed_auth());
        };
        check_region(settings, parsed.region)?;
        parsed
            .signed_headers
            .split(';')
            .map(str::to_owned)
            .collect()
    } else if let Some(credential) = param("X-Amz-Credential") {
        let region = credential.split('/').nth(2).unwrap_or("");
        check_region(settings, region)?;
        let expires = param("X-Amz-Expires")
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| {
                Refusal::new(
                    S3ErrorCode::AuthorizationQueryParametersError,
                    "X-Amz-Expires must be a number of seconds",
                )
            })?;
        let max = settings.max_presign_ttl.as_secs();
        if expires > max {
            return Err(Refusal::new(
                S3ErrorCode::AuthorizationQueryParametersError,
                format!("X-Amz-Expires must be at most {max} seconds here"),
            ));
        }
        param("X-Amz-SignedHeaders")
            .unwrap_or("")
            .split(';')
            .map(str::to_owned)
            .collect()
    } else {
        // Anonymous: s3s refuses it (AccessDenied); nothing is signed to check.
        Vec::new()
    };
    if authorization.is_some() || param("X-Amz-Credential").is_some() {
        for name in headers.keys() {
            let name = name.as_str();
            // A presigned request may say how its body is hashed without signing that.
            let exempt = presigned && name == "x-amz-content-sha256";
            if name.starts_with("x-amz-") && !exempt && !signed.iter().any(|s| s == name) {
                return Err(Refusal::new(
                    S3ErrorCode::AccessDenied,
                    format!(
                        "There were headers present in the request which were not signed: {name}"
                    ),
                ));
            }
        }
    }
    refused_headers(headers)?;
    Ok(Signed(signed))
}

/// Removes a `Range` from a GET or HEAD when S3 would ignore it (several ranges, or one it
/// cannot read; the whole object is the answer) and the signature does not cover it: a
/// browser adds its Range to a presigned URL unsigned. s3s would refuse the request instead.
/// A signed one stays, for s3s to refuse: removing it would break the signature.
pub(super) fn drop_ignored_range<B>(req: &mut Request<B>, signed: &Signed) {
    if !matches!(*req.method(), Method::GET | Method::HEAD) || signed.covers("range") {
        return;
    }
    let ranges = req.headers().get_all(http::header::RANGE);
    let mut values = ranges.iter();
    let ignored = match (values.next(), values.next()) {
        (None, _) => false,
        (Some(v), None) => v
            .to_str()
            .map_or(true, |v| s3s::dto::Range::parse(v.trim()).is_err()),
        (Some(_), Some(_)) => true,
    };
    if ignored {
        req.headers_mut().remove(http::header::RANGE);
    }
}

fn check_region(settings: &Settings, region: &str) -> Result<(), Refusal> {
    if region == settings.region {
        return Ok(());
    }
    Err(Refusal::new(
        S3ErrorCode::AuthorizationHeaderMalformed,
        format!(
            "The authorization header is malformed; the region '{region}' is wrong; expecting '{}'",
            settings.region
        ),
    )
    .failed_auth())
}

struct Authorization<'a> {
    region: &'a str,
    signed_headers: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/s3/aws4_request, SignedHeaders=a;b, Signature=..`
fn parse_authorization(a: &str) -> Option<Authorization<'_>> {
    let rest = a.strip_prefix("AWS4-HMAC-SHA256")?.trim_start();
    let mut region = None;
    let mut signed_headers = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => region = Some(v.split('/').nth(2)?),
            "SignedHeaders" => signed_headers = Some(v),
            _ => {}
        }
    }
    Some(Authorization {
        region: region?,
        signed_headers: signed_headers?,
    })
}

/// Headers that ask for what the door never does for a client.
fn refused_headers(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut metadata = 0;
    for (name, value) in headers {
        let name = name.as_str();
        let refused = match name {
            "x-amz-acl" => !matches!(value.as_bytes(), b"private" | b"bucket-owner-full-control"),
            "x-amz-tagging" | "x-amz-website-redirect-location" => true,
            "x-amz-tagging-directive" => value.as_bytes() != b"COPY",
            _ => {
                name.starts_with("x-amz-grant-")
                    || name.starts_with("x-amz-server-side-encryption-customer-")
                    || name.starts_with("x-amz-copy-source-server-side-encryption-customer-")
                    || name.starts_with("x-amz-object-lock-")
            }
        };
        if refused {
            return Err(Refusal::new(
                S3ErrorCode::AccessDenied,
                format!(
                    "`{name}` is not accepted here: ACLs, grants, SSE-C, tagging and object lock are the operator's"
                ),
            ));
        }
        if let Some(key) = name.strip_prefix("x-amz-meta-") {
            metadata += key.len() + value.len();
        }
    }
    if metadata > MAX_METADATA {
        return Err(Refusal::new(
            S3ErrorCode::MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size (2 KiB)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            region: "us-east-1".into(),
            max_presign_ttl: std::time::Duration::from_secs(3600),
            domain: None,
        }
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn code(r: Result<Signed, Refusal>) -> Option<(String, bool)> {
        r.err()
            .map(|e| (e.error.code().as_str().to_owned(), e.failed_auth))
    }

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=PCAKAAAAAAAAAAAAAAAA/20261204/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00";

    #[test]
    fn sigv2_and_post_policies_are_refused() {
        let s = settings();
        assert_eq!(
            code(check(
                &s,
                &req("GET", "/b/k", &[("authorization", "AWS AKID:sig")])
            )),
            Some(("InvalidRequest".into(), false))
        );
        assert!(
            check(
                &s,
                &req("GET", "/b/k?AWSAccessKeyId=a&Signature=s&Expires=1", &[])
            )
            .is_err()
        );
        assert_eq!(
            code(check(
                &s,
                &req(
                    "POST",
                    "/b",
                    &[("content-type", "multipart/form-data; boundary=x")]
                )
            )),
            Some(("NotImplemented".into(), false))
        );
    }

    #[test]
    fn the_region_and_the_expiry_are_checked() {
        let s = settings();
        let headers = [
            ("authorization", AUTH),
            ("x-amz-date", "20261204T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ];
        assert!(check(&s, &req("GET", "/b/k", &headers)).is_ok());
        let wrong = AUTH.replace("us-east-1", "eu-west-3");
        assert_eq!(
            code(check(&s, &req("GET", "/b/k", &[("authorization", &wrong)]))),
            Some(("AuthorizationHeaderMalformed".into(), true))
        );
        let q = |region: &str, expires: u32| {
            format!(
                "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=PCAKAAAAAAAAAAAAAAAA%2F20261204%2F{region}%2Fs3%2Faws4_request&X-Amz-Date=20261204T000000Z&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
            )
        };
        assert!(check(&s, &req("GET", &q("us-east-1", 3600), &[])).is_ok());
        assert_eq!(
            code(check(&s, &req("GET", &q("us-east-1", 3601), &[]))),
            Some(("AuthorizationQueryParametersError".into(), false))
        );
        assert_eq!(
            code(check(&s, &req("GET", &q("us-west-2", 60), &[]))),
            Some(("AuthorizationHeaderMalformed".into(), true))
        );
        // A query signature with a header one beside it: the header's limits would be the
        // ones checked and the query's signature the one verified. Refused.
        assert_eq!(
            code(check(
                &s,
                &req("GET", &q("us-east-1", 999_999), &[("authorization", AUTH)])
            )),
            Some(("InvalidArgument".into(), false))
        );
    }

    #[test]
    fn unsigned_amz_headers_and_foreign_acls_are_refused() {
        let s = settings();
        let base = [
            ("authorization", AUTH),
            ("x-amz-date", "20261204T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut h = base.to_vec();
            h.push(extra);
            h
        };
        assert_eq!(
            code(check(&s, &req("PUT", "/b/k", &with(("x-amz-meta-a", "1"))))),
            Some(("AccessDenied".into(), false))
        );
        let signed = AUTH.replace("x-amz-date", "x-amz-acl;x-amz-date");
        let mut h = base.to_vec();
        h[0] = ("authorization", &signed);
        h.push(("x-amz-acl", "private"));
        assert!(check(&s, &req("PUT", "/b/k", &h)).is_ok());
        let signed = AUTH.replace("x-amz-date", "x-amz-acl;x-amz-date");
        let mut h = base.to_vec();
        h[0] = ("authorization", &signed);
        h.push(("x-amz-acl", "public-read"));
        assert_eq!(
            code(check(&s, &req("PUT", "/b/k", &h))),
            Some(("AccessDenied".into(), false))
        );
        for name in [
            "x-amz-grant-read",
            "x-amz-server-side-encryption-customer-algorithm",
            "x-amz-tagging",
            "x-amz-object-lock-mode",
            "x-amz-website-redirect-location",
        ] {
            assert!(
                refused_headers(&req("PUT", "/b/k", &[(name, "x")]).headers().clone()).is_err(),
                "{name}"
            );
        }
        let big = "v".repeat(MAX_METADATA);
        assert_eq!(
            refused_headers(req("PUT", "/b/k", &[("x-amz-meta-a", &big)]).headers())
                .err()
                .map(|e| e.error.code().as_str().to_owned()),
            Some("MetadataTooLarge".into())
        );
    }

    #[test]
    fn a_range_s3_would_ignore_is_dropped_unless_signed() {
        let kept = |method: &str, ranges: &[&str], signed: &[&str]| {
            let headers: Vec<(&str, &str)> = ranges.iter().map(|r| ("range", *r)).collect();
            let mut r = req(method, "/b/k", &headers);
            let signed = Signed(signed.iter().map(|s| s.to_string()).collect());
            drop_ignored_range(&mut r, &signed);
            r.headers().get_all("range").iter().count()
        };
        assert_eq!(kept("GET", &["bytes=0-9"], &[]), 1);
        assert_eq!(kept("HEAD", &["bytes=-5"], &[]), 1);
        assert_eq!(kept("GET", &["bytes=0-1,3-4"], &[]), 0);
        assert_eq!(kept("GET", &["bytes=9-1"], &[]), 0);
        assert_eq!(kept("GET", &["bytes=0-1", "bytes=2-3"], &[]), 0);
        assert_eq!(kept("GET", &["bytes=0-1,3-4"], &["host", "range"]), 1);
        assert_eq!(kept("PUT", &["nonsense"], &[]), 1);
    }
}
