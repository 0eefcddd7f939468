//! What TLS on the client side costs: the same gateway twice in one run, one listening with
//! `server.tls` (rustls, aws-lc-rs, sessions resumed by the client; HTTP/1.1 keep-alive and
//! h2) and one on plain HTTP (HTTP/1.1 and h2 with prior knowledge), alternating rounds. Per
//! cell: the gateway's CPU per request and per GiB, what h2 adds, and what TLS adds.
//!
//!     cargo bench --bench tls
//!     PORTCULLIS_BENCH_SECS=5 PORTCULLIS_BENCH_ROUNDS=3 cargo bench --bench tls
//!
//! Every round is bounded by time and by a request count. Writes a Markdown table to
//! `target/bench-tls.md`.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use portcullis::load::{LoadOptions, Op, Summary};
use support::{Proc, S3Server};

const KEY: &str = "bench-key-0123456789";
const BUCKET: &str = "bench";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// (operation, size, concurrency).
const CELLS: [(Op, u64, usize); 3] = [
    (Op::Get, KIB, 16),
    (Op::Get, 16 * MIB, 4),
    (Op::Put, 16 * MIB, 4),
];

fn main() {
    support::main(run);
}

/// A CA and a certificate for `localhost` signed by it, as PEM files in `dir`:
/// `(ca, cert, key)`.
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis Bench CA");
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[derive(Default)]
struct Tally {
    requests: u64,
    cpu: f64,
    p50: Vec<f64>,
}

impl Tally {
    fn add(&mut self, s: &Summary, cpu: f64) {
        self.requests += s.requests;
        self.cpu += cpu;
        self.p50.push(s.latency_ms.p50);
    }

    fn us_per_request(&self) -> f64 {
        self.cpu * 1e6 / self.requests.max(1) as f64
    }

    fn secs_per_gib(&self, size: u64) -> f64 {
        self.cpu / (self.requests.max(1) as f64 * size as f64 / (1024.0 * MIB as f64))
    }

    fn median_p50(&self) -> f64 {
        let mut v = self.p50.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

async fn run(round: Duration, rounds: usize) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let s3 = S3Server::start(&dir.path().join("data"), BUCKET);
    let (ca, cert, key) = certificates(dir.path());
    let config = |name: &str, tls: bool| {
        let server = if tls {
            format!(
                "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        support::gateway_config(dir.path(), name, &s3.endpoint, BUCKET, KEY, &server, "")
    };
    let (plain_port, tls_port) = (support::free_port(), support::free_port());
    let plain = Proc::gateway(
        &config("plain", false),
        plain_port,
        &s3.access_key,
        &s3.secret_key,
        dir.path(),
    );
    let tls = Proc::gateway(
        &config("tls", true),
        tls_port,
        &s3.access_key,
        &s3.secret_key,
        dir.path(),
    );
    let plain_url = format!("http://127.0.0.1:{plain_port}");
    let tls_url = format!("https://localhost:{tls_port}");
    // (name, URL, gateway, h2, the side its difference is taken against): TLS over h2 is
    // set against h2 in the clear (prior knowledge), so h2's framing is not counted as TLS's.
    let sides = [
        ("plain HTTP/1.1", &plain_url, &plain, false, 0),
        ("plain h2c", &plain_url, &plain, true, 0),
        ("TLS HTTP/1.1", &tls_url, &tls, false, 0),
        ("TLS h2", &tls_url, &tls, true, 1),
    ];

    let mut lines = Vec::new();
    for (op, size, concurrency) in CELLS {
        let opts = |url: &str, prepared: bool, http2: bool| LoadOptions {
            url: url.to_owned(),
            key: KEY.into(),
            op,
            size,
            concurrency,
            duration: round,
            requests: Some((64 * 1024 * MIB / size).clamp(64, 2_000_000)),
            prefix: format!("tls-bench/{size}/"),
            content_type: None,
            progress: false,
            presigned: None,
            prepared,
            ca_file: Some(ca.clone()),
            http2,
        };
        if op == Op::Get {
            // The objects, stored once before anything is measured (both gateways share the
            // bucket).
            let prepare = LoadOptions {
                duration: Duration::ZERO,
                requests: Some(0),
                ..opts(sides[0].1, false, false)
            };
            portcullis::load::run(prepare).await.unwrap();
        }
        let mut tallies: [Tally; 4] = Default::default();
        for _ in 0..rounds {
            for (i, (_, url, proc, http2, _)) in sides.iter().enumerate() {
                let cpu0 = proc.cpu_secs();
                let summary = portcullis::load::run(opts(url, true, *http2))
                    .await
                    .unwrap();
                assert_eq!(summary.errors, 0, "{summary:?}");
                tallies[i].add(&summary, proc.cpu_secs() - cpu0);
            }
        }
        let name = format!(
            "{} {} x{concurrency}",
            if op == Op::Get { "GET" } else { "PUT" },
            if size >= MIB {
                format!("{} MiB", size / MIB)
            } else {
                format!("{} KiB", size / KIB)
            }
        );
        let first = lines.len();
        for (i, (side, _, _, _, _)) in sides.iter().enumerate() {
            let t = &tallies[i];
            lines.push(format!(
                "| {name} | {side} | {} | {:.1} | {:.3} | {:.3} |",
                t.requests,
                t.us_per_request(),
                t.secs_per_gib(size),
                t.median_p50()
            ));
        }
        for (i, (side, _, _, _, base)) in sides.iter().enumerate().skip(1) {
            let (t, b) = (&tallies[i], &tallies[*base]);
            lines.push(format!(
                "| {name} | {side} - {} | | {:+.1} | {:+.3} | {:+.3} |",
                sides[*base].0,
                t.us_per_request() - b.us_per_request(),
                t.secs_per_gib(size) - b.secs_per_gib(size),
                t.median_p50() - b.median_p50()
            ));
        }
        for line in &lines[first..] {
            println!("{line}");
        }
    }
    drop((plain, tls));

    let mut table = format!(
        "TLS on the client side: the same gateway with and without server.tls, {rounds} \
         alternating rounds of {round:?} per cell (median p50 over rounds).\n\n\
         | cell | listener | requests | gateway CPU µs/req | gateway CPU s/GiB | p50 ms |\n\
         |---|---|---|---|---|---|\n"
    );
    for line in lines {
        table.push_str(&line);
        table.push('\n');
    }
    std::fs::write(target.join("bench-tls.md"), &table).unwrap();
    println!("\n{table}");
}
