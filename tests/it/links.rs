//! Signed links (SPEC section 5) against a real gateway and bucket: issue, use, tamper,
//! expire, constrain, rotate, revoke, and the presigned-URL-shaped routes.

use std::time::Duration;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_does_its_one_method_on_its_one_key() {
    let g = gateway_with_links("").await;
    let key = "users/alice/report (final) #1+2.txt";
    let put = g
        .link(
            ADMIN,
            json!({"key": key, "method": "PUT", "expires_in": 60}),
        )
        .await;
    // No Authorization header: the link is the credential.
    let resp = g.http.put(&put).body("hello").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(g.bucket_object(key).await.unwrap(), b"hello");

    let get = g.link(ADMIN, json!({"key": key, "method": "GET"})).await;
    let resp = g.http.get(&get).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), "hello");
    assert_eq!(
        g.http.head(&get).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Each link does only its method.
    let (s, code) = error_code(g.http.get(&put).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    let (s, code) = error_code(g.http.put(&get).body("x").send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    let (s, code) = error_code(g.http.delete(&get).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    // ... and only its key.
    let other = get.replace("final", "draft");
    let (s, code) = error_code(g.http.get(&other).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    assert_eq!(g.bucket_object(key).await.unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_any_field_invalidates_the_link() {
    // Failed links count against the client's address like failed keys; this test makes
    // many on purpose.
    let g = gateway_with_links(
        "[rate_limit]\nunauthenticated_per_ip = { requests_per_second = 1000, burst = 1000 }\n",
    )
    .await;
    let key = "users/alice/doc.txt";
    let link = g
        .link(
            ADMIN,
            json!({"key": key, "method": "PUT", "max_size": 100, "content_type": "text/plain", "create_only": true}),
        )
        .await;
    let (base, query) = link.split_once('?').unwrap();
    let fields: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let rebuild = |fields: &[(String, String)]| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            q.append_pair(k, v);
        }
        format!("{base}?{}", q.finish())
    };
    // The untouched link still works (proves the rebuild is faithful).
    let mut tampered = Vec::new();
    for i in 0..fields.len() {
        let mut f = fields.clone();
        let name = f[i].0.clone();
        let v = &mut f[i].1;
        *v = match name.as_str() {
            "method" => "GET".into(),
            "expires" => (v.parse::<u64>().unwrap() + 3600).to_string(),
            "principal" => "alice".into(),
            "bucket" => "elsewhere".into(),
            "max_size" => "1000000".into(),
            "content_type" => "text/html".into(),
            "create_only" => "0".into(),
            "sig" => {
                let mut s = v.clone().into_bytes();
                s[3] = if s[3] == b'A' { b'B' } else { b'A' };
                String::from_utf8(s).unwrap()
            }
            other => panic!("unexpected field {other}"),
        };
        tampered.push((fields[i].0.clone(), rebuild(&f)));
        // Dropping a field is tampering too.
        let mut dropped = fields.clone();
        dropped.remove(i);
        tampered.push((format!("without {}", fields[i].0), rebuild(&dropped)));
    }
    let mut extra = fields.clone();
    extra.push(("acl".into(), "public-read".into()));
    tampered.push(("an unknown parameter".into(), rebuild(&extra)));
    let mut twice = fields.clone();
    twice.push(fields[0].clone());
    tampered.push(("a repeated parameter".into(), rebuild(&twice)));
    tampered.push(("another key".into(), link.replace("doc.txt", "doc.txT")));
    assert!(tampered.len() >= 15);
    for (what, url) in tampered {
        let resp = g
            .http
            .put(&url)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        let (s, code) = error_code(resp).await;
        assert_eq!(
            (s, code.as_str()),
            (StatusCode::FORBIDDEN, "link_invalid"),
            "tampered: {what}"
        );
    }
    assert!(g.bucket_keys().await.is_empty());
    assert_eq!(
        status_of(
            g.http
                .put(rebuild(&fields))
                .header("content-type", "text/plain")
                .body("ok")
        )
        .await,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_link_expired() {
    let g = gateway_with_links("").await;
    let key = "users/alice/soon.txt";
    // A genuine link (the gateway's secret, admin's grant) whose time ran out a second ago:
    // signed here with its expiry in the past rather than waited for.
    let signer = portcullis::auth::LinkSigner::new(
        vec![LINK_SECRET.as_bytes().to_vec()],
        Duration::from_secs(60),
        Duration::from_secs(900),
    );
    let grant = |expires| portcullis::auth::LinkGrant {
        method: http::Method::PUT,
        key: portcullis::policy::ObjectKey::parse(key.into()).unwrap(),
        expires,
        principal: "admin".into(),
        bucket: "files".into(),
        max_size: None,
        content_type: None,
        create_only: false,
    };
    let now = portcullis::auth::unix_now();
    let expired = format!("{}{}", g.url, signer.sign(&grant(now - 1)));
    let (s, code) = error_code(g.http.put(&expired).body("late").send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_expired"));
    assert!(g.bucket_keys().await.is_empty());
    // The same grant an hour later is accepted: only the time differs.
    let live = format!("{}{}", g.url, signer.sign(&grant(now + 3600)));
    let resp = g.http.put(&live).body("in time").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_link_enforces_its_size_and_type_while_streaming() {
    let g = gateway_with_links("").await;
    let key = "users/alice/pic.png";
    let link = g
        .link(
            ADMIN,
            json!({"key": key, "method": "PUT", "max_size": 4096, "content_type": "image/png"}),
        )
        .await;
    // Over max_size: declared, and chunked (cut while streaming).
    let big = [PNG, &random_bytes(8192, 1)].concat();
    let (s, code) = error_code(g.http.put(&link).body(big.clone()).send().await.unwrap()).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(
        status_of(g.http.put(&link).body(chunked_body(big, 1024))).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The wrong declared type, and a lie the sniffer catches.
    assert_eq!(
        status_of(
            g.http
                .put(&link)
                .header("content-type", "text/plain")
                .body("text")
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        status_of(
            g.http
                .put(&link)
                .header("content-type", "image/png")
                .body(ELF.to_vec())
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert!(g.bucket_keys().await.is_empty());
    assert!(g.settle_uploads().await.is_empty());
    // Within the limits, and without a Content-Type: the link's type is used.
    let resp = g.http.put(&link).body(PNG.to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["content_type"], "image/png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_only_link_cannot_be_replayed_to_overwrite() {
    let g = gateway_with_links("").await;
    let key = "users/alice/once.txt";
    let link = g
        .link(
            ADMIN,
            json!({"key": key, "method": "PUT", "create_only": true}),
        )
        .await;
    let resp = g.http.put(&link).body("first").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (s, code) = error_code(g.http.put(&link).body("second").send().await.unwrap()).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );
    assert_eq!(g.bucket_object(key).await.unwrap(), b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_is_bounded_by_the_principal_and_max_ttl() {
    let g = gateway_with_links("").await;
    let post = |auth: &str, body: Value| {
        g.http
            .post(format!("{}/v1/links", g.url))
            .header("authorization", bearer(auth))
            .json(&body)
            .send()
    };
    // alice may not link; nobody links outside their prefix or beyond max_ttl.
    let alice = post(ALICE, json!({"key": "users/alice/a", "method": "GET"}));
    assert_eq!(alice.await.unwrap().status(), StatusCode::FORBIDDEN);
    let long = post(
        ADMIN,
        json!({"key": "a", "method": "GET", "expires_in": 901}),
    );
    assert_eq!(long.await.unwrap().status(), StatusCode::BAD_REQUEST);
    let odd = post(ADMIN, json!({"key": "a", "method": "DELETE"}));
    assert_eq!(odd.await.unwrap().status(), StatusCode::BAD_REQUEST);
    let get_size = post(ADMIN, json!({"key": "a", "method": "GET", "max_size": 1}));
    assert_eq!(get_size.await.unwrap().status(), StatusCode::BAD_REQUEST);
    let bad_key = post(ADMIN, json!({"key": "a/../b", "method": "GET"}));
    assert_eq!(bad_key.await.unwrap().status(), StatusCode::BAD_REQUEST);
    let unknown = post(ADMIN, json!({"key": "a", "method": "GET", "acl": "public"}));
    assert_eq!(unknown.await.unwrap().status(), StatusCode::BAD_REQUEST);
    let nobody = g
        .http
        .post(format!("{}/v1/links", g.url))
        .json(&json!({"key": "a", "method": "GET"}))
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), StatusCode::UNAUTHORIZED);
    // A link plus a header is ambiguous.
    let link = g.link(ADMIN, json!({"key": "a", "method": "GET"})).await;
    let both = g
        .http
        .get(&link)
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
    let resp = post(
        ADMIN,
        json!({"key": "a", "method": "GET", "expires_in": 900}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "GET");
    let at = humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let left = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(890) && left <= Duration::from_secs(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_revocation() {
    let g = gateway_with_links("").await;
    g.call(Method::PUT, "users/alice/r.txt", ADMIN)
        .body("kept")
        .send()
        .await
        .unwrap();
    let old = g
        .link(ADMIN, json!({"key": "users/alice/r.txt", "method": "GET"}))
        .await;
    let reload = |f: &dyn Fn(&mut portcullis::config::Config)| {
        let mut c = g.config.clone();
        f(&mut c);
        g.gateway.reload(&c).unwrap();
    };
    // Rotation: a new signing secret, the old one still listed: old links verify.
    reload(&|c| {
        c.links = Some(links_config(&[
            "new-secret-0123456789-0123456789-xyz",
            LINK_SECRET,
        ]))
    });
    assert_eq!(status_of(g.http.get(&old)).await, StatusCode::OK);
    let new = g
        .link(ADMIN, json!({"key": "users/alice/r.txt", "method": "GET"}))
        .await;
    assert_eq!(status_of(g.http.get(&new)).await, StatusCode::OK);
    // The old secret dropped: its links die, the new ones live.
    reload(&|c| c.links = Some(links_config(&["new-secret-0123456789-0123456789-xyz"])));
    let (s, code) = error_code(g.http.get(&old).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
    assert_eq!(status_of(g.http.get(&new)).await, StatusCode::OK);
    // The issuing principal loses `link`: every link it issued dies with it.
    reload(&|c| {
        c.links = Some(links_config(&["new-secret-0123456789-0123456789-xyz"]));
        c.principals[0]
            .allow
            .retain(|a| *a != portcullis::policy::Action::Link);
    });
    let (s, code) = error_code(g.http.get(&new).send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (StatusCode::FORBIDDEN, "link_invalid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_url_routes_return_links() {
    let g = gateway_with_links("").await;
    let resp = g
        .http
        .post(format!("{}/s3/upload-url", g.url))
        .header("authorization", bearer(ADMIN))
        .json(&json!({"key": "users/alice/up load.bin", "contentType": "application/octet-stream", "fileName": "ignored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    let url = format!("{}{}", g.url, v["url"].as_str().unwrap());
    let data = random_bytes(100_000, 4);
    assert_eq!(
        status_of(
            g.http
                .put(&url)
                .header("content-type", "application/octet-stream")
                .body(data.clone())
        )
        .await,
        StatusCode::OK
    );

    let resp = g
        .http
        .get(format!(
            "{}/s3/download-url?key={}",
            g.url,
            encode("users/alice/up load.bin")
        ))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    let url = format!("{}{}", g.url, v["url"].as_str().unwrap());
    let got = g
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), data);

    // The reader may get but not link; nobody gets a download link outside their prefix.
    assert_eq!(
        status_of(
            g.http
                .get(format!("{}/s3/download-url?key=users/alice/x", g.url))
                .header("authorization", bearer(READER))
        )
        .await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_signatures_never_reach_the_access_log() {
    let g = gateway_with_links("").await;
    let put = g
        .link(ADMIN, json!({"key": "users/alice/s.txt", "method": "PUT"}))
        .await;
    assert_eq!(status_of(g.http.put(&put).body("s")).await, StatusCode::OK);
    let tampered = put.replace("sig=", "sig=A");
    assert_eq!(
        status_of(g.http.put(&tampered).body("s")).await,
        StatusCode::FORBIDDEN
    );
    let sig = put.split("sig=").nth(1).unwrap().to_owned();
    eventually("the link requests are logged", || async {
        g.access_log_lines()
            .iter()
            .filter(|l| l["auth"] == "link")
            .count()
            >= 1
    })
    .await;
    let log = std::fs::read_to_string(&g.access_log).unwrap();
    assert!(!log.contains(&sig), "the signature is in the access log");
    assert!(!log.contains(ADMIN), "a key is in the access log");
    let line = g
        .access_log_lines()
        .into_iter()
        .find(|l| l["auth"] == "link" && l["status"] == 200)
        .unwrap();
    assert_eq!(line["principal"], "admin");
    assert_eq!(line["key"], "users/alice/s.txt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_no_header_can_carry_is_refused_when_the_link_is_issued() {
    let g = gateway_with_links("").await;
    let issue = |content_type: &'static str| {
        g.http
            .post(format!("{}/v1/links", g.url))
            .header("authorization", bearer(ADMIN))
            .json(&json!({"key": "ct/x", "method": "PUT", "content_type": content_type}))
            .send()
    };
    for bad in [
        "text/plain; a=\r\nSet-Cookie: x",
        "text/plain; a=\nb",
        "text/plain; a=\0",
        "text/plain; a=\u{7f}",
        "text/plain; charset=ütf-8",
    ] {
        let (status, code) = error_code(issue(bad).await.unwrap()).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad:?}"
        );
    }
    // A proper parameter is fine, and the link works.
    let resp = issue("text/plain; charset=utf-8").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    let url = format!("{}{}", g.url, v["url"].as_str().unwrap());
    let put = g
        .http
        .put(&url)
        .header("content-type", "text/plain; charset=utf-8")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(g.bucket_keys().await, vec!["ct/x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presigned_routes_take_what_a_classic_page_sends() {
    let dana = "dana-key-0123456789-abcdef";
    let principal = format!(
        "[[principals]]\nname = \"dana\"\napi_keys = [\"{}\"]\nallow = [\"get\", \"put\", \"link\"]\nprefix = \"users/dana/\"\n",
        portcullis::auth::hash_key(dana)
    );
    let g = gateway_tweaked(&principal, Relay::Direct, |c| {
        c.links = Some(links_config(&[LINK_SECRET]));
        c.server.public_url = Some("https://files.example.com/".into());
    })
    .await;
    let started = std::time::SystemTime::now();
    // A bare file name, an empty type (what File.type is for an unknown file), expiresIn.
    let resp = g
        .http
        .post(format!("{}/s3/upload-url", g.url))
        .header("authorization", bearer(dana))
        .json(&json!({"key": "photo 1.png", "contentType": "", "expiresIn": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["key"], "users/dana/photo 1.png");
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://files.example.com/v1/objects/users/dana/photo%201.png?"),
        "{url}"
    );
    let expires = humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires.duration_since(started).unwrap().as_secs();
    assert!((115..=125).contains(&ttl), "expiresIn honoured: {ttl}");
    // The link works on the gateway (its own address, as public_url would route it).
    let local = url.replace("https://files.example.com", &g.url);
    let put = g.http.put(&local).body("png?").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert!(
        put.headers().contains_key("etag"),
        "PUT answers carry an ETag"
    );
    // Download by the same bare name.
    let resp = g
        .http
        .get(format!(
            "{}/s3/download-url?key=photo%201.png&expiresIn=30",
            g.url
        ))
        .header("authorization", bearer(dana))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["key"], "users/dana/photo 1.png");
    let local = v["url"]
        .as_str()
        .unwrap()
        .replace("https://files.example.com", &g.url);
    assert_eq!(
        g.http
            .get(&local)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "png?"
    );
    // The issuing line names the key.
    eventually("the link lines name their key", || async {
        g.access_log_lines()
            .iter()
            .filter(|l| l["route"] == "link" && l["key"] == "users/dana/photo 1.png")
            .count()
            == 2
    })
    .await;
    // Outside the prefix on /v1: the 403 names the caller's own prefix.
    let resp = g
        .call(Method::PUT, "users/other/x", dana)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("users/dana/"),
        "{v}"
    );
}
