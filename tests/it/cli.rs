//! The `portcullis` binary as a user runs it: `serve --dev`, `check-config`, `keygen`.

use std::process::Command;
use std::time::Duration;

use crate::common::DevGateway;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_prints_a_key_that_works() {
    let mut gw = DevGateway::start();
    let (url, key) = (gw.url.clone(), gw.key.clone());
    assert!(key.len() >= 43, "at least 32 random bytes: {key}");

    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{url}/v1/objects/hello.txt"))
        .header("authorization", format!("Bearer {key}"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http
        .get(format!("{url}/v1/objects/hello.txt"))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello");
    let resp = http
        .get(format!("{url}/v1/objects/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The object is a file under --data, in the embedded bucket.
    assert!(gw.dir.path().join("data/portcullis/hello.txt").exists());

    // SIGTERM: a clean exit.
    gw.signal("-TERM");
    let status = gw
        .wait(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // The access log went to stdout, one JSON line per request, without the key.
    // The default application log is info: no debug lines from any crate.
    let log: Vec<String> = gw
        .banner
        .iter()
        .cloned()
        .chain(gw.stderr.try_iter())
        .collect();
    assert!(!log.iter().any(|l| l.contains("DEBUG")), "{log:?}");
    let stdout = gw.stdout();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(!stdout.contains(&key));
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["request_id"].is_string());
    }
}

#[test]
fn check_config_passes_every_shipped_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check_config(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn check_config_names_file_line_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[backend]\nkind = \"embedded\"\npart_size = \"1MiB\"\n\n[[principals]]\nname = \"a\"\nprefix = \"users\"\n").unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3: backend.part_size:"), "{err}");
    assert!(err.contains("bad.toml:7: principals[0].prefix:"), "{err}");

    // Not even TOML: still a message with a line, never a panic.
    std::fs::write(&path, "[server\nlisten = 1\n").unwrap();
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // serve refuses it the same way.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:1"));
}

#[test]
fn keygen_prints_a_key_and_its_hash() {
    let out = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("hash:"))
        .unwrap()
        .trim();
    assert_eq!(hash, portcullis::auth::hash_key(key));
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe: {key}"
    );
    // For scripts: JSON.
    let out = Command::new(BIN)
        .args(["keygen", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["key"].as_str().unwrap();
    assert_eq!(v["hash"], portcullis::auth::hash_key(key));
}

#[test]
fn keygen_s3_derives_the_secret_from_the_master() {
    let master = "keygen-test-master-secret-0123456789abcdef";
    let out = Command::new(BIN)
        .args(["keygen", "--s3", "--json"])
        .env("PORTCULLIS_S3_SECRET", master)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["access_key_id"].as_str().unwrap();
    assert!(id.starts_with("PCAK") && id.len() == 20, "{id}");
    assert_eq!(
        v["secret"],
        portcullis::auth::access_keys::derive_secret(master.as_bytes(), id)
    );
    // The master named by a config's [s3_api] secrets_env.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("door.toml");
    std::fs::write(
        &path,
        "[backend]\nkind = \"embedded\"\n[s3_api]\nlisten = \"127.0.0.1:9000\"\nsecrets_env = \"MY_DOOR_MASTER\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--s3", "--json", "--config"])
        .arg(&path)
        .env("MY_DOOR_MASTER", master)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A master that is missing or short is refused, naming the variable.
    let out = Command::new(BIN)
        .args(["keygen", "--s3"])
        .env("PORTCULLIS_S3_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORTCULLIS_S3_SECRET"));
}

#[test]
fn s3_server_prints_its_endpoint_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["s3-server", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        v["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{v}"
    );
    assert_eq!(v["bucket"], "portcullis");
    assert!(v["access_key"].is_string() && v["secret_key"].is_string());
}

fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_carry_no_signature_and_the_data_is_private() {
    let mut gw = DevGateway::start_with_env(&[("PORTCULLIS_LOG", "trace")]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/objects/secret.txt", gw.url);
    let auth = format!("Bearer {}", gw.key);
    let put = http.put(&url).header("authorization", &auth).body("x");
    assert_eq!(put.send().await.unwrap().status(), 200);
    let get = http.get(&url).header("authorization", &auth);
    assert_eq!(get.send().await.unwrap().text().await.unwrap(), "x");
    // And through the S3 door, whose requests are all signed.
    let creds =
        aws_sdk_s3::config::Credentials::new(&gw.access_key_id, &gw.secret, None, None, "test");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&gw.door)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .force_path_style(true)
            .build(),
    );
    s3.put_object()
        .bucket("files")
        .key("door.txt")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"y"))
        .send()
        .await
        .unwrap();
    gw.signal("-TERM");
    assert!(gw.wait(Duration::from_secs(20)).is_some());
    let log: Vec<String> = gw
        .banner
        .iter()
        .cloned()
        .chain(gw.stderr.try_iter())
        .collect();
    assert!(log.len() > 10, "trace logging is on: {} lines", log.len());
    for line in &log {
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.contains("signature=") && !lower.contains("x-amz-signature"),
            "a signature in the log: {line}"
        );
    }
    // The embedded data is the gateway user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw.dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[test]
fn the_image_checks_liveness_and_builds_from_a_small_context() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let healthcheck = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .take(2)
        .collect::<String>();
    assert!(healthcheck.contains("\"/healthz\""), "{healthcheck}");
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"));
    let exposed: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("EXPOSE"))
        .collect();
    assert_eq!(
        exposed,
        ["EXPOSE 8080"],
        "the admin listener is loopback by default"
    );
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "{ignored}");
}
