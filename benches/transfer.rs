//! Large transfers through the gateway next to the same transfers made directly to the
//! backend: throughput, the gateway process's CPU time per GiB and its peak RSS.
//!
//!     cargo bench --bench transfer                          # 2 GiB (the default)
//!     PORTCULLIS_BENCH_SIZE=256MiB cargo bench --bench transfer
//!
//! The S3 server (s3s-fs, the embedded backend) runs in this process; the gateway runs as a
//! separate `portcullis serve` process relaying to it, so its /proc figures are its own.
//! The bodies are generated on the fly (a 1 MiB block repeated), so the client side holds
//! nothing. Writes a Markdown table to `target/bench-transfer.md`.

use std::convert::Infallible;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use portcullis::config::units::Size;

#[path = "support/mod.rs"]
mod support;

use support::Proc as Gateway;

const KEY: &str = "bench-key-0123456789";
const BUCKET: &str = "bench";
const BLOCK: usize = 1024 * 1024;

struct Row {
    what: &'static str,
    path: &'static str,
    secs: f64,
    gateway_cpu: Option<f64>,
    rss_mib: Option<f64>,
}

fn main() {
    let size: u64 = std::env::var("PORTCULLIS_BENCH_SIZE")
        .ok()
        .map(|s| {
            s.parse::<Size>()
                .expect("PORTCULLIS_BENCH_SIZE is a size like 2GiB")
                .bytes()
        })
        .unwrap_or(2 * 1024 * 1024 * 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(size));
}

async fn run(size: u64) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let s3 = portcullis::embedded::start(&dir.path().join("data"), BUCKET)
        .await
        .unwrap();

    let mut direct_cfg = portcullis::config::Config::default();
    direct_cfg.backend.bucket = BUCKET.into();
    direct_cfg.backend.force_path_style = true;
    let direct = portcullis::relay::connect(
        &direct_cfg,
        portcullis::relay::BackendSettings {
            endpoint: Some(s3.endpoint.clone()),
            credentials: Some((s3.access_key.clone(), s3.secret_key.clone())),
        },
    )
    .await;
    let direct = direct.first().client().clone();

    let port = support::free_port();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nforce_path_style = true\naudit = \"off\"\n\n\
             [log]\naccess_log = \"{}\"\n\n[[principals]]\nname = \"bench\"\napi_keys = [\"{}\"]\nallow = [\"get\", \"put\"]\n",
            s3.endpoint,
            dir.path().join("access.log").display(),
            portcullis::auth::hash_key(KEY)
        ),
    )
    .unwrap();
    let mut gateway = Gateway::gateway(&config, port, &s3.access_key, &s3.secret_key, dir.path());
    let url = format!("http://127.0.0.1:{port}/v1/objects");
    let http = reqwest::Client::new();
    let mut block = vec![0u8; BLOCK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let block = Bytes::from(block);
    let gib = size as f64 / (1024.0 * 1024.0 * 1024.0);
    println!(
        "moving {:.2} GiB each way; gateway pid {}",
        gib,
        gateway.pid()
    );

    let mut rows = Vec::new();

    // Upload: directly with Content-Length, then through the gateway with Content-Length and
    // chunked (a multipart upload behind the gateway).
    let (secs, _) = timed(async {
        direct
            .put_object()
            .bucket(BUCKET)
            .key("direct.bin")
            .content_length(size as i64)
            .body(ByteStream::from_body_1_x(body_of(&block, size)))
            .send()
            .await
            .unwrap();
    })
    .await;
    rows.push(Row {
        what: "PUT, Content-Length",
        path: "direct",
        secs,
        gateway_cpu: None,
        rss_mib: None,
    });
    for (what, key, known) in [
        ("PUT, Content-Length", "known.bin", true),
        ("PUT, chunked", "chunked.bin", false),
    ] {
        let cpu0 = gateway.cpu_secs();
        let (secs, _) = timed(upload(&http, &format!("{url}/{key}"), &block, size, known)).await;
        rows.push(Row {
            what,
            path: "gateway",
            secs,
            gateway_cpu: Some(gateway.cpu_secs() - cpu0),
            rss_mib: Some(gateway.peak_rss_mib()),
        });
    }

    // Download.
    let (secs, n) = timed(async {
        let out = direct
            .get_object()
            .bucket(BUCKET)
            .key("direct.bin")
            .send()
            .await
            .unwrap();
        let mut body = out.body;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk.unwrap().len() as u64;
        }
        n
    })
    .await;
    assert_eq!(n, size);
    rows.push(Row {
        what: "GET",
        path: "direct",
        secs,
        gateway_cpu: None,
        rss_mib: None,
    });
    for key in ["known.bin", "chunked.bin"] {
        let cpu0 = gateway.cpu_secs();
        let (secs, n) = timed(async {
            let resp = http
                .get(format!("{url}/{key}"))
                .header("authorization", format!("Bearer {KEY}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut stream = resp.bytes_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                n += chunk.unwrap().len() as u64;
            }
            n
        })
        .await;
        assert_eq!(n, size, "{key}");
        rows.push(Row {
            what: "GET",
            path: "gateway",
            secs,
            gateway_cpu: Some(gateway.cpu_secs() - cpu0),
            rss_mib: Some(gateway.peak_rss_mib()),
        });
    }
    gateway.stop();

    let mib = size as f64 / (1024.0 * 1024.0);
    let mut table = format!(
        "Transfers of {gib:.2} GiB, gateway (separate process) vs direct to the same s3s-fs backend\n\n\
         | transfer | path | MiB/s | vs direct | gateway CPU s/GiB | gateway peak RSS MiB |\n|---|---|---|---|---|---|\n"
    );
    let direct_put = rows
        .iter()
        .find(|r| r.what.starts_with("PUT") && r.path == "direct")
        .unwrap()
        .secs;
    let direct_get = rows
        .iter()
        .find(|r| r.what == "GET" && r.path == "direct")
        .unwrap()
        .secs;
    for r in &rows {
        let base = if r.what == "GET" {
            direct_get
        } else {
            direct_put
        };
        table.push_str(&format!(
            "| {} | {} | {:.0} | {:.2}x | {} | {} |\n",
            r.what,
            r.path,
            mib / r.secs,
            base / r.secs,
            r.gateway_cpu
                .map_or("-".into(), |c| format!("{:.2}", c / gib)),
            r.rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
        ));
    }
    println!("\n{table}");
    std::fs::write(target.join("bench-transfer.md"), &table).unwrap();
}

/// PUTs `size` generated bytes through the gateway, with or without `Content-Length`.
async fn upload(http: &reqwest::Client, url: &str, block: &Bytes, size: u64, known_length: bool) {
    let mut request = http
        .put(url)
        .header("authorization", format!("Bearer {KEY}"));
    if known_length {
        request = request.header("content-length", size.to_string());
    }
    let resp = request
        .body(reqwest::Body::wrap_stream(stream_of(block, size)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

async fn timed<T>(f: impl Future<Output = T>) -> (f64, T) {
    let start = Instant::now();
    let out = f.await;
    (start.elapsed().as_secs_f64(), out)
}

fn stream_of(
    block: &Bytes,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static {
    let block = block.clone();
    let full = size / BLOCK as u64;
    let rest = (size % BLOCK as u64) as usize;
    let pieces = (0..full)
        .map(move |_| block.clone())
        .chain((rest > 0).then(|| Bytes::from(vec![7u8; rest])));
    futures_util::stream::iter(pieces.map(Ok))
}

fn body_of(
    block: &Bytes,
    size: u64,
) -> StreamBody<
    impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static,
> {
    StreamBody::new(stream_of(block, size).map(|r| r.map(Frame::data)))
}
