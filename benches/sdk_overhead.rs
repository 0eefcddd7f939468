//! What aws-sdk-s3 costs per small request, measured in this process: the same 1 KiB GETs
//! against the same S3 server (`portcullis s3-server`, its own process) through the SDK (the
//! relay's path with `backend.light_path = false`), through the relay's light signed path
//! (SigV4 by the gateway on a plain hyper client, the default), and through a plain hyper
//! client with a presigned URL (no signing at all); then 1 KiB uploads (a streamed body, as
//! the gateway relays it) through the relay's SDK path and its light path. The differences are
//! the SDK's per-request CPU (orchestrator, endpoint rules, signing, parsing) and what signing
//! itself costs.
//!
//!     cargo bench --bench sdk_overhead            # 20,000 requests each way, 16 at a time

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{S3Server, cpu_secs_of};

const BUCKET: &str = "bench";
const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 16;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("data"), BUCKET);
    let sdk = s3.client(BUCKET).await;
    let light = s3.relay(BUCKET, true).await;
    assert!(light.light_path());
    let light = Arc::new(light);
    let sdk_relay = s3.relay(BUCKET, false).await;
    assert!(!sdk_relay.light_path());
    let sdk_relay = Arc::new(sdk_relay);
    let key = portcullis::policy::ObjectKey::parse("small".into()).unwrap();
    sdk.put_object()
        .bucket(BUCKET)
        .key("small")
        .body(vec![7u8; 1024].into())
        .send()
        .await
        .unwrap();
    let url = sdk
        .get_object()
        .bucket(BUCKET)
        .key("small")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(3600)).unwrap())
        .await
        .unwrap()
        .uri()
        .to_owned();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let hyper: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);

    // Warm both connection pools, then measure each way twice, alternating.
    let sdk = Arc::new(sdk);
    let url = Arc::new(url);
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    for round in 0..3 {
        for way in [
            "aws-sdk-s3 GetObject",
            "Portcullis light read (its SigV4 signer + hyper)",
            "hyper + presigned URL",
            "aws-sdk-s3 PutObject (the relay, light path off)",
            "Portcullis light upload (its SigV4 signer + hyper)",
        ] {
            let n = if round == 0 { 2_000 } else { REQUESTS };
            let (cpu0, t0) = (cpu_secs_of("self"), Instant::now());
            let mut tasks = Vec::new();
            for w in 0..CONCURRENCY {
                let (sdk, url, hyper) = (sdk.clone(), url.clone(), hyper.clone());
                let (light, key, sdk_relay) = (light.clone(), key.clone(), sdk_relay.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in (w..n).step_by(CONCURRENCY) {
                        if way.contains("upload") || way.contains("PutObject") {
                            let relay = if way.contains("upload") {
                                &light
                            } else {
                                &sdk_relay
                            };
                            let upload = portcullis::relay::Upload {
                                key: portcullis::policy::ObjectKey::parse(format!("put-{w}"))
                                    .unwrap(),
                                content_type: "application/octet-stream".into(),
                                length: Some(1024),
                                condition: portcullis::relay::WriteCondition::None,
                                headers: Default::default(),
                                body: Full::new(Bytes::from_static(&[7u8; 1024]))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            };
                            assert_eq!(relay.put(upload).await.unwrap().size, 1024);
                        } else if way.starts_with("Portcullis") {
                            let cond = portcullis::relay::ReadConditions::default();
                            let fetched = light
                                .fetch(&key, None, &cond, portcullis::relay::Read::Body)
                                .await
                                .unwrap();
                            let portcullis::relay::Fetched::Object { body: Some(b), .. } = fetched
                            else {
                                panic!("not an object");
                            };
                            assert_eq!(b.collect().await.unwrap().to_bytes().len(), 1024);
                        } else if way.starts_with("aws") {
                            let out = sdk.get_object().bucket(BUCKET).key("small").send().await;
                            let body = out.unwrap().body.collect().await.unwrap();
                            assert_eq!(body.into_bytes().len(), 1024);
                        } else {
                            let req = http::Request::get(url.as_str())
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            let resp = hyper.request(req).await.unwrap();
                            assert_eq!(resp.status(), 200);
                            let body = resp.into_body().collect().await.unwrap().to_bytes();
                            assert_eq!(body.len(), 1024);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            if round > 0 {
                let cpu = cpu_secs_of("self") - cpu0;
                results.push((
                    way,
                    cpu * 1e6 / n as f64,
                    n as f64 / t0.elapsed().as_secs_f64(),
                ));
            }
        }
    }
    let mut table = String::from(
        "Client-side CPU per 1 KiB request, same S3 server, 16 at a time (two rounds each)\n\n\
         | client | CPU µs per request | requests/s |\n|---|---|---|\n",
    );
    for (way, us, rate) in &results {
        table.push_str(&format!("| {way} | {us:.0} | {rate:.0} |\n"));
    }
    println!("{table}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("bench-sdk-overhead.md"), &table).unwrap();
}
