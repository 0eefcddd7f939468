//! Hot reload: `SIGHUP` to a real `portcullis serve --config` process swaps the config while
//! requests keep flowing; a bad config is refused and the old one keeps serving. And the TLS
//! certificate is swapped for new handshakes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use portcullis::auth::hash_key;
use reqwest::StatusCode;
use serde_json::json;

const STEADY: &str = "steady-key-0123456789";
const OLD: &str = "old-key-0123456789";
const NEW: &str = "new-key-0123456789";
const LINK_ENV_SECRET: &str = "link-secret-from-env-0123456789-0123456789";
const HS_SECRET: &str = "hs256-secret-from-env-0123456789-0123456789";

/// A gateway process on a config file it can rewrite.
struct Served {
    process: ServeProcess,
    url: String,
    config: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Served {
    fn start(principals: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(&config, config_text(dir.path(), principals)).unwrap();
        let process = ServeProcess::start(
            &config,
            &[
                ("PORTCULLIS_TEST_LINK_SECRET", LINK_ENV_SECRET),
                ("PORTCULLIS_TEST_HS256", HS_SECRET),
            ],
        );
        Self {
            url: process.url.clone(),
            process,
            config,
            dir,
        }
    }

    fn rewrite(&self, principals: &str) {
        std::fs::write(&self.config, config_text(self.dir.path(), principals)).unwrap();
    }

    fn sighup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.process.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn logged(&self, needle: &str) -> usize {
        self.process.logged(needle)
    }
}

fn config_text(dir: &std::path::Path, principals: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[backend]
kind = "embedded"
bucket = "{BUCKET}"
root = "{root}"
audit = "off"

[log]
access_log = "{log}"

[links]
secrets_env = ["PORTCULLIS_TEST_LINK_SECRET"]

[jwt]
issuer = "https://id.test/"
audience = "portcullis"
hs256_secret_env = "PORTCULLIS_TEST_HS256"
prefix_template = "users/{{sub}}/"
allow = ["get"]

[[principals]]
name = "steady"
api_keys = ["{steady}"]
allow = ["get", "put", "link"]
rate_limit = {{ requests_per_second = 100000, burst = 100000 }}
{principals}
"#,
        root = dir.join("data").display(),
        log = dir.join("access.log").display(),
        steady = hash_key(STEADY),
    )
}

fn principal(name: &str, key: &str) -> String {
    format!(
        "\n[[principals]]\nname = \"{name}\"\napi_keys = [\"{}\"]\nallow = [\"get\"]\n",
        hash_key(key)
    )
}

async fn status(http: &reqwest::Client, url: &str, key: &str) -> StatusCode {
    http.get(format!("{url}/v1/objects/steady.txt"))
        .header("authorization", bearer(key))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::IM_A_TEAPOT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_config_under_steady_traffic_without_a_failed_request() {
    let served = Served::start(&principal("old", OLD));
    let http = reqwest::Client::new();
    let url = served.url.clone();
    assert_eq!(
        http.put(format!("{url}/v1/objects/steady.txt"))
            .header("authorization", bearer(STEADY))
            .body("steady")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let big = random_bytes(24 * 1024 * 1024, 5);
    assert_eq!(
        http.put(format!("{url}/v1/objects/big.bin"))
            .header("authorization", bearer(STEADY))
            .body(big.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // A link issued before the reloads, with the secret from the environment.
    let resp = http
        .post(format!("{url}/v1/links"))
        .header("authorization", bearer(STEADY))
        .json(&json!({"key": "steady.txt", "method": "GET", "expires_in": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let link: serde_json::Value = resp.json().await.unwrap();
    let link = format!("{url}{}", link["url"].as_str().unwrap());

    // A steady stream of requests (several connections) for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, done, failed, http, url) = (
            stop.clone(),
            done.clone(),
            failed.clone(),
            http.clone(),
            url.clone(),
        );
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if status(&http, &url, STEADY).await == StatusCode::OK {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // A large download in flight across every reload, read slowly.
    let (mut slow, first) = slow_download(&url, STEADY, "big.bin").await;

    assert_eq!(status(&http, &url, OLD).await, StatusCode::OK);
    assert_eq!(status(&http, &url, NEW).await, StatusCode::UNAUTHORIZED);

    // 1. A key added.
    served.rewrite(&format!(
        "{}{}",
        principal("old", OLD),
        principal("new", NEW)
    ));
    served.sighup();
    eventually("the new key works", || async {
        status(&http, &url, NEW).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(&http, &url, OLD).await, StatusCode::OK);

    // 2. A key revoked.
    served.rewrite(&principal("new", NEW));
    served.sighup();
    eventually("the old key is refused", || async {
        status(&http, &url, OLD).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(status(&http, &url, NEW).await, StatusCode::OK);

    // 3. A config that fails validation: refused, logged, the running one keeps serving.
    std::fs::write(
        &served.config,
        "[server]\nlisten = \"nonsense\"\nbogus = 1\n",
    )
    .unwrap();
    served.sighup();
    eventually("the refusal is logged", || async {
        served.logged("reload refused") >= 1
    })
    .await;
    assert_eq!(status(&http, &url, NEW).await, StatusCode::OK);
    assert_eq!(status(&http, &url, OLD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.logged("config reloaded"), 2);

    // The link from before the reloads still works (same secret, same principal).
    assert_eq!(status_of(http.get(&link)).await, StatusCode::OK);
    // And an HS256 JWT with the secret from the environment; an HS256 token signed with
    // anything else is refused.
    let claims = json!({"sub": "zoe", "iss": "https://id.test/", "aud": "portcullis",
        "exp": portcullis::auth::unix_now() + 60});
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-0123456789-0123456789")
            .unwrap(),
    )
    .unwrap();
    let get_zoe = |token: &str| {
        http.get(format!("{url}/v1/objects/users/zoe/none"))
            .header("authorization", bearer(token))
            .send()
    };
    assert_eq!(
        get_zoe(&good).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_zoe(&forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // The slow download, started before the first reload, finishes intact.
    let mut got = first;
    tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut got)
        .await
        .unwrap();
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(sha256(&got[body_start..]), sha256(&big));

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "requests failed during reloads ({done} succeeded)"
    );
    assert!(done > 50, "the steady stream ran ({done} requests)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_handshakes() {
    let first = Pki::new();
    let g = gateway(&first.toml(None)).await;
    let trusts_first = first.client(None, true);
    assert_eq!(
        status_of(
            trusts_first
                .get(g.object_url("users/alice/none"))
                .header("authorization", bearer(ALICE))
        )
        .await,
        StatusCode::NOT_FOUND
    );

    let second = Pki::new();
    let mut c = g.config.clone();
    let tls = c.server.tls.as_mut().unwrap();
    tls.cert = second.server_cert.clone();
    tls.key = second.server_key.clone();
    g.gateway.reload(&c).unwrap();
    let trusts_second = second.client(None, true);
    assert_eq!(
        status_of(
            trusts_second
                .get(g.object_url("users/alice/none"))
                .header("authorization", bearer(ALICE))
        )
        .await,
        StatusCode::NOT_FOUND
    );
    let fresh_first = first.client(None, true);
    assert!(
        fresh_first
            .get(g.object_url("users/alice/none"))
            .send()
            .await
            .is_err(),
        "a client that trusts only the old CA must fail the new handshake"
    );
    // A reload cannot turn TLS off, and a broken certificate path is refused whole.
    let mut off = g.config.clone();
    off.server.tls = None;
    assert!(g.gateway.reload(&off).is_err());
    let mut broken = c.clone();
    broken.server.tls.as_mut().unwrap().cert = "/nonexistent.pem".into();
    assert!(g.gateway.reload(&broken).is_err());
    assert_eq!(
        status_of(
            second
                .client(None, true)
                .get(g.object_url("users/alice/none"))
                .header("authorization", bearer(ALICE))
        )
        .await,
        StatusCode::NOT_FOUND
    );
}

/// logrotate's way: the file is moved away, then `SIGHUP`. Lines up to the reopen stay in the
/// moved file, later ones go to a new file of the old name; none is lost or written twice.
#[tokio::test]
async fn sighup_reopens_an_access_log_that_was_moved() {
    let served = Served::start("");
    let http = reqwest::Client::new();
    let log = served.dir.path().join("access.log");
    let moved = served.dir.path().join("access.log.1");
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for _ in 0..3 {
        status(&http, &served.url, STEADY).await;
    }
    eventually("the first lines are written", || async { lines(&log) == 3 }).await;
    std::fs::rename(&log, &moved).unwrap();
    // Until the reopen, lines still go where the open file now is.
    status(&http, &served.url, STEADY).await;
    eventually("a line after the move reaches the moved file", || async {
        lines(&moved) == 4
    })
    .await;
    served.sighup();
    eventually("the reopen is logged", || async {
        served.logged("access log reopened") == 1
    })
    .await;
    for _ in 0..2 {
        status(&http, &served.url, STEADY).await;
    }
    eventually("later lines reach a new file of the old name", || async {
        lines(&log) == 2
    })
    .await;
    assert_eq!(lines(&moved), 4);
}
