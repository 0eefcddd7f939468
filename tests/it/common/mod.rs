//! Test helper: a real gateway on 127.0.0.1:0 in front of a real embedded S3 server
//! (s3s-fs in a temp dir), built from a config snippet in one line.

#![allow(dead_code, unreachable_pub)]

mod door;
mod faults;
mod redis;
pub mod sigv4;
pub use door::*;
pub use faults::*;
pub use redis::*;
pub use sigv4::*;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use portcullis::auth::hash_key;
use portcullis::obs::AccessLog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BUCKET: &str = "test-bucket";

/// The keys of the principals every test gateway has.
pub const ADMIN: &str = "admin-key-0123456789";
pub const ALICE: &str = "alice-key-0123456789";
pub const READER: &str = "reader-key-0123456789";

pub struct TestGateway {
    pub url: String,
    /// The running gateway, for in-process reloads.
    pub gateway: Arc<portcullis::Portcullis>,
    /// The config it started with.
    pub config: portcullis::config::Config,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    /// Straight to the bucket, to look at what the gateway left there.
    pub s3: aws_sdk_s3::Client,
    pub access_log: PathBuf,
    /// The gateway's own handle on its first bucket.
    pub backend: portcullis::relay::Backend,
    /// ... and on all of them.
    pub buckets: portcullis::relay::Buckets,
    /// The embedded S3 server's address and credentials.
    pub s3_addr: std::net::SocketAddr,
    pub s3_credentials: (String, String),
    /// The S3 door (`http(s)://127.0.0.1:<port>`), when the config has `[s3_api]`.
    pub door_url: Option<String>,
    pub dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _backend: portcullis::BackendHandle,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// A gateway with three principals (admin: everything; alice: everything under
/// `users/alice/`, at most 6 MiB; reader: get and list under `users/alice/`) plus `extra` TOML.
pub async fn gateway(extra: &str) -> TestGateway {
    gateway_with(extra, Relay::Direct).await
}

/// How the gateway under test reaches S3.
pub enum Relay {
    /// Straight to the embedded server.
    Direct,
    /// To another endpoint (which may be down or silent).
    Endpoint(String),
    /// Through a proxy to the embedded server that cuts any connection after this many
    /// bytes towards S3.
    CutAfter(usize),
    /// Through [`small_frames_proxy`], pausing after every this many bytes.
    SmallFrames(usize),
}

/// Like [`gateway`], but the relay may reach S3 another way; the embedded server still runs,
/// so the test can look into the bucket.
pub async fn gateway_with(extra: &str, relay: Relay) -> TestGateway {
    gateway_tweaked(extra, relay, |_| {}).await
}

/// Link secrets of the test gateways with links (`[links]` with secrets given directly, as
/// `serve --dev` does, since tests cannot set environment variables).
pub const LINK_SECRET: &str = "test-link-secret-0123456789-abcdefghij";

/// A gateway with signed links on (secret [`LINK_SECRET`], default 60 s, max 15 min).
pub async fn gateway_with_links(extra: &str) -> TestGateway {
    gateway_tweaked(extra, Relay::Direct, |c| {
        c.links = Some(links_config(&[LINK_SECRET]))
    })
    .await
}

/// `[links]` with these secrets (the first signs).
pub fn links_config(secrets: &[&str]) -> portcullis::config::LinksConfig {
    portcullis::config::LinksConfig {
        secrets_env: Vec::new(),
        default_ttl: portcullis::config::units::Span::secs(60),
        max_ttl: portcullis::config::units::Span::secs(900),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
    }
}

/// Like [`gateway_with`], with the parsed config changed by `tweak` before it starts.
pub async fn gateway_tweaked(
    extra: &str,
    relay: Relay,
    tweak: impl FnOnce(&mut portcullis::config::Config),
) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let toml = format!(
        r#"
[backend]
kind = "embedded"
bucket = "{BUCKET}"
root = "{root}"
part_size = "5MiB"

[log]
access_log = "{log}"

[[principals]]
name = "admin"
api_keys = ["{admin}"]
allow = ["get", "put", "delete", "list", "link"]

[[principals]]
name = "alice"
api_keys = ["{alice}"]
allow = ["get", "put", "delete", "list"]
prefix = "users/alice/"
max_object_size = "6MiB"

[[principals]]
name = "reader"
api_keys = ["{reader}"]
allow = ["get", "list"]
prefix = "users/alice/"

"#,
        root = dir.path().join("data").display(),
        log = access_log.display(),
        admin = hash_key(ADMIN),
        alice = hash_key(ALICE),
        reader = hash_key(READER),
    );
    let toml = merge_toml(&toml, extra);
    portcullis::obs::metrics::install();
    let mut config = portcullis::config::parse(&toml, None)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    tweak(&mut config);
    let backend = portcullis::start_backend(&config).await.unwrap();
    for bucket in backend.buckets.iter() {
        bucket.ping().await.unwrap();
    }
    let s3 = backend.buckets.first().client().clone();
    let embedded = backend
        .embedded
        .as_ref()
        .expect("the test gateway runs the embedded server");
    let s3_addr = embedded.addr;
    let s3_credentials = (embedded.access_key.clone(), embedded.secret_key.clone());
    let endpoint = match relay {
        Relay::Direct => None,
        Relay::Endpoint(e) => Some(e),
        Relay::CutAfter(n) => Some(cutting_proxy(s3_addr, n).await),
        Relay::SmallFrames(n) => Some(small_frames_proxy(s3_addr, n).await),
    };
    let relay = match endpoint {
        None => backend.buckets.clone(),
        Some(endpoint) => {
            let settings = portcullis::relay::BackendSettings {
                endpoint: Some(endpoint),
                credentials: backend
                    .embedded
                    .as_ref()
                    .map(|e| (e.access_key.clone(), e.secret_key.clone())),
            };
            portcullis::relay::connect(&config, settings).await
        }
    };
    let lasting = portcullis::Lasting::start(&config).await.unwrap();
    let gateway = portcullis::Portcullis::new(&config, relay.clone(), lasting).unwrap();
    let log = Arc::new(
        AccessLog::open(&config.log.access_log, config.log.access_log_flush.get()).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = portcullis::server_options(&config);
    let mut door_url = None;
    if let Some(door) = &config.s3_api {
        let listener = TcpListener::bind(door.listen).await.unwrap();
        let scheme = if door.tls.is_some() { "https" } else { "http" };
        door_url = Some(format!("{scheme}://{}", listener.local_addr().unwrap()));
        let mut stopped = stopped.clone();
        tokio::spawn(portcullis::run_door(
            listener,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            gateway.clone(),
            log.clone(),
            opts.clone(),
        ));
    }
    let mut stopped_too = stopped;
    tokio::spawn(portcullis::run(
        listener,
        async move {
            let _ = stopped_too.wait_for(|s| *s).await;
        },
        gateway.clone(),
        log,
        opts,
    ));
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    TestGateway {
        url: format!("{scheme}://{addr}"),
        gateway,
        config,
        addr,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        s3,
        access_log,
        backend: relay.first().clone(),
        buckets: relay,
        s3_addr,
        s3_credentials,
        door_url,
        dir: dir.path().to_owned(),
        _dir: dir,
        _backend: backend,
        _stop: stop,
    }
}

impl TestGateway {
    /// `/v1/objects/<encoded key>`.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/v1/objects/{}", self.url, encode(key))
    }

    /// A request to an object route with a bearer key.
    pub fn call(&self, method: reqwest::Method, key: &str, auth: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.object_url(key))
            .header("authorization", bearer(auth))
    }

    /// GETs an object through the gateway and returns its bytes (whatever the status).
    pub async fn fetch(&self, key: &str, auth: &str) -> Vec<u8> {
        self.call(reqwest::Method::GET, key, auth)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// The keys in the bucket, read straight from S3.
    pub async fn bucket_keys(&self) -> Vec<String> {
        self.keys_in(BUCKET).await
    }

    /// The keys in the S3 bucket `bucket`, read straight from S3.
    pub async fn keys_in(&self, bucket: &str) -> Vec<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// Unfinished multipart uploads, read straight from S3.
    pub async fn pending_uploads(&self) -> Vec<String> {
        self.pending_in(BUCKET).await
    }

    /// Unfinished multipart uploads in the S3 bucket `bucket`.
    pub async fn pending_in(&self, bucket: &str) -> Vec<String> {
        let out = self
            .s3
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect()
    }

    /// The object's bytes, read straight from S3.
    pub async fn bucket_object(&self, key: &str) -> Option<Vec<u8>> {
        self.object_in(BUCKET, key).await
    }

    /// The object's bytes in the S3 bucket `bucket`.
    pub async fn object_in(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(out.body.collect().await.unwrap().into_bytes().to_vec())
    }

    /// Waits (bounded) until the bucket has no unfinished upload; returns what is left.
    pub async fn settle_uploads(&self) -> Vec<String> {
        for _ in 0..100 {
            let left = self.pending_uploads().await;
            if left.is_empty() {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.pending_uploads().await
    }

    /// Sends raw bytes on a fresh connection and returns everything read until the server
    /// closes or `wait` passes.
    pub async fn raw(&self, request: &[u8], wait: Duration) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Issues a signed link as `auth` (`POST /v1/links`); returns the absolute URL.
    pub async fn link(&self, auth: &str, body: serde_json::Value) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/links", self.url))
            .header("authorization", bearer(auth))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::CREATED,
            "issuing {body}"
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        format!("{}{}", self.url, v["url"].as_str().unwrap())
    }

    pub fn access_log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Percent-encodes a key as a careful client would: everything but unreserved and `/`.
pub fn encode(key: &str) -> String {
    portcullis::policy::percent_encode_key(key)
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// The first bytes of real files, for sniffing.
pub const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
pub const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
pub const HTML: &[u8] = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>";
/// A 64-byte x86-64 ELF header.
pub const ELF: &[u8] = b"\x7FELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0\x40\x10\x40\0\0\0\0\0\x40\0\0\0\0\0\0\0\x00\x20\0\0\0\0\0\0\0\0\0\0\x40\0\x38\0\x01\0\x40\0\x03\0\x02\0";

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A body sent with `Transfer-Encoding: chunked`, in pieces of `chunk` bytes.
pub fn chunked_body(bytes: Vec<u8>, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(chunk)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

/// A TCP proxy to `target` that cuts any connection after it has carried `cut_after` bytes
/// towards the target: a backend failing in the middle of an upload. New connections work.
pub async fn cutting_proxy(target: std::net::SocketAddr, cut_after: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if sent + n > cut_after {
                            return; // cut: both halves are dropped below
                        }
                        sent += n;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A TCP server that accepts connections and never answers: a backend that hangs.
pub async fn silent_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}")
}

/// `extra` laid over `base`: tables merge key by key, arrays of tables are appended.
fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (Some(toml::Value::Array(a)), toml::Value::Array(b)) => a.extend(b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra.parse().unwrap_or_else(|e| panic!("test config: {e}"));
    // With `[[buckets]]`, the one bucket of `[backend]` goes.
    if extra.contains_key("buckets")
        && let Some(toml::Value::Table(backend)) = table.get_mut("backend")
    {
        backend.remove("bucket");
        backend.remove("part_size");
    }
    merge(&mut table, extra);
    table.to_string()
}

/// A TCP proxy to `target` that can be switched off (refusing and cutting every connection)
/// and on again: a backend that goes away and comes back.
pub async fn switchable_proxy(
    target: std::net::SocketAddr,
) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (on, watch) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut watch = watch.clone();
            if !*watch.borrow() {
                continue; // dropped: refused
            }
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = watch.wait_for(|on| !*on) => {}
                }
            });
        }
    });
    (format!("http://{addr}"), on)
}

/// An address that refuses connections for as long as the returned socket lives: bound (so no
/// other test can take the port) but never listening. Dropping a freshly bound listener
/// instead leaves a port another test's server may take in the meantime.
pub fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Waits (up to 10 s) until `check` holds: for effects that land just after a response, such
/// as an access-log line or a released permit. Panics with `what` if it never does.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `portcullis serve --config FILE` as a child process (the config's listeners on port 0),
/// with the address it serves on read from its log, and its stderr kept line by line. Killed
/// when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServeProcess {
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == "portcullis is serving")
                    .then(|| v["fields"]["listen"].as_str().map(str::to_owned))?
            });
            if let Some(addr) = found {
                break format!("http://{addr}");
            }
            assert!(
                Instant::now() < deadline,
                "no start: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            url,
            stderr: lines,
        }
    }

    /// How many lines of its stderr contain `needle`.
    pub fn logged(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portcullis serve --dev` as a child process, with its URLs and key read from the banner.
pub struct DevGateway {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub key: String,
    /// The S3 door, its access key id and secret, and the `aws` line the banner prints.
    pub door: String,
    pub access_key_id: String,
    pub secret: String,
    pub aws_line: String,
    pub dir: tempfile::TempDir,
    /// What it wrote to stderr up to the end of its banner.
    pub banner: Vec<String>,
    /// What it writes to stderr after its banner, line by line.
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl DevGateway {
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Like [`DevGateway::start`], with these environment variables set.
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .envs(env.iter().copied())
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(dir.path().join("data"))
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut admin, mut key) = (None, None, None);
        let (mut door, mut id, mut secret, mut aws_line) = (None, None, None, None);
        let mut previous = String::new();
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while aws_line.is_none() && Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
                continue;
            };
            let after = |marker: &str| {
                line.split(marker)
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            };
            url = url.or(after("gateway on "));
            admin = admin.or(after("metrics): "));
            key = key.or(after("API key (shown once): "));
            door = door.or(after("S3 door on "));
            id = id.or(after("Access key id: "));
            secret = secret.or(after("Secret (shown once): "));
            if line.contains("aws --endpoint-url") {
                // The two lines as a shell reads them: a `\` continues the first.
                aws_line = Some(format!(
                    "{} {}",
                    previous
                        .trim()
                        .trim_start_matches("Try:")
                        .trim_end_matches('\\'),
                    line.trim()
                ));
            }
            banner.push(line.clone());
            previous = line;
        }
        Self {
            child,
            url: url.unwrap(),
            admin: admin.unwrap(),
            key: key.unwrap(),
            door: door.unwrap(),
            access_key_id: id.unwrap(),
            secret: secret.unwrap(),
            aws_line: aws_line.unwrap(),
            banner,
            dir,
            stderr: rx,
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for DevGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a download with a small receive window and reads only its first bytes.
pub async fn slow_download(url: &str, key: &str, object: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/objects/{object} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 16 * 1024];
    let n = s.read(&mut first).await.unwrap();
    first.truncate(n);
    (s, first)
}

impl DevGateway {
    /// What the gateway wrote to stdout: the access log.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }
}

/// Sends a request and returns its status.
pub async fn status_of(request: reqwest::RequestBuilder) -> reqwest::StatusCode {
    request.send().await.unwrap().status()
}

/// A test PKI: a CA, a server certificate for 127.0.0.1 and localhost, and client
/// certificates, written as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_file: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis Test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = rcgen::Issuer::new(params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "localhost");
        let server_cert = sp.signed_by(&server_key, &ca).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca_pem: ca_cert.pem(),
            ca_file: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            dir,
            ca,
        }
    }

    /// `[server] tls = {...}` for this PKI, with `client_ca` when `mtls`.
    pub fn toml(&self, mtls: Option<&str>) -> String {
        let mut t = format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\"",
            self.server_cert.display(),
            self.server_key.display()
        );
        if let Some(client_auth) = mtls {
            t.push_str(&format!(
                ", client_ca = \"{}\", client_auth = \"{client_auth}\"",
                self.ca_file.display()
            ));
        }
        t.push_str(" }\n");
        t
    }

    /// A client certificate and key (PEM, concatenated) with subject `CN=<cn>,O=Example`,
    /// signed by this CA.
    pub fn client_pem(&self, cn: &str) -> String {
        Self::client_pem_from(&self.ca, cn)
    }

    fn client_pem_from(ca: &rcgen::Issuer<'_, rcgen::KeyPair>, cn: &str) -> String {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        dn.push(rcgen::DnType::OrganizationName, "Example");
        Self::client_pem_signed(ca, dn, Vec::new())
    }

    /// A client certificate and key (PEM) with this subject and these SANs, signed by this CA.
    pub fn client_pem_with(
        &self,
        dn: rcgen::DistinguishedName,
        sans: Vec<rcgen::SanType>,
    ) -> String {
        Self::client_pem_signed(&self.ca, dn, sans)
    }

    fn client_pem_signed(
        ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
        dn: rcgen::DistinguishedName,
        sans: Vec<rcgen::SanType>,
    ) -> String {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, ca).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    /// A reqwest client that trusts this CA, optionally presenting a client certificate.
    pub fn client(&self, identity_pem: Option<&str>, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(30));
        if let Some(pem) = identity_pem {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }
}

/// A client certificate from a CA the gateway does not trust.
pub fn stranger_client_pem(cn: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Stranger CA");
    let ca = rcgen::Issuer::new(params, key);
    Pki::client_pem_from(&ca, cn)
}
