//! The bucket's security settings, read with the audit's read-only calls. Reported raw; the
//! `audit` module judges them.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use super::Backend;

/// One answer from the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Value(T),
    /// The setting does not exist (S3's "no such configuration").
    Missing,
    /// The backend does not implement the call.
    Unsupported,
    /// The call failed (denied, unreachable): the detail says why.
    Failed(String),
}

/// Everything the audit looks at.
#[derive(Clone, Debug)]
pub struct Posture {
    pub reachable: Answer<()>,
    /// BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets.
    pub public_access_block: Answer<[bool; 4]>,
    pub policy_is_public: Answer<bool>,
    /// Default encryption algorithms.
    pub encryption: Answer<Vec<String>>,
    /// `Enabled`, `Suspended`, or none (never enabled).
    pub versioning: Answer<Option<String>>,
    /// Every allowed origin of every CORS rule.
    pub cors_origins: Answer<Vec<String>>,
}

fn classify<T, E>(err: SdkError<E, Response>) -> Answer<T>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ServiceError(s) = &err {
        let status = s.raw().status().as_u16();
        let code = s.err().code().unwrap_or("");
        if status == 501 || code == "NotImplemented" {
            return Answer::Unsupported;
        }
        if matches!(
            code,
            "NoSuchPublicAccessBlockConfiguration"
                | "NoSuchBucketPolicy"
                | "ServerSideEncryptionConfigurationNotFoundError"
                | "NoSuchCORSConfiguration"
        ) {
            return Answer::Missing;
        }
    }
    Answer::Failed(super::translate(err).detail.unwrap_or_default())
}

impl Backend {
    /// Reads the bucket's security settings. Never fails: each answer says what happened.
    pub async fn posture(&self) -> Posture {
        let c = &self.sdk.client;
        let b = &*self.bucket;
        let reachable = match c.head_bucket().bucket(b).send().await {
            Ok(_) => Answer::Value(()),
            Err(e) => classify(e),
        };
        let public_access_block = match c.get_public_access_block().bucket(b).send().await {
            Ok(out) => match out.public_access_block_configuration() {
                Some(p) => Answer::Value([
                    p.block_public_acls().unwrap_or(false),
                    p.ignore_public_acls().unwrap_or(false),
                    p.block_public_policy().unwrap_or(false),
                    p.restrict_public_buckets().unwrap_or(false),
                ]),
                None => Answer::Missing,
            },
            Err(e) => classify(e),
        };
        let policy_is_public = match c.get_bucket_policy_status().bucket(b).send().await {
            Ok(out) => Answer::Value(
                out.policy_status()
                    .and_then(|s| s.is_public())
                    .unwrap_or(false),
            ),
            Err(e) => classify(e),
        };
        let encryption = match c.get_bucket_encryption().bucket(b).send().await {
            Ok(out) => Answer::Value(
                out.server_side_encryption_configuration()
                    .map(|cfg| {
                        cfg.rules()
                            .iter()
                            .filter_map(|r| r.apply_server_side_encryption_by_default())
                            .map(|d| d.sse_algorithm().as_str().to_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Err(e) => classify(e),
        };
        let versioning = match c.get_bucket_versioning().bucket(b).send().await {
            Ok(out) => Answer::Value(out.status().map(|s| s.as_str().to_owned())),
            Err(e) => classify(e),
        };
        let cors_origins = match c.get_bucket_cors().bucket(b).send().await {
            Ok(out) => Answer::Value(
                out.cors_rules()
                    .iter()
                    .flat_map(|r| r.allowed_origins().iter().cloned())
                    .collect(),
            ),
            Err(e) => classify(e),
        };
        Posture {
            reachable,
            public_access_block,
            policy_is_public,
            encryption,
            versioning,
            cors_origins,
        }
    }
}
