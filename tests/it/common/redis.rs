//! A real `redis-server` (Debian's package) for the shared-limits tests: started on a free
//! loopback port with a data folder of its own (never the system's server), stopped when
//! dropped, and restartable on the same port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `(certificate, key)`: TLS only, on `port`.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that speaks only TLS, with `pki`'s server certificate (for `localhost`).
    pub async fn start_tls(pki: &super::Pki) -> Self {
        Self::start_with(Some((pki.server_cert.clone(), pki.server_key.clone()))).await
    }

    async fn start_with(tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut server = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls,
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no clean shutdown: as if the machine went away).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers().await {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET key`, straight from the server.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(format!("GET {key}\r\n").as_bytes())
            .await
            .ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        // `$-1\r\n` (none) or `$N\r\n<N bytes>\r\n`.
        loop {
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if text.starts_with("$-1") {
                return None;
            }
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n"))
                && let Ok(len) = len.parse::<usize>()
                && rest.len() >= len + 2
            {
                return Some(rest[..len].to_owned());
            }
        }
        None
    }

    async fn answers(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if self.tls.is_some() {
            // Listening is enough: the test itself shows whether TLS works.
            return true;
        }
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `[redis]` pointing at `url`, given directly (tests cannot set environment variables).
pub fn redis_config(
    url: &str,
    prefix: &str,
    on_error: portcullis::config::OnRedisError,
) -> portcullis::config::RedisConfig {
    portcullis::config::RedisConfig {
        url_env: "PORTCULLIS_TEST_REDIS_URL".into(),
        key_prefix: prefix.into(),
        timeout: portcullis::config::units::Span::secs(1),
        on_error,
        ca_file: None,
        url: Some(url.into()),
    }
}
