//! What the S3 door costs beside `/v1`: one gateway serving both, the same objects, the same
//! client (reqwest, keep-alive, 1 KiB GETs 16 at a time and 16 MiB transfers 4 at a time),
//! alternating rounds. Door uploads go in each payload mode clients use: `UNSIGNED-PAYLOAD`,
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with a CRC32 trailer (aws-cli and boto3 over TLS),
//! and `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` in 64 KiB signed chunks; and, beside the last,
//! `/v1` checking an `x-amz-checksum-sha256`, the same hashing without the chunks. Requests
//! are signed once before the rounds (a fixed date), so the client's own signing costs
//! nothing inside them; the figure is the gateway's CPU per request and per GiB.
//!
//!     cargo bench --bench door
//!     PORTCULLIS_BENCH_SECS=5 PORTCULLIS_BENCH_ROUNDS=3 cargo bench --bench door
//!
//! Every round is bounded by time and by a request count. Writes a Markdown table to
//! `target/bench-door.md`.

#[path = "support/mod.rs"]
mod support;

#[path = "../tests/it/common/sigv4.rs"]
mod sigv4;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sigv4::{Signer, crc32_b64, hex_sha256};
use support::{Proc, S3Server};

const KEY: &str = "bench-key-0123456789";
const BUCKET: &str = "bench";
const ACCESS_KEY: &str = "PCAKBENCH0000000000A";
const MASTER: &str = "bench-door-master-secret-0123456789abcdef";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// How a request is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    /// `/v1` with a bearer key.
    V1,
    /// `/v1` with an `x-amz-checksum-sha256` of the body: the same SHA-256 of every byte
    /// that signed chunks need, so the two differ only by the chunks' framing.
    V1Sha256,
    /// The door, `UNSIGNED-PAYLOAD` (GETs: the empty payload's hash).
    Unsigned,
    /// The door, `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with `x-amz-checksum-crc32`.
    Trailer,
    /// The door, `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, 64 KiB chunks.
    SignedChunks,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::V1 => "/v1",
            Way::V1Sha256 => "/v1, SHA-256 checked",
            Way::Unsigned => "door, unsigned",
            Way::Trailer => "door, CRC32 trailer",
            Way::SignedChunks => "door, signed chunks",
        }
    }
}

/// One prepared request: method, URL, headers, body.
#[derive(Clone)]
struct Prepared {
    put: bool,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn prepare(way: Way, put: bool, v1: &str, door: &str, key: &str, data: &[u8]) -> Prepared {
    if matches!(way, Way::V1 | Way::V1Sha256) {
        let mut headers = vec![("authorization".into(), format!("Bearer {KEY}"))];
        if way == Way::V1Sha256 && put {
            use base64::Engine;
            use sha2::Digest;
            let sum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data));
            headers.push(("x-amz-checksum-sha256".into(), sum));
        }
        return Prepared {
            put,
            url: format!("{v1}/v1/objects/{key}"),
            headers,
            body: Bytes::copy_from_slice(if put { data } else { &[] }),
        };
    }
    let secret = portcullis::auth::access_keys::derive_secret(MASTER.as_bytes(), ACCESS_KEY);
    let signer = Signer::now(ACCESS_KEY, &secret);
    let host = door.trim_start_matches("http://").to_owned();
    let path = format!("/files/{key}");
    let decoded = data.len().to_string();
    let (payload, extra): (String, Vec<(&str, String)>) = match (put, way) {
        (false, _) => (hex_sha256(b""), vec![]),
        (true, Way::Unsigned) => ("UNSIGNED-PAYLOAD".into(), vec![]),
        (true, Way::Trailer) => (
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER".into(),
            vec![
                ("content-encoding", "aws-chunked".into()),
                ("x-amz-decoded-content-length", decoded.clone()),
                ("x-amz-trailer", "x-amz-checksum-crc32".into()),
            ],
        ),
        (true, _) => (
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into(),
            vec![
                ("content-encoding", "aws-chunked".into()),
                ("x-amz-decoded-content-length", decoded.clone()),
            ],
        ),
    };
    let mut signed: Vec<(&str, &str)> = vec![
        ("host", host.as_str()),
        ("x-amz-date", signer.amz_date.as_str()),
        ("x-amz-content-sha256", payload.as_str()),
    ];
    signed.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let method = if put { "PUT" } else { "GET" };
    let (authorization, seed) = signer.authorization(method, &path, "", &signed, &payload);
    let body = match (put, way) {
        (false, _) => Vec::new(),
        (true, Way::Unsigned) => data.to_vec(),
        (true, Way::Trailer) => sigv4::unsigned_chunks_with_trailer(
            data,
            64 * KIB,
            &format!("x-amz-checksum-crc32:{}", crc32_b64(data)),
        ),
        (true, _) => signer.signed_chunks(&seed, data, 64 * KIB),
    };
    let mut headers: Vec<(String, String)> = signed
        .iter()
        .filter(|(k, _)| *k != "host")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers.push(("authorization".into(), authorization));
    Prepared {
        put,
        url: format!("{door}{path}"),
        headers,
        body: Bytes::from(body),
    }
}

/// Sends each task's prepared request over and over for `round` (at most `limit` in all);
/// returns how many were answered 2xx.
async fn drive(
    client: &reqwest::Client,
    prepared: &[Prepared],
    round: Duration,
    limit: u64,
) -> u64 {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + round;
    let mut tasks = Vec::new();
    for p in prepared {
        let (client, p, done) = (client.clone(), p.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline
                && done.load(std::sync::atomic::Ordering::Relaxed) < limit
            {
                let mut req = if p.put {
                    client.put(&p.url).body(p.body.clone())
                } else {
                    client.get(&p.url)
                };
                for (k, v) in &p.headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{}: {}", p.url, resp.status());
                let _ = resp.bytes().await.unwrap();
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed)
}

fn main() {
    support::main(run);
}

async fn run(round: Duration, rounds: usize) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let s3 = S3Server::start(&dir.path().join("data"), BUCKET);
    let door_port = support::free_port();
    let config = support::gateway_config(
        dir.path(),
        "door",
        &s3.endpoint,
        BUCKET,
        KEY,
        &format!(
            "[s3_api]\nlisten = \"127.0.0.1:{door_port}\"\nsecrets_env = \"BENCH_DOOR_MASTER\"\n"
        ),
        &format!("s3_access_keys = [\"{ACCESS_KEY}\"]"),
    );
    let port = support::free_port();
    let gateway = Proc::gateway_with_env(
        &config,
        port,
        &s3.access_key,
        &s3.secret_key,
        dir.path(),
        &[("BENCH_DOOR_MASTER", MASTER)],
    );
    let v1 = format!("http://127.0.0.1:{port}");
    let door = format!("http://127.0.0.1:{door_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", door_port)).is_err() {
        assert!(Instant::now() < deadline, "the door did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    // (GET or PUT, size, concurrency, ways)
    let cells: [(bool, usize, usize, &[Way]); 3] = [
        (false, KIB, 16, &[Way::V1, Way::Unsigned]),
        (false, 16 * MIB, 4, &[Way::V1, Way::Unsigned]),
        (
            true,
            16 * MIB,
            4,
            &[
                Way::V1,
                Way::Unsigned,
                Way::Trailer,
                Way::SignedChunks,
                Way::V1Sha256,
            ],
        ),
    ];
    let mut lines = Vec::new();
    for (put, size, concurrency, ways) in cells {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let keys: Vec<String> = (0..concurrency)
            .map(|i| format!("door-bench/{size}/{i}"))
            .collect();
        if !put {
            // The objects, stored once through /v1 before anything is measured.
            for k in &keys {
                let p = prepare(Way::V1, true, &v1, &door, k, &data);
                drive(
                    &client,
                    std::slice::from_ref(&p),
                    Duration::from_secs(60),
                    1,
                )
                .await;
            }
        }
        let prepared: Vec<Vec<Prepared>> = ways
            .iter()
            .map(|w| {
                keys.iter()
                    .map(|k| prepare(*w, put, &v1, &door, k, &data))
                    .collect()
            })
            .collect();
        let limit = ((64 * 1024 * MIB) / size).clamp(64, 2_000_000) as u64;
        let mut cpu = vec![0.0; ways.len()];
        let mut requests = vec![0u64; ways.len()];
        for _ in 0..rounds {
            for (i, p) in prepared.iter().enumerate() {
                let before = gateway.cpu_secs();
                requests[i] += drive(&client, p, round, limit).await;
                cpu[i] += gateway.cpu_secs() - before;
            }
        }
        let name = format!(
            "{} {} x{concurrency}",
            if put { "PUT" } else { "GET" },
            if size >= MIB {
                format!("{} MiB", size / MIB)
            } else {
                format!("{} KiB", size / KIB)
            }
        );
        let per_req = |i: usize| cpu[i] * 1e6 / requests[i].max(1) as f64;
        let per_gib =
            |i: usize| cpu[i] / (requests[i].max(1) as f64 * size as f64 / (1024.0 * MIB as f64));
        for (i, way) in ways.iter().enumerate() {
            let line = format!(
                "| {name} | {} | {} | {:.1} | {:.3} | {:.2} |",
                way.name(),
                requests[i],
                per_req(i),
                per_gib(i),
                per_req(i) / per_req(0)
            );
            println!("{line}");
            lines.push(line);
        }
    }
    drop(gateway);
    let mut table = format!(
        "The S3 door beside /v1: one gateway, the same client and objects, {rounds} alternating \
         rounds of {round:?} per cell.\n\n\
         | cell | way | requests | gateway CPU µs/req | gateway CPU s/GiB | ratio to /v1 |\n\
         |---|---|---|---|---|---|\n"
    );
    for line in lines {
        table.push_str(&line);
        table.push('\n');
    }
    std::fs::write(target.join("bench-door.md"), &table).unwrap();
    println!("\n{table}");
}
