//! The light path's credentials: the SDK's provider, cached until shortly before they
//! expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::identity::Identity;

use crate::BoxError;

/// Credentials are refreshed this long before they expire.
pub(super) const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

/// Credentials from the provider, kept until shortly before they expire. Concurrent
/// requests that find them stale wait for one refresh.
pub(super) struct Credentials {
    pub(super) provider: SharedCredentialsProvider,
    pub(super) current: ArcSwapOption<Identity>,
    pub(super) refresh: tokio::sync::Mutex<()>,
}

impl Credentials {
    pub(super) fn new(provider: SharedCredentialsProvider) -> Self {
        Credentials {
            provider,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) async fn get(&self) -> Result<Arc<Identity>, BoxError> {
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        let _one_refresh = self.refresh.lock().await;
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        let credentials = self.provider.provide_credentials().await?;
        let identity = Arc::new(Identity::from(credentials));
        self.current.store(Some(identity.clone()));
        Ok(identity)
    }

    pub(super) fn fresh(&self) -> Option<Arc<Identity>> {
        let identity = self.current.load_full()?;
        match identity.expiration() {
            Some(expiry) if expiry <= SystemTime::now() + REFRESH_BEFORE_EXPIRY => None,
            _ => Some(identity),
        }
    }
}
