//! `portcullis load`: a load generator users can point at any deployment, over plain HTTP or
//! TLS (the platform's roots, or the CAs of `--ca-file`; sessions resumed), HTTP/1.1 or, with
//! `--http2`, HTTP/2 (by ALPN over TLS, by prior knowledge over plain HTTP).
//!
//! Workers loop over the chosen operation until the duration or the request count runs out,
//! each on its own keep-alive connection pool slot. Latencies go into an HDR histogram; a
//! progress line is printed every second; the summary is text or JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::Mutex;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Get,
    Put,
    /// Nine GETs to one PUT.
    Mixed,
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The gateway, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub key: String,
    pub op: Op,
    pub size: u64,
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many requests, if sooner.
    pub requests: Option<u64>,
    /// Keys used: `{prefix}{worker}`.
    pub prefix: String,
    /// `Content-Type` of the PUTs (none: the gateway takes the sniffed type).
    pub content_type: Option<String>,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
    /// Instead of the gateway's API: ready-made URLs per worker, `(GET, PUT)`, sent without
    /// an `Authorization` header (presigned S3 URLs, for a side-by-side comparison).
    pub presigned: Option<Arc<Vec<(String, String)>>>,
    /// The objects GETs read exist already: skip the PUT of each worker's object first.
    pub prepared: bool,
    /// PEM CA certificates to trust for an `https://` URL instead of the platform's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// HTTP/2 (every worker's requests as streams of shared connections) instead of HTTP/1.1.
    pub http2: bool,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub op: Op,
    pub size: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub megabytes_per_second: f64,
    /// Responses by status (`"200"`, `"429"`, ...) and transport failures (`"error"`).
    pub by_status: BTreeMap<String, u64>,
    pub errors: u64,
    pub latency_ms: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

struct Shared {
    finished: std::sync::atomic::AtomicBool,
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Each worker's latencies and statuses, merged at the end (no lock per request).
    histogram: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, u64>>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A keep-alive client for `http://` and `https://` URLs.
fn client(ca_file: Option<&std::path::Path>, http2: bool) -> anyhow::Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if http2 {
        connector.enable_http2().wrap_connector(http)
    } else {
        connector.enable_http1().wrap_connector(http)
    };
    // No cap on idle connections: hyper-util hands a connection back to its pool in a task
    // of its own, so a worker's next request can start before its last connection is back
    // and open another; with the cap at the concurrency, one of the two was then closed, and
    // about one request in 25 paid for a new connection on both sides.
    Ok(Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector))
}

/// Runs the load and returns its summary.
pub async fn run(opts: LoadOptions) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        opts.url.starts_with("http://") || opts.url.starts_with("https://"),
        "the URL must start with http:// or https://"
    );
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    let client = client(opts.ca_file.as_deref(), opts.http2)?;
    let body = Bytes::from(pseudo_random(opts.size as usize));
    let opts = Arc::new(opts);

    // GETs need something to fetch: each worker stores its object first.
    if opts.op != Op::Put && !opts.prepared {
        for w in 0..opts.concurrency {
            let status = send(&client, &opts, Method::PUT, w, body.clone()).await?.0;
            anyhow::ensure!(
                status.is_success(),
                "preparing {}{w} failed: {status}",
                opts.prefix
            );
        }
    }

    let shared = Arc::new(Shared {
        finished: std::sync::atomic::AtomicBool::new(false),
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        histogram: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        statuses: Mutex::new(BTreeMap::new()),
    });
    let started = Instant::now();
    let deadline = started + opts.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..opts.concurrency {
        let (client, opts, shared, issued, body) = (
            client.clone(),
            opts.clone(),
            shared.clone(),
            issued.clone(),
            body.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .expect("static bounds are valid");
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                if let Some(max) = opts.requests
                    && issued.fetch_add(1, Ordering::Relaxed) >= max
                {
                    break;
                }
                let method = match opts.op {
                    Op::Get => Method::GET,
                    Op::Put => Method::PUT,
                    Op::Mixed if n % 10 == 9 => Method::PUT,
                    Op::Mixed => Method::GET,
                };
                n += 1;
                let t = Instant::now();
                let outcome = send(&client, &opts, method, w, body.clone()).await;
                let micros = t.elapsed().as_micros() as u64;
                let label = match &outcome {
                    Ok((status, bytes)) => {
                        shared.bytes.fetch_add(*bytes, Ordering::Relaxed);
                        if !status.is_success() {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        status.as_u16().to_string()
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        "error".to_owned()
                    }
                };
                let _ = histogram.record(micros.max(1));
                *statuses.entry(label).or_default() += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = shared.histogram.lock().await.add(&histogram);
            let mut all = shared.statuses.lock().await;
            for (label, count) in statuses {
                *all.entry(label).or_default() += count;
            }
        }));
    }

    if opts.progress {
        let shared = shared.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if shared.finished.load(Ordering::Relaxed) {
                    break;
                }
                let done = shared.done.load(Ordering::Relaxed);
                let mb = shared.bytes.load(Ordering::Relaxed) as f64 / 1e6;
                let secs = started.elapsed().as_secs_f64();
                eprint!(
                    "\r{:>5.1}s  {:>9} requests  {:>8.0} req/s now  {:>8.1} MB/s  {} errors   ",
                    secs,
                    done,
                    (done - last) as f64,
                    mb / secs,
                    shared.errors.load(Ordering::Relaxed)
                );
                last = done;
                if secs >= opts.duration.as_secs_f64() {
                    break;
                }
            }
        });
    }
    for w in workers {
        w.await?;
    }
    shared.finished.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!();
    }
    let h = shared.histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let requests = shared.done.load(Ordering::Relaxed);
    Ok(Summary {
        op: opts.op,
        size: opts.size,
        concurrency: opts.concurrency,
        seconds,
        requests,
        requests_per_second: requests as f64 / seconds,
        megabytes_per_second: shared.bytes.load(Ordering::Relaxed) as f64 / 1e6 / seconds,
        by_status: shared.statuses.lock().await.clone(),
        errors: shared.errors.load(Ordering::Relaxed),
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        },
    })
}

/// One request; returns the status and the body bytes moved.
async fn send(
    client: &HttpClient,
    opts: &LoadOptions,
    method: Method,
    worker: usize,
    body: Bytes,
) -> anyhow::Result<(StatusCode, u64)> {
    let sent = if method == Method::PUT {
        body.len() as u64
    } else {
        0
    };
    let builder = match &opts.presigned {
        Some(urls) => {
            let (get, put) = &urls[worker % urls.len()];
            Request::builder()
                .method(method.clone())
                .uri(if method == Method::PUT { put } else { get })
        }
        None => Request::builder()
            .method(method)
            .uri(format!(
                "{}/v1/objects/{}{worker}",
                opts.url.trim_end_matches('/'),
                opts.prefix
            ))
            .header(http::header::AUTHORIZATION, format!("Bearer {}", opts.key)),
    };
    let builder = match &opts.content_type {
        Some(t) if sent > 0 => builder.header(http::header::CONTENT_TYPE, t),
        _ => builder,
    };
    let req = builder.body(if sent > 0 {
        Full::new(body)
    } else {
        Full::new(Bytes::new())
    })?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame?.data_ref().map_or(0, |d| d.len() as u64);
    }
    Ok((status, sent + received))
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// The prefix of the principal `key` belongs to, from the gateway's `GET /v1/me`: where a
/// run may write without being refused.
pub async fn own_prefix(
    url: &str,
    key: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let client = client(ca_file, false)?;
    let req = Request::get(format!("{}/v1/me", url.trim_end_matches('/')))
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer GET /v1/me within 10 s"))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "GET /v1/me answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let me: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(me["prefix"].as_str().unwrap_or_default().to_owned())
}

impl Summary {
    /// More than half of the requests failed (an error status or no answer): the figures
    /// measure refusals, not the work asked for.
    pub fn mostly_errors(&self) -> bool {
        self.errors * 2 > self.requests
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "{} of {} bytes, concurrency {}, {:.1} s\n  {} requests, {:.0} req/s, {:.1} MB/s, {} errors ({})\n  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            serde_json::to_value(self.op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            self.size,
            self.concurrency,
            self.seconds,
            self.requests,
            self.requests_per_second,
            self.megabytes_per_second,
            self.errors,
            statuses.join(", "),
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max,
        ) + &if self.mostly_errors() {
            format!(
                "  MOSTLY ERRORS: {} of {} requests failed ({}); these figures measure refusals\n",
                self.errors,
                self.requests,
                statuses.join(", ")
            )
        } else {
            String::new()
        }
    }
}
