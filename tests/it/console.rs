//! The console at `GET /`: its headers, and an end-to-end run in a real headless Chromium
//! (Debian's `chromium`, driven by `playwright-core` from `tests/browser/`), against a
//! gateway on the embedded backend.
//!
//! The browser run needs `/usr/bin/chromium` and `tests/browser/node_modules`; `.ci/run`
//! installs both and sets `PORTCULLIS_BROWSER_TESTS=1`, which makes their absence a failure.
//! Without that variable, a machine without them skips the browser run and says so.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use portcullis::auth::hash_key;
use reqwest::StatusCode;
use serde_json::Value;

const CAROL: &str = "carol-console-key-0123456789";

fn console_principal() -> String {
    format!(
        "[[principals]]\nname = \"carol\"\napi_keys = [\"{}\"]\n\
         allow = [\"get\", \"put\", \"delete\", \"list\", \"link\"]\n\
         prefix = \"users/carol/\"\nmax_object_size = \"1MiB\"\n",
        hash_key(CAROL)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_strict_headers() {
    let g = gateway("").await;
    let resp = g.http.get(format!("{}/", g.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let html = resp.text().await.unwrap();
    assert!(html.contains("/console.js") && html.contains("/console.css"));
    // Revalidation is a 304; the script and style are served the same way.
    assert_eq!(
        status_of(
            g.http
                .get(format!("{}/", g.url))
                .header("if-none-match", h["etag"].clone())
        )
        .await,
        StatusCode::NOT_MODIFIED
    );
    for (path, ty) in [
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let resp = g.http.get(format!("{}{path}", g.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
    }
    let resp = g.http.post(format!("{}/", g.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_says_who_the_key_is() {
    let g = gateway_with_links(&console_principal()).await;
    let resp = g
        .http
        .get(format!("{}/v1/me", g.url))
        .header("authorization", bearer(CAROL))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["principal"], "carol");
    assert_eq!(v["prefix"], "users/carol/");
    assert_eq!(v["max_object_size"], 1024 * 1024);
    assert_eq!(v["links"], true);
    assert_eq!(v["allow"].as_array().unwrap().len(), 5);
    let resp = g.http.get(format!("{}/v1/me", g.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The browser run's tools, or `None` (with a line saying so) when they are missing and
/// `PORTCULLIS_BROWSER_TESTS` is not set; with it set, their absence fails the test.
fn browser_or_skip() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    match browser_tools() {
        Ok(t) => Some(t),
        Err(why) if std::env::var_os("PORTCULLIS_BROWSER_TESTS").is_none() => {
            eprintln!("SKIPPED the browser run: {why}; .ci/run installs what it needs");
            None
        }
        Err(why) => panic!("PORTCULLIS_BROWSER_TESTS is set but {why}"),
    }
}

/// Runs `script` from `tests/browser/` in node with these variables (and `CHROMIUM`), within
/// 3 minutes; returns the one JSON line it prints.
async fn run_in_chromium(
    chromium: &Path,
    browser_dir: &Path,
    script: &str,
    env: &[(&str, &OsStr)],
) -> Value {
    let run = tokio::process::Command::new("node")
        .arg(browser_dir.join(script))
        .current_dir(browser_dir)
        .envs(env.iter().copied())
        .env("CHROMIUM", chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run finishes within 3 minutes")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run failed:\n{stderr}");
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// What the browser run needs, or why it cannot run here.
fn browser_tools() -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/chromium"));
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !chromium.exists() {
        return Err(format!(
            "{} is missing (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Err("tests/browser/node_modules is missing (npm ci --prefix tests/browser)".into());
    }
    Ok((chromium, browser_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_end_to_end_in_headless_chromium() {
    let Some((chromium, browser_dir)) = browser_or_skip() else {
        return;
    };
    let g = gateway_with_links(&console_principal()).await;
    let files = tempfile::tempdir().unwrap();
    let small = files.path().join("holiday photo.bin");
    let small_bytes = random_bytes(300 * 1024, 21);
    std::fs::write(&small, &small_bytes).unwrap();
    let big = files.path().join("too big.bin");
    std::fs::write(&big, random_bytes(2 * 1024 * 1024, 22)).unwrap();
    let downloads = files.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");

    let seen = run_in_chromium(
        &chromium,
        &browser_dir,
        "console.mjs",
        &[
            ("GATEWAY_URL", OsStr::new(&g.url)),
            ("CONSOLE_KEY", OsStr::new(CAROL)),
            ("READER_KEY", OsStr::new(READER)),
            ("PREFIX", OsStr::new("users/carol/")),
            ("SMALL_FILE", small.as_os_str()),
            ("BIG_FILE", big.as_os_str()),
            ("DOWNLOAD_DIR", downloads.as_os_str()),
            ("SCREENSHOT", screenshot.as_os_str()),
        ],
    )
    .await;

    assert_eq!(seen["errors"], Value::Array(vec![]), "no console errors");
    assert_eq!(seen["progress"], 100, "the progress bar reached 100%");
    assert!(seen["uploadText"].as_str().unwrap().starts_with("Uploaded"));
    let downloaded = std::fs::read(seen["downloaded"].as_str().unwrap()).unwrap();
    assert_eq!(
        sha256(&downloaded),
        sha256(&small_bytes),
        "downloaded bytes"
    );
    let too_large = seen["tooLargeText"].as_str().unwrap();
    assert!(too_large.contains("too large"), "{too_large}");
    let bar = &seen["failedBar"];
    assert_eq!(bar["value"], 100, "{bar}");
    assert_ne!(bar["accent"], "auto", "{bar}");
    assert!(
        seen["replaceQuestion"]
            .as_str()
            .unwrap()
            .contains("exists. Replace it?"),
        "{seen}"
    );
    assert_eq!(
        seen["lifetimes"],
        serde_json::json!(["60", "900"]),
        "max_ttl is 15 min"
    );
    assert_eq!(seen["readerUploadHidden"], true);
    assert_eq!(seen["readerListVisible"], true);
    assert_eq!(seen["shareStatus"], 200);
    assert_eq!(seen["shareSha256"], sha256(&small_bytes));
    assert!(
        seen["shareUrl"].as_str().unwrap().starts_with(&g.url),
        "an absolute link on the gateway"
    );
    assert!(
        screenshot.exists(),
        "screenshot at {}",
        screenshot.display()
    );
    eprintln!("console screenshot: {}", screenshot.display());
    // Deleted through the page; the over-limit file never stored.
    assert!(
        g.bucket_keys().await.is_empty(),
        "{:?}",
        g.bucket_keys().await
    );
    assert!(g.settle_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_presigned_page_works_from_another_origin_against_serve_dev() {
    let Some((chromium, browser_dir)) = browser_or_skip() else {
        return;
    };
    let gw = DevGateway::start();
    let files = tempfile::tempdir().unwrap();
    let upload = files.path().join("holiday photo.bin");
    let bytes = random_bytes(200 * 1024, 31);
    std::fs::write(&upload, &bytes).unwrap();
    // A file name that is no valid key: the refusal must reach the page as JSON.
    let refused = files.path().join("back\\slash.txt");
    std::fs::write(&refused, b"x").unwrap();
    let page_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/presigned-frontend");

    let seen = run_in_chromium(
        &chromium,
        &browser_dir,
        "frontend.mjs",
        &[
            ("GATEWAY_URL", OsStr::new(&gw.url)),
            ("API_KEY", OsStr::new(&gw.key)),
            ("PAGE_DIR", page_dir.as_os_str()),
            ("UPLOAD_FILE", upload.as_os_str()),
            ("REFUSED_FILE", refused.as_os_str()),
        ],
    )
    .await;
    assert_eq!(seen["pageErrors"], Value::Array(vec![]), "{seen}");
    assert_ne!(
        seen["origin"].as_str().unwrap(),
        gw.url,
        "the page is on another origin"
    );
    assert_eq!(seen["uploaded"], "Uploaded as holiday photo.bin", "{seen}");
    assert_eq!(
        seen["downloaded"],
        format!(
            "Downloaded {} bytes, sha256 {}",
            bytes.len(),
            sha256(&bytes)
        ),
        "{seen}"
    );
    let refusal = seen["refused"].as_str().unwrap();
    assert!(
        refusal.starts_with("Refused: 400 invalid_key: "),
        "{refusal}"
    );
    // Stored under the name the page sent, in the embedded bucket.
    assert_eq!(
        std::fs::read(gw.dir.path().join("data/portcullis/holiday photo.bin")).unwrap(),
        bytes
    );
}
