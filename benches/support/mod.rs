//! What the benches share: a child process of ours and its figures from /proc.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// How long each round of an A/B bench runs and how many rounds alternate:
/// `PORTCULLIS_BENCH_SECS` (default 5) and `PORTCULLIS_BENCH_ROUNDS` (default 3).
pub fn rounds() -> (Duration, usize) {
    let var = |name: &str| std::env::var(name).ok();
    let secs: f64 = var("PORTCULLIS_BENCH_SECS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rounds: usize = var("PORTCULLIS_BENCH_ROUNDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    (Duration::from_secs_f64(secs), rounds.max(1))
}

/// A bench's `main`: `--list` (what `cargo test --benches` asks) does nothing; otherwise
/// `run(round, rounds)` on a multi-threaded runtime.
pub fn main<F, Fut>(run: F)
where
    F: FnOnce(Duration, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (round, rounds) = rounds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(round, rounds));
}

/// Writes `dir/<name>.toml`: a gateway relaying to `endpoint`'s `bucket`, its access log
/// in `dir/<name>.log`, one principal `bench` with the API key `key` (get and put, a rate
/// that never refuses), plus the sections in `extra` and the principal's lines in
/// `principal_extra`.
pub fn gateway_config(
    dir: &std::path::Path,
    name: &str,
    endpoint: &str,
    bucket: &str,
    key: &str,
    extra: &str,
    principal_extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[backend]\nkind = \"s3\"\nbucket = \"{bucket}\"\nendpoint = \"{endpoint}\"\n\
             force_path_style = true\naudit = \"off\"\n\n\
             [rate_limit]\nmax_concurrent_per_principal = 20000\n\n\
             [log]\naccess_log = \"{}\"\n\n{extra}\n\
             [[principals]]\nname = \"bench\"\napi_keys = [\"{}\"]\nallow = [\"get\", \"put\"]\n\
             rate_limit = {{ requests_per_second = 1000000, burst = 1000000 }}\n{principal_extra}\n",
            dir.join(format!("{name}.log")).display(),
            portcullis::auth::hash_key(key)
        ),
    )
    .unwrap();
    path
}

/// A `portcullis` child process.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// `portcullis serve --config CONFIG --listen 127.0.0.1:PORT`, relaying to an S3 endpoint
    /// with these credentials (from the environment, as the AWS default chain reads them).
    pub fn gateway(
        config: &std::path::Path,
        port: u16,
        access_key: &str,
        secret_key: &str,
        dir: &std::path::Path,
    ) -> Self {
        Self::gateway_with_env(config, port, access_key, secret_key, dir, &[])
    }

    /// [`Proc::gateway`] with more environment variables.
    pub fn gateway_with_env(
        config: &std::path::Path,
        port: u16,
        access_key: &str,
        secret_key: &str,
        dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(BIN)
            .envs(env.iter().copied())
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("gateway-{port}.err"))).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not start; see gateway-PORT.err"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the process (all its threads, living and ended), in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.pid().to_string())
    }

    fn status_kib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// VmHWM: the peak resident set since start or the last [`Proc::reset_peak`].
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// VmRSS: the resident set now.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    /// Resets VmHWM to the current RSS (writing 5 to clear_refs), so the next peak is one
    /// phase's own.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (for a child process's `--listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of `/proc/<who>` (a pid, or `self`), in seconds.
pub fn cpu_secs_of(who: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// `portcullis s3-server`: the embedded S3 server in its own process, with the endpoint and
/// generated credentials it printed.
pub struct S3Server {
    pub proc: Proc,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start(root: &std::path::Path, bucket: &str) -> Self {
        // `PORTCULLIS_BENCH_FRAME=4KiB`: downloads sent in the file system's 4 KiB reads.
        let frame = std::env::var("PORTCULLIS_BENCH_FRAME").unwrap_or_else(|_| "128KiB".into());
        let mut child = Command::new(BIN)
            .args([
                "s3-server",
                "--frame-size",
                &frame,
                "--bucket",
                bucket,
                "--root",
            ])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&line).unwrap();
        let field = |name: &str| info[name].as_str().unwrap().to_owned();
        Self {
            endpoint: field("endpoint"),
            access_key: field("access_key"),
            secret_key: field("secret_key"),
            proc: Proc { child },
        }
    }

    /// An aws-sdk-s3 client for it, built the way the gateway builds its own.
    pub async fn client(&self, bucket: &str) -> aws_sdk_s3::Client {
        self.client_at(&self.endpoint, bucket).await
    }

    /// The same, addressing the server through `endpoint` (a forwarder in front of it).
    pub async fn client_at(&self, endpoint: &str, bucket: &str) -> aws_sdk_s3::Client {
        self.relay_at(endpoint, bucket, true).await.client().clone()
    }

    /// The gateway's relay to this server, with the light path on or off.
    pub async fn relay(&self, bucket: &str, light_path: bool) -> portcullis::relay::Backend {
        self.relay_at(&self.endpoint, bucket, light_path).await
    }

    async fn relay_at(
        &self,
        endpoint: &str,
        bucket: &str,
        light_path: bool,
    ) -> portcullis::relay::Backend {
        let mut config = portcullis::config::Config::default();
        config.backend.bucket = bucket.into();
        config.backend.force_path_style = true;
        config.backend.light_path = light_path;
        portcullis::relay::connect(
            &config,
            portcullis::relay::BackendSettings {
                endpoint: Some(endpoint.to_owned()),
                credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            },
        )
        .await
        .first()
        .clone()
    }
}

/// A plain TCP forwarder to `target` on two threads of its own (tokio, 64 KiB copy buffers,
/// TCP_NODELAY both ways): what any user-space relay costs at the least, with no HTTP, no
/// signing and no checks. Its CPU time is read from its threads' /proc entries.
pub struct Forwarder {
    pub port: u16,
    threads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Forwarder {
    pub fn start(target: std::net::SocketAddr) -> Self {
        let threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = threads.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // "/proc/thread-self" links to "PID/task/TID".
                if let Ok(link) = std::fs::read_link("/proc/thread-self") {
                    seen.lock().unwrap().push(link.display().to_string());
                }
            })
            .build()
            .unwrap();
        // Bound here, served on the forwarder's own thread (this may run inside a runtime).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional_with_sizes(
                            &mut inbound,
                            &mut outbound,
                            64 * 1024,
                            64 * 1024,
                        )
                        .await;
                    });
                }
            })
        });
        Self { port, threads }
    }

    /// utime + stime of the forwarder's threads, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        self.threads
            .lock()
            .unwrap()
            .iter()
            .map(|t| cpu_secs_of(t))
            .sum()
    }
}
