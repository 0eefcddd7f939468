//! Building the aws-sdk-s3 client and the light signed path beside it. The same code path for
//! AWS, an S3-compatible endpoint and the embedded server: only the endpoint and where the
//! credentials come from differ.

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};

use super::{Backend, light};
use crate::config::{Config, Sse};

/// What the relay needs to know beyond the config file.
#[derive(Clone, Debug, Default)]
pub struct BackendSettings {
    /// Overrides `backend.endpoint` (the embedded server's address).
    pub endpoint: Option<String>,
    /// Static credentials for the embedded server. `None`: the AWS default chain.
    pub credentials: Option<(String, String)>,
}

/// Builds the client. Credentials come from the AWS default chain (environment, profile,
/// web identity, ECS/IMDS) unless the embedded server handed us its generated pair.
pub async fn connect(config: &Config, settings: BackendSettings) -> Backend {
    let cfg = &config.backend;
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
    if let Some((access_key, secret_key)) = settings.credentials {
        loader = loader.credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "portcullis-embedded",
        ));
    }
    let shared = loader.load().await;
    let force_path_style = cfg.force_path_style || settings.endpoint.is_some();
    let endpoint = settings.endpoint.or_else(|| cfg.endpoint.clone());
    let stall_grace = config.server.body_idle_timeout.get() * 2;
    let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        // Checksums only where S3 requires them: the SDK would otherwise wrap every streamed
        // upload in aws-chunked encoding with a trailer, which not every S3-compatible server
        // accepts, and validate every download at the end of the stream.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // Only the connect timeout applies to every call: a streamed upload or download may
        // rightly take hours. Calls without a streamed request body also get an attempt
        // timeout (the `bounded` client below).
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout.get())
                .build(),
        )
        // Stalled streams: our own body idle timeout watches the client side of uploads and
        // fires first; the SDK's watch, with a longer grace, catches a backend that stops
        // reading an upload or stops sending a download. It only counts time the body is
        // polled, so a slow reader's backpressure is not a stall.
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .grace_period(stall_grace)
                .build(),
        );
    if let Some(endpoint) = &endpoint {
        s3 = s3.endpoint_url(endpoint);
    }
    // Both clients share the HTTP connection pool and the credentials cache of `shared`.
    let bounded = s3.clone().timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout.get())
            .operation_attempt_timeout(cfg.first_byte_timeout.get())
            .build(),
    );
    let light = match (cfg.light_path, shared.credentials_provider()) {
        (true, Some(credentials)) => {
            let setup = light::Setup {
                bucket: &cfg.bucket,
                region: &cfg.region,
                endpoint: endpoint.as_deref(),
                force_path_style,
                use_fips: shared.use_fips().unwrap_or(false),
                use_dual_stack: shared.use_dual_stack().unwrap_or(false),
                credentials,
                connect_timeout: cfg.connect_timeout.get(),
                first_byte_timeout: cfg.first_byte_timeout.get(),
                stall_grace,
            };
            match light::Relay::new(setup).await {
                Ok(relay) => Some(Arc::new(relay)),
                Err(why) => {
                    tracing::info!(reason = %why, "the light path does not apply to this backend; every call goes through the SDK");
                    None
                }
            }
        }
        _ => None,
    };
    Backend {
        client: aws_sdk_s3::Client::from_conf(s3.build()),
        bounded: aws_sdk_s3::Client::from_conf(bounded.build()),
        bucket: Arc::from(cfg.bucket.as_str()),
        sse: cfg.sse,
        kms_key_id: if cfg.sse == Some(Sse::AwsKms) {
            cfg.kms_key_id.clone()
        } else {
            None
        },
        part_size: cfg.part_size.bytes() as usize,
        buffers: Arc::new(super::buffers::PartBuffers::new(
            cfg.upload_buffer_memory.bytes(),
            stall_grace / 2,
        )),
        stall_grace,
        light,
    }
}
