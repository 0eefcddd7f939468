//! Building the aws-sdk-s3 client and the light signed path beside it. The same code path for
//! AWS, an S3-compatible endpoint and the embedded server: only the endpoint and where the
//! credentials come from differ.

use std::collections::HashMap;
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};

use super::{Backend, Buckets, SdkClients, light};
use crate::config::{Config, Sse};

/// What the relay needs to know beyond the config file.
#[derive(Clone, Debug, Default)]
pub struct BackendSettings {
    /// Overrides every bucket's endpoint (the embedded server's address).
    pub endpoint: Option<String>,
    /// Static credentials for the embedded server. `None`: the AWS default chain.
    pub credentials: Option<(String, String)>,
}

/// Builds the buckets' clients: one aws-sdk-s3 client (and one light-path connection pool)
/// per endpoint, region and addressing style, shared by the buckets on it. Credentials come
/// from the AWS default chain (environment, profile, web identity, ECS/IMDS) unless the
/// embedded server handed us its generated pair.
pub async fn connect(config: &Config, settings: BackendSettings) -> Buckets {
    let stall_grace = config.server.body_idle_timeout.get() * 2;
    let buffers = Arc::new(super::buffers::PartBuffers::new(
        config.backend.upload_buffer_memory.bytes(),
        stall_grace / 2,
    ));
    let mut clients: HashMap<ClientKey, Clients> = HashMap::new();
    let mut pools = light::Pools::default();
    let mut buckets = Vec::new();
    for bucket in config.bucket_configs().iter() {
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| bucket.endpoint.clone());
        let key = ClientKey {
            force_path_style: bucket.force_path_style || settings.endpoint.is_some(),
            endpoint,
            region: bucket.region.clone(),
        };
        let shared = match clients.get(&key) {
            Some(shared) => shared.clone(),
            None => {
                let made = Clients::new(config, &settings, &key, stall_grace).await;
                clients.insert(key.clone(), made.clone());
                made
            }
        };
        let light = match (config.backend.light_path, shared.sdk.credentials_provider()) {
            (true, Some(credentials)) => {
                let setup = light::Setup {
                    bucket: &bucket.bucket,
                    region: &bucket.region,
                    endpoint: key.endpoint.as_deref(),
                    force_path_style: key.force_path_style,
                    use_fips: shared.sdk.use_fips().unwrap_or(false),
                    use_dual_stack: shared.sdk.use_dual_stack().unwrap_or(false),
                    credentials,
                    connect_timeout: config.backend.connect_timeout.get(),
                    first_byte_timeout: config.backend.first_byte_timeout.get(),
                    stall_grace,
                    download_gather: usize::try_from(config.backend.download_gather.bytes())
                        .unwrap_or(usize::MAX),
                };
                match light::Relay::new(setup, &mut pools).await {
                    Ok(relay) => Some(Arc::new(relay)),
                    Err(why) => {
                        tracing::info!(bucket = %bucket.name, reason = %why, "the light path does not apply to this backend; every call goes through the SDK");
                        None
                    }
                }
            }
            _ => None,
        };
        buckets.push(Backend {
            name: Arc::from(bucket.name.as_str()),
            sdk: shared.clients,
            bucket: Arc::from(bucket.bucket.as_str()),
            sse: bucket.sse,
            kms_key_id: if bucket.sse == Some(Sse::AwsKms) {
                bucket.kms_key_id.clone()
            } else {
                None
            },
            part_size: bucket.part_size.bytes() as usize,
            buffers: buffers.clone(),
            stall_grace,
            light,
        });
    }
    Buckets::new(buckets)
}

/// What makes two buckets' clients the same client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: Option<String>,
    region: String,
    force_path_style: bool,
}

/// The SDK clients of one endpoint and region, and the config they were built from.
#[derive(Clone)]
struct Clients {
    sdk: aws_config::SdkConfig,
    clients: Arc<SdkClients>,
}

impl Clients {
    async fn new(
        config: &Config,
        settings: &BackendSettings,
        key: &ClientKey,
        stall_grace: std::time::Duration,
    ) -> Self {
        let cfg = &config.backend;
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(key.region.clone()));
        if let Some((access_key, secret_key)) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "portcullis-embedded",
            ));
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(key.force_path_style)
            // Checksums only where S3 requires them: the SDK would otherwise wrap every
            // streamed upload in aws-chunked encoding with a trailer, which not every
            // S3-compatible server accepts, and validate every download at the end.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // Only the connect timeout applies to every call: a streamed upload or download
            // may rightly take hours. Calls without a streamed request body also get an
            // attempt timeout (`bounded` below).
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout.get())
                    .build(),
            )
            // Stalled streams: our own body idle timeout watches the client side of uploads
            // and fires first; the SDK's watch, with a longer grace, catches a backend that
            // stops reading an upload or stops sending a download. It only counts time the
            // body is polled, so a slow reader's backpressure is not a stall.
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(stall_grace)
                    .build(),
            );
        if let Some(endpoint) = &key.endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        // Both clients share the HTTP connection pool and the credentials cache of `sdk`.
        let bounded = s3.clone().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout.get())
                .operation_attempt_timeout(cfg.first_byte_timeout.get())
                .build(),
        );
        Self {
            clients: Arc::new(SdkClients {
                client: aws_sdk_s3::Client::from_conf(s3.build()),
                bounded: aws_sdk_s3::Client::from_conf(bounded.build()),
            }),
            sdk,
        }
    }
}
