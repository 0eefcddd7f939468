//! Who is calling through the door: s3s asks [`Keys`] for an access key's secret to verify
//! the signature; [`Access`] then refuses anonymous requests and names the operation in the
//! access log; [`Host`] reads a virtual-hosted bucket from `Host` when `s3_api.domain` is set.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::{S3Result, s3_error};

use crate::api::AppState;
use crate::obs::RequestNote;

pub(super) struct Keys {
    state: Arc<AppState>,
}

impl Keys {
    pub(super) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.state.access_keys.get(access_key) {
            Some((secret, _)) => Ok(SecretKey::from(secret)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

/// After the signature: a request must be signed, and its operation is named in the log.
pub(super) struct Access;

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let route = super::route_name(cx.s3_op().name());
        if let Some(n) = cx
            .extensions_mut()
            .get::<Arc<std::sync::Mutex<RequestNote>>>()
            && let Ok(mut n) = n.lock()
        {
            n.route = route;
        }
        if cx.credentials().is_none() {
            return Err(s3_error!(
                AccessDenied,
                "Anonymous requests are not accepted"
            ));
        }
        Ok(())
    }
}

/// `BUCKET.<domain>` is virtual-hosted style; any other host is path style.
#[derive(Debug)]
pub(super) struct Host {
    suffix: String,
}

impl Host {
    pub(super) fn new(domain: &str) -> Self {
        Self {
            suffix: format!(".{}", domain.to_ascii_lowercase()),
        }
    }
}

impl S3Host for Host {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let lower = name.to_ascii_lowercase();
        match lower.strip_suffix(&self.suffix) {
            Some(bucket) if !bucket.is_empty() && !bucket.contains('.') => {
                Ok(VirtualHost::new(host).with_bucket(bucket.to_owned()))
            }
            _ => Ok(VirtualHost::new(host)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_under_the_domain_only() {
        let h = Host::new("s3.example.com");
        let bucket = |host: &str| {
            h.parse_host_header(host)
                .unwrap()
                .bucket()
                .map(str::to_owned)
        };
        assert_eq!(bucket("files.s3.example.com").as_deref(), Some("files"));
        assert_eq!(
            bucket("Files.S3.Example.com:9000").as_deref(),
            Some("files")
        );
        assert_eq!(bucket("s3.example.com"), None);
        assert_eq!(bucket("127.0.0.1:9000"), None);
        assert_eq!(bucket("localhost:9000"), None);
        assert_eq!(bucket("a.b.s3.example.com"), None);
    }
}
