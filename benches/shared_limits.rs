//! What sharing the limits through Redis costs: the same GET of a 1 KiB object through two
//! gateways in one run, one with `[redis]` (a local `redis-server`, Debian's package) and one
//! without, alternating rounds. Per request: the gateway's CPU, Redis's CPU, and the latency
//! (p50, p99) the shared decision adds.
//!
//!     cargo bench --bench shared_limits
//!     PORTCULLIS_BENCH_SECS=5 PORTCULLIS_BENCH_ROUNDS=3 cargo bench --bench shared_limits
//!
//! Every round is bounded by time and by a request count. Writes a Markdown table to
//! `target/bench-shared-limits.md`.

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::load::{LoadOptions, Op, Summary};
use support::{Proc, S3Server, cpu_secs_of};

const KEY: &str = "bench-key-0123456789";
const BUCKET: &str = "bench";

fn main() {
    support::main(run);
}

/// Sums of one gateway's rounds.
#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    gateway_cpu: f64,
    redis_cpu: f64,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Tally {
    fn add(&mut self, s: &Summary, gateway_cpu: f64, redis_cpu: f64) {
        self.requests += s.requests;
        self.errors += s.errors;
        self.gateway_cpu += gateway_cpu;
        self.redis_cpu += redis_cpu;
        self.p50.push(s.latency_ms.p50);
        self.p99.push(s.latency_ms.p99);
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn us_per_request(cpu: f64, requests: u64) -> f64 {
        cpu * 1e6 / requests.max(1) as f64
    }
}

async fn run(round: Duration, rounds: usize) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let s3 = S3Server::start(&dir.path().join("data"), BUCKET);

    let redis_port = support::free_port();
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's package) is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let redis_pid = redis.id().to_string();

    // The same gateway twice: the principal's rate is high enough never to refuse, so both
    // do the same work but for the shared decision.
    let config = |name: &str, shared: bool| {
        let redis = if shared {
            "[redis]\nurl_env = \"PORTCULLIS_BENCH_REDIS\"\ntimeout = \"1s\"\n"
        } else {
            ""
        };
        support::gateway_config(dir.path(), name, &s3.endpoint, BUCKET, KEY, redis, "")
    };
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let env = [("PORTCULLIS_BENCH_REDIS", redis_url.as_str())];
    let (off_port, on_port) = (support::free_port(), support::free_port());
    let off = Proc::gateway(
        &config("off", false),
        off_port,
        &s3.access_key,
        &s3.secret_key,
        dir.path(),
    );
    let on = Proc::gateway_with_env(
        &config("on", true),
        on_port,
        &s3.access_key,
        &s3.secret_key,
        dir.path(),
        &env,
    );

    let opts = |port: u16, concurrency: usize, prepared: bool| LoadOptions {
        url: format!("http://127.0.0.1:{port}"),
        key: KEY.into(),
        op: Op::Get,
        size: 1024,
        concurrency,
        duration: round,
        requests: Some(2_000_000),
        prefix: format!("shared-bench/{port}/"),
        content_type: None,
        progress: false,
        presigned: None,
        prepared,
        ca_file: None,
        http2: false,
    };
    let mut lines = Vec::new();
    for concurrency in [1, 16] {
        // The objects, stored through each gateway before anything is measured.
        for port in [off_port, on_port] {
            let prepare = LoadOptions {
                duration: Duration::ZERO,
                requests: Some(0),
                ..opts(port, concurrency, false)
            };
            portcullis::load::run(prepare).await.unwrap();
        }
        let (mut without, mut with) = (Tally::default(), Tally::default());
        for _ in 0..rounds {
            for (proc, port, tally) in [(&off, off_port, &mut without), (&on, on_port, &mut with)] {
                let (cpu0, redis0) = (proc.cpu_secs(), cpu_secs_of(&redis_pid));
                let summary = portcullis::load::run(opts(port, concurrency, true))
                    .await
                    .unwrap();
                tally.add(
                    &summary,
                    proc.cpu_secs() - cpu0,
                    cpu_secs_of(&redis_pid) - redis0,
                );
            }
        }
        let row = |name: &str, t: &Tally| {
            format!(
                "| GET 1 KiB x{concurrency} | {name} | {} | {} | {:.1} | {:.1} | {:.3} | {:.3} |",
                t.requests,
                t.errors,
                Tally::us_per_request(t.gateway_cpu, t.requests),
                Tally::us_per_request(t.redis_cpu, t.requests),
                Tally::median(&t.p50),
                Tally::median(&t.p99),
            )
        };
        let added = format!(
            "| GET 1 KiB x{concurrency} | with - without | | | {:+.1} | | {:+.3} | {:+.3} |",
            Tally::us_per_request(with.gateway_cpu, with.requests)
                - Tally::us_per_request(without.gateway_cpu, without.requests),
            Tally::median(&with.p50) - Tally::median(&without.p50),
            Tally::median(&with.p99) - Tally::median(&without.p99),
        );
        for line in [
            row("without Redis", &without),
            row("with Redis", &with),
            added,
        ] {
            println!("{line}");
            lines.push(line);
        }
    }
    drop((off, on));
    let _ = redis.kill();
    let _ = redis.wait();

    let mut table = format!(
        "Shared limits: the same gateway with and without [redis], {rounds} alternating rounds of \
         {:?} per cell (median p50/p99 over rounds).\n\n\
         | cell | gateway | requests | errors | gateway CPU µs/req | Redis CPU µs/req | p50 ms | p99 ms |\n\
         |---|---|---|---|---|---|---|---|\n",
        round
    );
    for line in lines {
        table.push_str(&line);
        table.push('\n');
    }
    std::fs::write(target.join("bench-shared-limits.md"), &table).unwrap();
    println!("\n{table}");
}
