//! Micro-benchmarks of the per-request hot path (criterion): the key check, the API-key
//! lookup, the policy decision, signed-link verification, sniffing, and the SigV4 signature
//! of a backend GET (the light path's signer next to aws-sigv4's general one).
//!
//!     cargo bench --bench hot_path

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portcullis::auth::{KeyTable, LinkGrant, LinkSigner, hash_key, parse_key_hash};
use portcullis::config::{PrincipalConfig, RateLimitConfig, units::Size};
use portcullis::limits::{Limits, sniff};
use portcullis::policy::{Action, ObjectKey, Principal};
use portcullis::relay::{EMPTY_PAYLOAD, Signer, reference_sign};

fn principal(name: &str, prefix: &str) -> Arc<Principal> {
    let c = PrincipalConfig {
        name: name.into(),
        allow: vec![Action::Get, Action::Put, Action::List, Action::Link],
        prefix: prefix.into(),
        ..Default::default()
    };
    Arc::new(Principal::from_config(
        &c,
        &Limits::new(Size::gib(5), vec!["*/*".parse().unwrap()]),
        &RateLimitConfig::default(),
    ))
}

fn hot_path(c: &mut Criterion) {
    let encoded = "users/alice/photos/2026/holiday%20in%20the%20mountains%20%281%29.jpg";
    c.bench_function("key check (decode once + rules)", |b| {
        b.iter(|| ObjectKey::from_path(black_box(encoded)).unwrap())
    });

    // 100 principals with 2 keys each; every hash is compared, in constant time.
    let mut table = KeyTable::default();
    for i in 0..100 {
        let p = principal(&format!("p{i}"), &format!("users/p{i}/"));
        let hashes = [
            parse_key_hash(&hash_key(&format!("key-{i}-a"))).unwrap(),
            parse_key_hash(&hash_key(&format!("key-{i}-b"))).unwrap(),
        ];
        table.insert(hashes, p);
    }
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer key-57-b".parse().unwrap());
    c.bench_function("auth lookup (200 key hashes)", |b| {
        b.iter(|| table.authenticate(black_box(&headers)).unwrap())
    });

    let alice = principal("alice", "users/alice/");
    let key = ObjectKey::from_path("users/alice/photos/a.jpg").unwrap();
    c.bench_function("policy decision", |b| {
        b.iter(|| {
            alice
                .authorize(black_box(Action::Get), black_box(&key))
                .unwrap()
        })
    });

    let signer = LinkSigner::new(
        vec![b"a-link-secret-of-at-least-32-bytes!!".to_vec()],
        Duration::from_secs(60),
        Duration::from_secs(900),
    );
    let grant = LinkGrant {
        method: Method::PUT,
        key: key.clone(),
        expires: 4_000_000_000,
        principal: "alice".into(),
        bucket: "files".into(),
        max_size: Some(10 << 20),
        content_type: Some("image/jpeg".into()),
        create_only: true,
    };
    let link = signer.sign(&grant);
    let query = link.split_once('?').unwrap().1.to_owned();
    c.bench_function("link verification", |b| {
        b.iter(|| {
            signer
                .verify(&Method::PUT, black_box(&key), black_box(&query), 1_000)
                .unwrap()
        })
    });

    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.resize(8192, 7);
    c.bench_function("sniff 8 KiB (declared image/png)", |b| {
        b.iter(|| sniff(black_box(Some("image/png")), black_box(&png)))
    });

    sigv4(c);
}

/// A backend GET as the light path sends it, signed by its signer and by aws-sigv4's `sign`
/// with the settings it used before.
fn sigv4(c: &mut Criterion) {
    use aws_smithy_runtime_api::client::identity::Identity;

    let identity: Arc<Identity> = Arc::new(
        aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "bench",
        )
        .into(),
    );
    let request = || {
        http::Request::get("http://127.0.0.1:9000/bench/users/alice/photos/a.jpg")
            .header("host", "127.0.0.1:9000")
            .body(())
            .unwrap()
    };
    let signer = Signer::new("us-east-1", "s3");
    c.bench_function("sigv4 GET (light path's signer)", |b| {
        b.iter(|| {
            let mut req = request();
            signer
                .sign(&mut req, &identity, EMPTY_PAYLOAD, SystemTime::now())
                .unwrap();
            req
        })
    });
    c.bench_function("sigv4 GET (aws-sigv4 sign)", |b| {
        b.iter(|| {
            let mut req = request();
            reference_sign(
                &mut req,
                &identity,
                "us-east-1",
                "s3",
                EMPTY_PAYLOAD,
                SystemTime::now(),
            )
            .unwrap();
            req
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
