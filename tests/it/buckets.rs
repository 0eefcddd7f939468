//! Several buckets behind one gateway (SPEC section 10): two buckets on the embedded S3
//! server, a principal in each; objects, lists, links, deletes and uploads never cross, and
//! what clients, the log and the metrics see is the bucket's name, never the S3 bucket's.

use std::time::Duration;

use crate::common::*;
use portcullis::auth::hash_key;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The S3 buckets behind the names `media` and `backups`.
pub(crate) const MEDIA: &str = "acme-media-7f3a";
pub(crate) const BACKUPS: &str = "acme-backups-2b9c";
/// Bob works in `backups`, with every permission on the whole bucket.
const BOB: &str = "bob-key-0123456789abc";

pub(crate) fn two_buckets(bob_bucket: &str) -> String {
    format!(
        r#"
[[buckets]]
name = "media"
bucket = "{MEDIA}"
part_size = "5MiB"

[[buckets]]
name = "backups"
bucket = "{BACKUPS}"
part_size = "5MiB"

[[principals]]
name = "bob"
api_keys = ["{bob}"]
allow = ["get", "put", "delete", "list", "link"]
bucket = "{bob_bucket}"
"#,
        bob = hash_key(BOB),
    )
}

async fn two_bucket_gateway() -> TestGateway {
    gateway_tweaked(&two_buckets("backups"), Relay::Direct, |c| {
        c.links = Some(links_config(&[LINK_SECRET]))
    })
    .await
}

#[tokio::test]
async fn each_principal_works_in_its_own_bucket_only() {
    let g = two_bucket_gateway().await;
    // admin has no `bucket`: the first one, media.
    for (who, body) in [(ADMIN, "in media"), (BOB, "in backups")] {
        let put = g.call(reqwest::Method::PUT, "shared/a.txt", who).body(body);
        assert_eq!(status_of(put).await, StatusCode::OK);
        assert_eq!(g.fetch("shared/a.txt", who).await, body.as_bytes());
    }
    assert_eq!(
        g.object_in(MEDIA, "shared/a.txt").await.as_deref(),
        Some(&b"in media"[..])
    );
    assert_eq!(
        g.object_in(BACKUPS, "shared/a.txt").await.as_deref(),
        Some(&b"in backups"[..])
    );

    // Only bob's bucket has bob's second object; admin cannot see it.
    let put = g
        .call(reqwest::Method::PUT, "only/bob.txt", BOB)
        .body("bob");
    assert_eq!(status_of(put).await, StatusCode::OK);
    let get = g.call(reqwest::Method::GET, "only/bob.txt", ADMIN);
    assert_eq!(status_of(get).await, StatusCode::NOT_FOUND);
    assert_eq!(g.keys_in(MEDIA).await, ["shared/a.txt"]);
    assert_eq!(g.keys_in(BACKUPS).await, ["only/bob.txt", "shared/a.txt"]);

    // Lists never cross.
    let list = |who: &'static str| {
        let g = &g;
        async move {
            let v: Value = g
                .http
                .get(format!("{}/v1/objects", g.url))
                .header("authorization", bearer(who))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["key"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(ADMIN).await, ["shared/a.txt"]);
    assert_eq!(list(BOB).await, ["only/bob.txt", "shared/a.txt"]);

    // A delete removes the caller's object only.
    let delete = g.call(reqwest::Method::DELETE, "shared/a.txt", BOB);
    assert_eq!(status_of(delete).await, StatusCode::NO_CONTENT);
    assert_eq!(g.keys_in(BACKUPS).await, ["only/bob.txt"]);
    assert_eq!(g.keys_in(MEDIA).await, ["shared/a.txt"]);

    // An upload of unknown length (a multipart upload) lands whole in bob's bucket, and no
    // unfinished upload is left in either.
    let data = random_bytes(7 << 20, 17);
    let put = g
        .call(reqwest::Method::PUT, "big.bin", BOB)
        .body(chunked_body(data.clone(), 256 * 1024));
    assert_eq!(status_of(put).await, StatusCode::OK);
    assert_eq!(g.object_in(BACKUPS, "big.bin").await, Some(data));
    assert_eq!(g.object_in(MEDIA, "big.bin").await, None);
    assert!(g.pending_in(BACKUPS).await.is_empty());
    assert!(g.pending_in(MEDIA).await.is_empty());

    // `/v1/me` names the bucket, never the S3 bucket.
    for (who, name) in [(ADMIN, "media"), (BOB, "backups")] {
        let me = g
            .http
            .get(format!("{}/v1/me", g.url))
            .header("authorization", bearer(who))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&me).unwrap();
        assert_eq!(v["bucket"], name, "{me}");
        assert!(!me.contains("acme-"), "{me}");
    }
}

#[tokio::test]
async fn a_link_opens_its_key_in_its_own_bucket_only() {
    let g = two_bucket_gateway().await;
    for (who, body) in [(ADMIN, "media copy"), (BOB, "backups copy")] {
        let put = g.call(reqwest::Method::PUT, "doc.txt", who).body(body);
        assert_eq!(status_of(put).await, StatusCode::OK);
    }
    let bob_link = g
        .link(BOB, json!({"key": "doc.txt", "method": "GET"}))
        .await;
    assert!(bob_link.contains("bucket=backups"), "{bob_link}");
    let got = g.http.get(&bob_link).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), "backups copy");
    let admin_link = g
        .link(ADMIN, json!({"key": "doc.txt", "method": "GET"}))
        .await;
    assert_eq!(
        g.http
            .get(&admin_link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "media copy"
    );

    // The bucket is signed: naming the other one breaks the link.
    let forged = bob_link.replace("bucket=backups", "bucket=media");
    let resp = g.http.get(&forged).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "link_invalid", "{v}");

    // A PUT link from `/s3/upload-url` stores in the issuer's bucket.
    let v: Value = g
        .http
        .post(format!("{}/s3/upload-url", g.url))
        .header("authorization", bearer(BOB))
        .json(&json!({"key": "via-link.bin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}{}", g.url, v["url"].as_str().unwrap());
    let put = g.http.put(&url).body("linked").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(
        g.object_in(BACKUPS, "via-link.bin").await.as_deref(),
        Some(&b"linked"[..])
    );
    assert_eq!(g.object_in(MEDIA, "via-link.bin").await, None);

    // Moving bob to media is a reload; his links for backups die with the move, and what he
    // does next lands in media.
    let mut moved = g.config.clone();
    let bob = moved
        .principals
        .iter_mut()
        .find(|p| p.name == "bob")
        .unwrap();
    bob.bucket = Some("media".into());
    let notes = g.gateway.reload(&moved).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let resp = g.http.get(&bob_link).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(g.fetch("doc.txt", BOB).await, b"media copy");
}

#[tokio::test]
async fn adding_a_bucket_waits_for_a_restart_and_the_reload_says_so() {
    let g = two_bucket_gateway().await;
    let mut more = g.config.clone();
    more.buckets.push(portcullis::config::BucketConfig {
        name: "extra".into(),
        bucket: "acme-extra".into(),
        region: "us-east-1".into(),
        endpoint: None,
        force_path_style: false,
        sse: None,
        kms_key_id: None,
        part_size: portcullis::config::units::Size::mib(8),
        audit: Default::default(),
    });
    // The rest of the reload applies; the new bucket waits.
    let notes = g.gateway.reload(&more).unwrap();
    assert!(
        notes.iter().any(|n| n.starts_with("buckets changed")),
        "{notes:?}"
    );
    // A principal in a bucket that is not running is refused, naming it.
    let bob = more
        .principals
        .iter_mut()
        .find(|p| p.name == "bob")
        .unwrap();
    bob.bucket = Some("extra".into());
    let err = g.gateway.reload(&more).unwrap_err().to_string();
    assert!(
        err.contains("principals[") && err.contains("`extra`"),
        "{err}"
    );
    // And the gateway still serves bob in backups.
    let put = g.call(reqwest::Method::PUT, "still.txt", BOB).body("x");
    assert_eq!(status_of(put).await, StatusCode::OK);
    assert_eq!(g.keys_in(BACKUPS).await, ["still.txt"]);
}

#[tokio::test]
async fn the_log_and_metrics_carry_the_name_never_the_s3_bucket() {
    let g = two_bucket_gateway().await;
    let put = g.call(reqwest::Method::PUT, "m.txt", BOB).body("m");
    assert_eq!(status_of(put).await, StatusCode::OK);
    let missing = g.call(reqwest::Method::GET, "nothing-here", BOB);
    let resp = missing.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("acme-"), "{body}");
    eventually("the access log has both lines", || async {
        g.access_log_lines()
            .iter()
            .filter(|l| l["principal"] == "bob")
            .count()
            >= 2
    })
    .await;
    let lines = g.access_log_lines();
    for line in lines.iter().filter(|l| l["principal"] == "bob") {
        assert_eq!(line["bucket"], "backups", "{line}");
    }
    let text = std::fs::read_to_string(&g.access_log).unwrap();
    assert!(!text.contains("acme-"), "{text}");
    let metrics = portcullis::obs::metrics::render();
    let requests = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_requests_total{") && l.contains("bucket=\"backups\""));
    assert!(requests.is_some(), "{metrics}");
    let backend = metrics.lines().find(|l| {
        l.starts_with("portcullis_backend_seconds_count{") && l.contains("bucket=\"backups\"")
    });
    assert!(backend.is_some(), "{metrics}");
    assert!(
        !metrics.contains("acme-"),
        "the S3 bucket's name is never a label"
    );
}

#[tokio::test]
async fn buckets_on_one_endpoint_share_their_clients() {
    let g = two_bucket_gateway().await;
    let all: Vec<_> = g.buckets.iter().collect();
    assert_eq!(all.len(), 2);
    assert!(all[0].shares_clients_with(all[1]));
    assert_eq!(
        (
            all[0].name(),
            all[0].bucket(),
            all[1].name(),
            all[1].bucket()
        ),
        ("media", MEDIA, "backups", BACKUPS)
    );
}

#[tokio::test]
async fn readiness_and_the_sweep_are_per_bucket() {
    let g = two_bucket_gateway().await;
    // An abandoned multipart upload in each bucket; the sweep of one leaves the other's.
    for bucket in [MEDIA, BACKUPS] {
        g.s3.create_multipart_upload()
            .bucket(bucket)
            .key("left/behind.bin")
            .send()
            .await
            .unwrap();
    }
    // S3 reports when an upload began to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let backups = g.buckets.get("backups").unwrap();
    assert_eq!(
        backups
            .sweep_abandoned_uploads(Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );
    assert!(g.pending_in(BACKUPS).await.is_empty());
    assert_eq!(g.pending_in(MEDIA).await, ["left/behind.bin"]);

    // A bucket that does not answer makes `/readyz` say which one.
    let mut config = g.config.clone();
    config.buckets[1].bucket = "acme-not-there".into();
    let buckets = portcullis::relay::connect(
        &config,
        portcullis::relay::BackendSettings {
            endpoint: Some(format!("http://{}", g.s3_addr)),
            credentials: Some(g.s3_credentials.clone()),
        },
    )
    .await;
    let health = portcullis::admin::Health::new(&buckets);
    assert!(!health.check().await);
    assert!(!health.is_ready());
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    tokio::spawn(portcullis::admin::serve(
        admin,
        health.clone(),
        std::future::pending(),
    ));
    let err = portcullis::admin::probe(addr, "/readyz").await.unwrap_err();
    assert!(err.contains("503") && err.contains("backups"), "{err}");
    assert!(!err.contains("media") && !err.contains("acme-"), "{err}");
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let base = "[backend]\nkind = \"embedded\"\n";
    let errors = |text: &str| {
        portcullis::config::parse(text, Some(std::path::Path::new("b.toml")))
            .unwrap_err()
            .to_string()
    };
    // `[backend]` describing a bucket beside `[[buckets]]`.
    let e = errors(
        "[backend]\nkind = \"embedded\"\nbucket = \"one\"\nregion = \"eu-west-1\"\n\n[[buckets]]\nname = \"media\"\n",
    );
    assert!(e.starts_with("b.toml:3: backend.bucket: "), "{e}");
    assert!(e.contains("backend.region"), "{e}");
    // An unknown bucket for a principal and for JWTs.
    let e = errors(&format!(
        "{base}[[buckets]]\nname = \"media\"\n\n[[principals]]\nname = \"p\"\napi_keys = [\"{}\"]\nallow = [\"get\"]\nbucket = \"medai\"\n",
        hash_key(BOB)
    ));
    assert!(e.starts_with("b.toml:10: principals[0].bucket: "), "{e}");
    assert!(e.contains("`medai`") && e.contains("`media`"), "{e}");
    let e = errors(&format!(
        "{base}[jwt]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_env = \"PATH\"\nprefix_template = \"u/{{sub}}/\"\nbucket = \"nope\"\n"
    ));
    assert!(
        e.contains("jwt.bucket: `nope` is not one of the buckets (`files`)"),
        "{e}"
    );
    // Two buckets of one name; a name clients could not use.
    let e = errors(&format!(
        "{base}[[buckets]]\nname = \"media\"\n[[buckets]]\nname = \"media\"\nbucket = \"other\"\n[[buckets]]\nname = \"Media/x\"\n"
    ));
    assert!(
        e.contains("b.toml:6: buckets[1].name: `media` names two buckets"),
        "{e}"
    );
    assert!(e.contains("buckets[2].name: `Media/x`"), "{e}");
    // With the S3 door, every name must be one S3 clients send (and s3s parses): "fs" and
    // "my_media" serve `/v1` but no S3 client could name them.
    let door = "[s3_api]\nlisten = \"127.0.0.1:0\"\nsecrets_env = \"PATH\"\n";
    let e = errors(&format!(
        "{base}{door}[[buckets]]\nname = \"fs\"\n[[buckets]]\nname = \"my_media\"\nbucket = \"media\"\n[[buckets]]\nname = \"ok-name\"\n"
    ));
    assert!(
        e.contains("buckets[0].name: `fs` cannot be named by S3 clients"),
        "{e}"
    );
    assert!(
        e.contains("buckets[1].name: `my_media` cannot be named"),
        "{e}"
    );
    assert!(!e.contains("ok-name"), "{e}");
    // S3 buckets need their S3 name.
    let e = errors("[[buckets]]\nname = \"media\"\nregion = \"eu-west-1\"\n");
    assert!(e.contains("buckets[0].bucket: is required"), "{e}");
    // `[backend]` keeps what all buckets share.
    let ok = portcullis::config::parse(
        "[backend]\nkind = \"embedded\"\nconnect_timeout = \"2s\"\n[[buckets]]\nname = \"media\"\n[[buckets]]\nname = \"backups\"\n",
        None,
    )
    .unwrap();
    let names: Vec<_> = ok
        .config
        .bucket_configs()
        .iter()
        .map(|b| (b.name.clone(), b.bucket.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("media".to_owned(), "media".to_owned()),
            ("backups".to_owned(), "backups".to_owned())
        ]
    );
}
