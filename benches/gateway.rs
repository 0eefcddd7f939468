//! The gateway next to the direct path, in one run: GET and PUT of 1 KiB, 1 MiB and 64 MiB
//! objects at several concurrencies, directly against the S3 server with presigned (SigV4
//! query-signed) URLs — what a client would otherwise do — and through the gateway with a
//! bearer key. Both use the same client (`portcullis load`'s engine) on keep-alive
//! connections. Then 10,000 idle keep-alive connections held by the gateway.
//!
//! A third path gives the ceiling: the same presigned requests through a plain TCP forwarder
//! (two threads in this process, 64 KiB copies, no HTTP at all). Client, S3 server and relay
//! share the machine's cores, so on a small machine no user-space relay reaches the direct
//! path's throughput; the forwarder shows how close one can get.
//!
//!     cargo bench --bench gateway
//!     PORTCULLIS_BENCH_SECS=5 PORTCULLIS_BENCH_IDLE=10000 cargo bench --bench gateway
//!     PORTCULLIS_BENCH_WORKERS=1 cargo bench --bench gateway   # server.worker_threads
//!
//! The S3 server (s3s-fs, `portcullis s3-server`) and the gateway are separate processes;
//! the gateway's CPU time comes from /proc/PID/stat and its peak RSS from VmHWM, reset before
//! each cell. Every cell is bounded by time and by a request count. Writes a Markdown table
//! to `target/bench-gateway.md`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use portcullis::load::{LoadOptions, Op, Summary};
use support::{Forwarder, Proc, S3Server, cpu_secs_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "bench-key-0123456789";
const BUCKET: &str = "bench";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// (size, concurrencies) of the matrix.
const CELLS: [(u64, &[usize]); 3] = [
    (KIB, &[1, 4, 16, 64]),
    (MIB, &[1, 16, 64]),
    (64 * MIB, &[1, 4]),
];

/// A cell's name for `PORTCULLIS_BENCH_CELLS`, e.g. `put:1mib:64`.
fn cell_name(op: Op, size: u64, concurrency: usize) -> String {
    format!(
        "{}:{}:{concurrency}",
        op_name(op),
        human(size).replace(' ', "")
    )
    .to_ascii_lowercase()
}

fn cell_names() -> Vec<String> {
    let mut names = Vec::new();
    for op in [Op::Put, Op::Get] {
        for (size, concurrencies) in CELLS {
            for &concurrency in concurrencies {
                names.push(cell_name(op, size, concurrency));
            }
        }
    }
    names
}

struct Row {
    op: Op,
    size: u64,
    concurrency: usize,
    direct: Summary,
    forwarded: Summary,
    gateway: Summary,
    cpu_secs: f64,
    forwarder_cpu_secs: f64,
    /// CPU of everything on each path: client (this process) and S3 server, plus the
    /// gateway on the gateway path. The three share the machine's cores.
    direct_path_cpu_secs: f64,
    gateway_path_cpu_secs: f64,
    peak_rss_mib: f64,
    split: CpuSplit,
}

/// CPU seconds per GiB moved, by process, on the direct path and on the gateway's.
struct CpuSplit {
    direct_client: f64,
    direct_s3: f64,
    client: f64,
    s3: f64,
    gateway: f64,
}

fn main() {
    let secs: f64 = std::env::var("PORTCULLIS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let idle: usize = std::env::var("PORTCULLIS_BENCH_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // The gateway's `server.worker_threads` (default: one per CPU).
    let workers: Option<usize> = std::env::var("PORTCULLIS_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok());
    // Only some cells, e.g. `PORTCULLIS_BENCH_CELLS=put:1MiB:64,get:64MiB:4` (to profile one).
    let only: Option<Vec<String>> = std::env::var("PORTCULLIS_BENCH_CELLS").ok().map(|s| {
        let only: Vec<String> = s
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let cells = cell_names();
        for c in &only {
            assert!(
                cells.contains(c),
                "PORTCULLIS_BENCH_CELLS: no cell {c:?}; the cells are {}",
                cells.join(",")
            );
        }
        only
    });
    // 10,000 client sockets need the descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs_f64(secs), idle, workers, only));
}

async fn run(cell: Duration, idle: usize, workers: Option<usize>, only: Option<Vec<String>>) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();

    // The S3 server, in its own process.
    let s3 = S3Server::start(&dir.path().join("data"), BUCKET);
    let (endpoint, access, secret) = (&s3.endpoint, &s3.access_key, &s3.secret_key);

    // The gateway, in its own process; the principal is not rate limited in practice. Idle
    // connections are closed after `keep_alive_timeout`: 120 s here, so the 10,000 idle
    // connections are all still open when they are measured.
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[backend]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{endpoint}\"\n\
             force_path_style = true\naudit = \"off\"\n\n\
             [server]\nmax_concurrent_requests = 20000\nkeep_alive_timeout = \"120s\"\n{}\n\
             [rate_limit]\nmax_concurrent_per_principal = 20000\n\n\
             [log]\naccess_log = \"{}\"\n\n\
             [[principals]]\nname = \"bench\"\napi_keys = [\"{}\"]\nallow = [\"get\", \"put\"]\n\
             rate_limit = {{ requests_per_second = 1000000, burst = 1000000 }}\n",
            workers.map_or(String::new(), |n| format!("worker_threads = {n}\n")),
            dir.path().join("access.log").display(),
            portcullis::auth::hash_key(KEY)
        ),
    )
    .unwrap();
    let port = support::free_port();
    let mut gateway = Proc::gateway(&config, port, access, secret, dir.path());
    let url = format!("http://127.0.0.1:{port}");

    // The direct path's client: presigned URLs from aws-sdk-s3.
    let sdk = s3.client(BUCKET).await;
    // The ceiling's path: presigned URLs for the forwarder's address (the signature covers
    // the Host header, which the forwarder passes through unchanged).
    let s3_addr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let forwarder = Forwarder::start(s3_addr);
    let forwarded_sdk = s3
        .client_at(&format!("http://127.0.0.1:{}", forwarder.port), BUCKET)
        .await;
    let presign = PresigningConfig::expires_in(Duration::from_secs(3600)).unwrap();

    println!(
        "gateway pid {}, s3 server pid {}; {:.1} s per cell",
        gateway.pid(),
        s3.proc.pid(),
        cell.as_secs_f64()
    );
    let mut rows = Vec::new();
    for op in [Op::Put, Op::Get] {
        for (size, concurrencies) in CELLS {
            for &concurrency in concurrencies {
                if only
                    .as_ref()
                    .is_some_and(|o| !o.contains(&cell_name(op, size, concurrency)))
                {
                    continue;
                }
                let prefix = format!("bench/{size}/");
                let (mut urls, mut forwarded_urls) = (Vec::new(), Vec::new());
                for w in 0..concurrency {
                    let key = format!("{prefix}{w}");
                    for (client, urls) in [(&sdk, &mut urls), (&forwarded_sdk, &mut forwarded_urls)]
                    {
                        let get = client
                            .get_object()
                            .bucket(BUCKET)
                            .key(&key)
                            .presigned(presign.clone())
                            .await
                            .unwrap();
                        let put = client
                            .put_object()
                            .bucket(BUCKET)
                            .key(&key)
                            .presigned(presign.clone())
                            .await
                            .unwrap();
                        urls.push((get.uri().to_owned(), put.uri().to_owned()));
                    }
                }
                // Large objects: fewer requests, same time bound.
                let cap = (4 * 1024 * MIB / size).clamp(32, 200_000);
                let opts =
                    |presigned: Option<Arc<Vec<(String, String)>>>, prepared: bool| LoadOptions {
                        url: url.clone(),
                        key: KEY.into(),
                        op,
                        size,
                        concurrency,
                        duration: cell,
                        requests: Some(cap),
                        prefix: prefix.clone(),
                        content_type: None,
                        progress: false,
                        presigned,
                        prepared,
                        ca_file: None,
                        http2: false,
                    };
                // GETs need the objects: stored directly, before anything is measured (no
                // request is timed: a run of zero requests only prepares).
                let urls = Arc::new(urls);
                if op == Op::Get {
                    let prepare = LoadOptions {
                        duration: Duration::ZERO,
                        requests: Some(0),
                        ..opts(Some(urls.clone()), false)
                    };
                    portcullis::load::run(prepare).await.unwrap();
                }
                // The client's CPU is this process's, less the forwarder's threads.
                let client = || cpu_secs_of("self") - forwarder.cpu_secs();
                let others = || client() + s3.proc.cpu_secs();
                let (before, client0) = (others(), client());
                let direct = portcullis::load::run(opts(Some(urls), true)).await.unwrap();
                let direct_path_cpu_secs = others() - before;
                let direct_client_cpu_secs = client() - client0;
                let cpu0 = forwarder.cpu_secs();
                let forwarded = portcullis::load::run(opts(Some(Arc::new(forwarded_urls)), true))
                    .await
                    .unwrap();
                let forwarder_cpu_secs = forwarder.cpu_secs() - cpu0;
                gateway.reset_peak();
                let (cpu0, before, client0) = (gateway.cpu_secs(), others(), client());
                let via = portcullis::load::run(opts(None, true)).await.unwrap();
                let cpu_secs = gateway.cpu_secs() - cpu0;
                let gateway_path_cpu_secs = others() - before + cpu_secs;
                let gateway_client_cpu_secs = client() - client0;
                let gib = |s: &Summary| s.requests as f64 * size as f64 / (1024.0 * MIB as f64);
                let (d, g) = (gib(&direct), gib(&via));
                let split = CpuSplit {
                    direct_client: direct_client_cpu_secs / d,
                    direct_s3: (direct_path_cpu_secs - direct_client_cpu_secs) / d,
                    client: gateway_client_cpu_secs / g,
                    s3: (gateway_path_cpu_secs - cpu_secs - gateway_client_cpu_secs) / g,
                    gateway: cpu_secs / g,
                };
                let row = Row {
                    op,
                    size,
                    concurrency,
                    direct,
                    forwarded,
                    gateway: via,
                    cpu_secs,
                    forwarder_cpu_secs,
                    direct_path_cpu_secs,
                    gateway_path_cpu_secs,
                    peak_rss_mib: gateway.peak_rss_mib(),
                    split,
                };
                println!("{}", row.line());
                if size >= MIB {
                    println!("{}", row.split_line());
                }
                rows.push(row);
            }
        }
    }

    let idle_line = idle_connections(port, idle, &gateway).await;
    println!("{idle_line}");
    gateway.stop();

    let mut table = String::from(
        "Gateway vs direct (presigned SigV4 URLs) to the same s3s-fs server, same client, same run.\n\
         Ratio = gateway throughput / direct throughput. CPU and RSS are the gateway process's; \
         path CPU s/GiB adds up client, S3 server (and gateway) on each path.\n\n\
         Forwarder = a plain TCP forwarder on the direct path (the ceiling for any relay here).\n\n\
         | op | size | conc | direct req/s | gateway req/s | ratio | forwarder ratio | gateway MiB/s | gateway CPU µs/req | gateway CPU s/GiB | forwarder CPU s/GiB | path CPU s/GiB direct / via gateway | gateway peak RSS MiB | errors (direct/forwarder/gateway) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&r.line());
        table.push('\n');
    }
    table.push_str(
        "\nWhere the CPU goes, in CPU seconds per GiB moved. When client, S3 server and gateway \
         together keep the machine's cores busy, throughput is set by the CPU each byte costs, \
         and the ratio can reach at most the ceiling: direct path CPU / gateway path CPU.\n\n\
         | op | size | conc | direct: client | direct: S3 server | via gateway: client | via gateway: S3 server | via gateway: gateway | CPU-bound ceiling | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.size >= MIB) {
        table.push_str(&r.split_line());
        table.push('\n');
    }
    table.push_str(
        "\nLatency the gateway adds to small objects: its client-side latency minus the direct \
         path's, same client, same run (ms).\n\n\
         | op | size | conc | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 | added p99 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.size < MIB) {
        table.push_str(&r.latency_line());
        table.push('\n');
    }
    table.push('\n');
    table.push_str(&idle_line);
    table.push('\n');
    println!("\n{table}");
    std::fs::write(target.join("bench-gateway.md"), &table).unwrap();
}

impl Row {
    /// p50 and p99 of the client's latency, direct and through the gateway.
    fn latency_line(&self) -> String {
        let (d, g) = (&self.direct.latency_ms, &self.gateway.latency_ms);
        format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            op_name(self.op),
            human(self.size),
            self.concurrency,
            d.p50,
            g.p50,
            g.p50 - d.p50,
            d.p99,
            g.p99,
            g.p99 - d.p99
        )
    }

    fn line(&self) -> String {
        let gib = self.gateway.requests as f64 * self.size as f64 / (1024.0 * MIB as f64);
        let direct_gib = self.direct.requests as f64 * self.size as f64 / (1024.0 * MIB as f64);
        format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.1} | {:.0} | {} | {} | {} | {:.1} | {}/{}/{} |",
            op_name(self.op),
            human(self.size),
            self.concurrency,
            self.direct.requests_per_second,
            self.gateway.requests_per_second,
            self.gateway.requests_per_second / self.direct.requests_per_second,
            self.forwarded.requests_per_second / self.direct.requests_per_second,
            self.gateway.megabytes_per_second * 1e6 / MIB as f64,
            self.cpu_secs * 1e6 / self.gateway.requests.max(1) as f64,
            if self.size >= MIB {
                format!("{:.2}", self.cpu_secs / gib)
            } else {
                "-".into()
            },
            if self.size >= MIB {
                let forwarded_gib =
                    self.forwarded.requests as f64 * self.size as f64 / (1024.0 * MIB as f64);
                format!("{:.2}", self.forwarder_cpu_secs / forwarded_gib)
            } else {
                "-".into()
            },
            if self.size >= MIB {
                format!(
                    "{:.2} / {:.2}",
                    self.direct_path_cpu_secs / direct_gib,
                    self.gateway_path_cpu_secs / gib
                )
            } else {
                "-".into()
            },
            self.peak_rss_mib,
            self.direct.errors,
            self.forwarded.errors,
            self.gateway.errors,
        )
    }
}

impl Row {
    fn split_line(&self) -> String {
        let c = &self.split;
        format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
            op_name(self.op),
            human(self.size),
            self.concurrency,
            c.direct_client,
            c.direct_s3,
            c.client,
            c.s3,
            c.gateway,
            (c.direct_client + c.direct_s3) / (c.client + c.s3 + c.gateway),
            self.gateway.requests_per_second / self.direct.requests_per_second,
        )
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Get => "GET",
        Op::Put => "PUT",
        Op::Mixed => "mixed",
    }
}

fn human(size: u64) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

/// Opens `n` connections, then makes one request on each (256 at a time) and leaves them
/// idle (keep-alive); returns the gateway's resident set with them open, and how many were
/// still open when measured.
async fn idle_connections(port: u16, n: usize, gateway: &Proc) -> String {
    let before = gateway.rss_mib();
    // `GET /v1/me`: a complete authenticated request that needs no S3 call.
    let request =
        format!("GET /v1/me HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let started = Instant::now();
    let mut open = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut why = std::collections::BTreeMap::new();
    // Each connection sends its request as soon as it is open (a silent new connection is
    // closed after `header_read_timeout`, and connecting 10,000 sockets can take longer than
    // that on a machine with many ports in TIME_WAIT from the cells before).
    while open.len() + failed < n {
        let batch = (n - open.len() - failed).min(256);
        let results = futures_util::future::join_all((0..batch).map(|_| {
            let request = request.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                s.write_all(request.as_bytes()).await?;
                // Read the whole response (a small JSON body ending in `}`).
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let k = s.read(&mut buf).await?;
                    if k == 0 {
                        return Err(std::io::Error::other("closed"));
                    }
                    got.extend_from_slice(&buf[..k]);
                    if !got.starts_with(b"HTTP/1.1 200") && got.len() >= 12 {
                        return Err(std::io::Error::other("not 200"));
                    }
                    if got.ends_with(b"}") {
                        return Ok::<_, std::io::Error>(s);
                    }
                }
            }
        }))
        .await;
        for r in results {
            match r {
                Ok(s) => open.push(s),
                Err(e) => {
                    failed += 1;
                    *why.entry(e.to_string()).or_insert(0usize) += 1;
                }
            }
        }
    }
    let opening = started.elapsed();
    // Once, 1 s after the last answer; then settled: idle connections are parked after
    // 0.5 s, and the allocator hands freed memory back within 2 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let soon = gateway.rss_mib();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let with = gateway.rss_mib();
    // Still open? A closed one reads end-of-stream at once; an open idle one would block.
    let still_open = open
        .iter()
        .filter(|s| {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let line = format!(
        "Idle keep-alive connections: {} opened and answered a request ({} failed) in {:.1} s; \
         {} still open when measured. Gateway RSS {:.1} MiB before, {:.1} MiB 1 s after the \
         last request, {:.1} MiB 5 s after ({:.1} KiB per connection)",
        open.len(),
        failed,
        opening.as_secs_f64(),
        still_open,
        before,
        soon,
        with,
        (with - before) * 1024.0 / open.len().max(1) as f64
    );
    drop(open);
    if why.is_empty() {
        line
    } else {
        format!("{line}; failed requests: {why:?}")
    }
}
