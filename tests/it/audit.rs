//! The bucket audit: against the embedded backend (which implements none of the posture
//! calls: unknown, not failed), and against an S3 server made for the test that reports a
//! public bucket, which `enforce` refuses to serve.

use std::process::Command;

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// An S3 server whose one bucket has Block Public Access off and a public policy.
struct PublicBucket;

#[async_trait::async_trait]
impl S3 for PublicBucket {
    async fn head_bucket(
        &self,
        _: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_public_access_block(
        &self,
        _: S3Request<GetPublicAccessBlockInput>,
    ) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        Ok(S3Response::new(GetPublicAccessBlockOutput {
            public_access_block_configuration: Some(PublicAccessBlockConfiguration {
                block_public_acls: Some(false),
                block_public_policy: Some(false),
                ignore_public_acls: Some(false),
                restrict_public_buckets: Some(false),
            }),
        }))
    }

    async fn get_bucket_policy_status(
        &self,
        _: S3Request<GetBucketPolicyStatusInput>,
    ) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        Ok(S3Response::new(GetBucketPolicyStatusOutput {
            policy_status: Some(PolicyStatus {
                is_public: Some(true),
            }),
        }))
    }
}

/// Serves `PublicBucket` on 127.0.0.1:0; returns its endpoint.
async fn public_bucket_server() -> String {
    let mut builder = s3s::service::S3ServiceBuilder::new(PublicBucket);
    builder.set_auth(s3s::auth::SimpleAuth::from_single("test-ak", "test-sk"));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    format!("http://{addr}")
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("audit.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_backend_reports_unknown_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[backend]\nkind = \"embedded\"\nroot = \"{}\"\nbucket = \"audit-me\"\n",
            dir.path().join("data").display()
        ),
    );
    let out = Command::new(BIN)
        .args(["audit", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("reachable") && table.contains("pass"),
        "{table}"
    );
    assert!(table.contains("block_public_access    unknown"), "{table}");

    let out = Command::new(BIN)
        .args(["audit", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bucket"], "audit-me");
    let states: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "pass", "unknown", "unknown", "unknown", "unknown", "unknown"
        ]
    );
    for c in v["checks"].as_array().unwrap() {
        assert!(c["why"].is_string() && c["fix"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_to_start_on_a_public_bucket() {
    let endpoint = public_bucket_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |mode: &str| {
        write_config(
            dir.path(),
            &format!(
                "[backend]\nbucket = \"public-bucket\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\naudit = \"{mode}\"\nabandoned_upload_age = \"0s\"\n"
            ),
        )
    };
    let run = |args: &[&str], path: &std::path::Path| {
        Command::new(BIN)
            .args(args)
            .arg(path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("AWS_ACCESS_KEY_ID", "test-ak")
            .env("AWS_SECRET_ACCESS_KEY", "test-sk")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };

    // The report itself.
    let out = Command::new(BIN)
        .args(["audit", "--config"])
        .arg(config("warn"))
        .env("AWS_ACCESS_KEY_ID", "test-ak")
        .env("AWS_SECRET_ACCESS_KEY", "test-sk")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains("block_public_access    FAIL"), "{table}");
    assert!(table.contains("policy_not_public      FAIL"), "{table}");
    assert!(
        table.contains("public-bucket"),
        "the fix names the bucket: {table}"
    );

    // enforce: refused, with the reason.
    let out = run(&["serve", "--config"], &config("enforce"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start") && err.contains("block_public_access"),
        "{err}"
    );
}
