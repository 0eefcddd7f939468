//! Operations: metrics that move, readiness that follows the backend, graceful shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use portcullis::admin::Health;
use reqwest::{Method, StatusCode};
use tokio::io::AsyncReadExt;

/// The sum of a metric's samples whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_requests_are_served() {
    let g = gateway("").await;
    let before = portcullis::obs::metrics::render();
    let data = random_bytes(100_000, 1);
    assert_eq!(
        g.call(Method::PUT, "m", ADMIN)
            .body(data.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    g.fetch("m", ADMIN).await;
    g.call(Method::GET, "m", "wrong-key").send().await.unwrap();
    eventually("the 401 is counted", || async {
        let now = portcullis::obs::metrics::render();
        metric(
            &now,
            "portcullis_rejections_total",
            &["reason=\"unauthenticated\""],
        ) > metric(
            &before,
            "portcullis_rejections_total",
            &["reason=\"unauthenticated\""],
        )
    })
    .await;
    let after = portcullis::obs::metrics::render();

    let delta =
        |name: &str, labels: &[&str]| metric(&after, name, labels) - metric(&before, name, labels);
    assert!(
        delta(
            "portcullis_requests_total",
            &["route=\"object\"", "method=\"PUT\"", "status=\"2xx\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        delta(
            "portcullis_requests_total",
            &["method=\"GET\"", "status=\"2xx\""]
        ) >= 1.0
    );
    assert!(delta("portcullis_requests_total", &["status=\"4xx\""]) >= 1.0);
    assert!(delta("portcullis_request_bytes_total", &[]) >= 100_000.0);
    assert!(delta("portcullis_response_bytes_total", &[]) >= 100_000.0);
    assert!(
        delta(
            "portcullis_rejections_total",
            &["reason=\"unauthenticated\""]
        ) >= 1.0
    );
    assert!(delta("portcullis_backend_seconds_count", &["op=\"put\""]) >= 1.0);
    assert!(delta("portcullis_backend_seconds_count", &["op=\"get\""]) >= 1.0);
    assert!(after.contains("portcullis_requests_in_flight"));
    assert!(after.contains("portcullis_connections_open"));
    // No key, principal or object name is ever a label.
    assert!(!after.contains("admin") && !after.contains("\"m\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_backend_and_draining() {
    let g = gateway("").await;
    let (endpoint, power) = switchable_proxy(g.s3_addr).await;
    let mut config = portcullis::config::Config::default();
    config.backend.bucket = BUCKET.into();
    config.backend.first_byte_timeout = portcullis::config::units::Span::secs(2);
    let emb = g.s3_credentials.clone();
    let backend = portcullis::relay::connect(
        &config,
        portcullis::relay::BackendSettings {
            endpoint: Some(endpoint),
            credentials: Some(emb),
        },
    )
    .await;
    let health = Health::new(&backend);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", admin.local_addr().unwrap());
    tokio::spawn(portcullis::admin::serve(
        admin,
        health.clone(),
        std::future::pending(),
    ));
    let status = |path: &'static str| {
        let url = format!("{url}{path}");
        async move { reqwest::get(url).await.unwrap().status() }
    };

    assert!(health.check().await);
    assert_eq!(status("/readyz").await, StatusCode::OK);
    assert_eq!(status("/healthz").await, StatusCode::OK);
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("portcullis_backend_ready 1"), "{metrics}");

    power.send(false).unwrap();
    assert!(!health.check().await);
    assert_eq!(status("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        status("/healthz").await,
        StatusCode::OK,
        "alive even when the backend is not"
    );

    power.send(true).unwrap();
    assert!(health.check().await);
    assert_eq!(status("/readyz").await, StatusCode::OK);

    health.drain();
    assert_eq!(status("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status("/nope").await, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_download_finish_while_new_connections_are_refused() {
    let mut gw = DevGateway::start();
    let http = reqwest::Client::new();
    let data = random_bytes(40 * 1024 * 1024, 7);
    let resp = http
        .put(format!("{}/v1/objects/big", gw.url))
        .header("authorization", bearer(&gw.key))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        reqwest::get(format!("{}/readyz", gw.admin))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let (mut download, mut got) = slow_download(&gw.url, &gw.key, "big").await;
    gw.signal("-TERM");
    // Draining: not ready, and the public listener no longer accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("{}/readyz", gw.admin))
            .await
            .map(|r| r.status());
        if ready.ok() == Some(StatusCode::SERVICE_UNAVAILABLE) {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never went unready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection is refused"
    );

    // The download in flight completes byte-exact.
    download.read_to_end(&mut got).await.unwrap();
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(sha256(&got[split..]), sha256(&data));
    let status = gw
        .wait(Duration::from_secs(20))
        .expect("the gateway exits after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut gw = DevGateway::start();
    let http = reqwest::Client::new();
    let data = random_bytes(40 * 1024 * 1024, 8);
    http.put(format!("{}/v1/objects/big", gw.url))
        .header("authorization", bearer(&gw.key))
        .body(data)
        .send()
        .await
        .unwrap();
    let (_held, _) = slow_download(&gw.url, &gw.key, "big").await;
    gw.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gw.wait(Duration::from_millis(200)).is_none(),
        "still draining the held download"
    );
    gw.signal("-TERM");
    let status = gw
        .wait(Duration::from_secs(5))
        .expect("a second signal exits at once");
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_health_asks_the_admin_listener() {
    let gw = DevGateway::start();
    let admin = gw.admin.trim_start_matches("http://").to_owned();
    let health = |admin: &str, path: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["health", "--admin", admin, "--path", path])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert_eq!(health(&admin, "/readyz"), (true, "ok".into()));
    assert!(health(&admin, "/healthz").0);
    // Not ok, and why.
    let (ok, said) = health(&admin, "/nope");
    assert!(
        !ok && said.starts_with("not ok: /nope: HTTP/1.0 404"),
        "{said}"
    );
    let (_held, closed) = refusing_addr();
    let (ok, said) = health(&closed.to_string(), "/healthz");
    assert!(!ok && said.contains("cannot connect"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_download_is_logged_with_the_bytes_actually_sent() {
    let g = gateway("").await;
    let data = random_bytes(32 * 1024 * 1024, 12);
    assert_eq!(
        g.call(Method::PUT, "cut", ADMIN)
            .body(data)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let url = g.url.clone();
    let (mut s, first) = slow_download(&url, ADMIN, "cut").await;
    let mut more = vec![0u8; 64 * 1024];
    let _ = s.read(&mut more).await;
    drop(s);
    drop(first);
    // The line is written when hyper drops the abandoned body.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = g
            .access_log_lines()
            .into_iter()
            .find(|l| l["method"] == "GET" && l["key"] == "cut")
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the aborted download"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["error_code"], "client_closed");
    let sent = line["bytes_out"].as_u64().unwrap();
    assert!(sent > 0 && sent < 32 * 1024 * 1024, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_load_reports_a_bounded_run() {
    let gw = DevGateway::start();
    for op in ["get", "put", "mixed"] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "load",
                "--url",
                &gw.url,
                "--op",
                op,
                "--size",
                "2KiB",
                "--concurrency",
                "4",
            ])
            .args(["--duration", "5s", "--requests", "200", "--json"])
            .env("PORTCULLIS_KEY", &gw.key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["requests"], 200, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["by_status"]["200"], 200, "{v}");
        let lat = &v["latency_ms"];
        assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
        assert!(v["megabytes_per_second"].as_f64().unwrap() > 0.0);
    }
    // A wrong key: every request is an error, counted by status, said on the last line,
    // and the exit status is not 0.
    let wrong = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "load",
                "--url",
                &gw.url,
                "--op",
                "put",
                "--concurrency",
                "2",
            ])
            .args(["--requests", "10"])
            .args(extra)
            .env("PORTCULLIS_KEY", "wrong")
            .output()
            .unwrap()
    };
    let out = wrong(&["--prefix", "load/", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 10, "{v}");
    let out = wrong(&["--prefix", "load/"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap();
    assert!(last.contains("MOSTLY ERRORS: 10 of 10"), "{text}");
    // Without --prefix it asks the gateway whose key it is, and says why it cannot.
    let out = wrong(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/v1/me answered 4"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_writes_under_a_confined_principal_own_prefix() {
    let g = gateway("").await;
    let prefix = portcullis::load::own_prefix(&g.url, ALICE, None)
        .await
        .unwrap();
    assert_eq!(prefix, "users/alice/");
    let summary = portcullis::load::run(portcullis::load::LoadOptions {
        url: g.url.clone(),
        key: ALICE.into(),
        op: portcullis::load::Op::Put,
        size: 1024,
        concurrency: 2,
        duration: Duration::from_secs(5),
        requests: Some(10),
        prefix: format!("{prefix}load/"),
        content_type: Some("text/plain".into()),
        progress: false,
        presigned: None,
        prepared: false,
        ca_file: None,
        http2: false,
    })
    .await
    .unwrap();
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert!(!summary.mostly_errors());
    let keys = g.bucket_keys().await;
    assert_eq!(keys, vec!["users/alice/load/0", "users/alice/load/1"]);
    let head = g
        .call(Method::HEAD, "users/alice/load/0", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-type"], "text/plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_and_metrics_an_operator_can_use() {
    let g = gateway("").await;
    let resp = g
        .call(reqwest::Method::PUT, "ops/a.txt", ADMIN)
        .header("user-agent", "ops-test/1.0")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually("the PUT is logged with its client and protocol", || async {
        g.access_log_lines().iter().any(|l| {
            l["key"] == "ops/a.txt"
                && l["user_agent"] == "ops-test/1.0"
                && l["http_version"] == "HTTP/1.1"
        })
    })
    .await;
    let metrics = portcullis::obs::metrics::render();
    for name in [
        "portcullis_request_duration_seconds_bucket{bucket=\"files\",route=\"object\",method=\"PUT\",status=\"2xx\"",
        "portcullis_build_info{version=",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_speaks_tls_with_a_given_ca() {
    let pki = Pki::new();
    let g = gateway(&pki.toml(None)).await;
    let url = g.url.replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let prefix = portcullis::load::own_prefix(&url, ALICE, Some(&pki.ca_file))
        .await
        .unwrap();
    assert_eq!(prefix, "users/alice/");
    let summary = portcullis::load::run(portcullis::load::LoadOptions {
        url: url.clone(),
        key: ALICE.into(),
        op: portcullis::load::Op::Mixed,
        size: 1024,
        concurrency: 2,
        duration: Duration::from_secs(5),
        requests: Some(20),
        prefix: format!("{prefix}tls/"),
        content_type: None,
        progress: false,
        presigned: None,
        prepared: false,
        ca_file: Some(pki.ca_file.clone()),
        http2: true,
    })
    .await
    .unwrap();
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(summary.requests, 20);
    // Without the CA the gateway's certificate is not trusted: no request gets through.
    let refused = portcullis::load::own_prefix(&url, ALICE, None).await;
    assert!(refused.is_err());
}
