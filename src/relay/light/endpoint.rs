//! Where the light path sends its requests: the endpoint resolved once by the SDK's own
//! rules, its SigV4 scheme, and the platform's root certificates for TLS.

use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_smithy_types::Document;
use http::HeaderValue;

use super::Setup;

/// Where and how reads are sent: the bucket's endpoint as the SDK's rules resolve it.
#[derive(Debug)]
pub(super) struct Target {
    /// Scheme, authority and path up to the key, e.g. `http://127.0.0.1:9000/bucket/`.
    pub(super) base: String,
    pub(super) host: HeaderValue,
    pub(super) https: bool,
    pub(super) signing_name: String,
    pub(super) signing_region: String,
}

impl Target {
    pub(super) async fn resolve(setup: &Setup<'_>) -> Result<Target, String> {
        let params = Params::builder()
            .bucket(setup.bucket)
            .region(setup.region)
            .set_endpoint(setup.endpoint.map(str::to_owned))
            .force_path_style(setup.force_path_style)
            .use_fips(setup.use_fips)
            .use_dual_stack(setup.use_dual_stack)
            .build()
            .map_err(|e| format!("endpoint parameters: {e}"))?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| format!("endpoint rules: {e}"))?;
        if endpoint.headers().next().is_some() {
            return Err("the endpoint needs extra headers".into());
        }
        let (signing_name, signing_region) = sigv4_scheme(endpoint.properties(), setup.region)?;
        let url: http::Uri = endpoint
            .url()
            .parse()
            .map_err(|e| format!("endpoint URL {}: {e}", endpoint.url()))?;
        let authority = url.authority().ok_or("the endpoint URL has no host")?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("endpoint scheme {other:?}")),
        };
        let scheme = if https { "https" } else { "http" };
        let mut base = format!("{scheme}://{authority}{}", url.path());
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Target {
            host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            base,
            https,
            signing_name,
            signing_region,
        })
    }
}

/// The signing name and region of the endpoint's auth scheme, if it is plain SigV4.
pub(super) fn sigv4_scheme(
    properties: &std::collections::HashMap<std::borrow::Cow<'static, str>, Document>,
    region: &str,
) -> Result<(String, String), String> {
    let Some(Document::Array(schemes)) = properties.get("authSchemes") else {
        // No scheme listed: the service's default, SigV4 for "s3" in the client's region.
        return Ok(("s3".into(), region.into()));
    };
    let Some(Document::Object(first)) = schemes.first() else {
        return Err("the endpoint lists no auth scheme".into());
    };
    let text = |k: &str| match first.get(k) {
        Some(Document::String(s)) => Some(s.clone()),
        _ => None,
    };
    match text("name").as_deref() {
        Some("sigv4") => Ok((
            text("signingName").unwrap_or_else(|| "s3".into()),
            text("signingRegion").unwrap_or_else(|| region.into()),
        )),
        other => Err(format!("the endpoint is signed with {other:?}, not SigV4")),
    }
}

/// The trust roots the SDK's own HTTPS client uses: the platform's.
pub(super) fn platform_roots() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted root certificates found: {:?}",
            found.errors
        ));
    }
    Ok(roots)
}
