//! Identity at the edge, against a real gateway and bucket: bearer JWTs of every kind, TLS
//! (h2 and http/1.1 by ALPN), client certificates (mTLS), and CORS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode, Version};
use serde_json::{Value, json};

const ISSUER: &str = "https://id.test/";
const AUDIENCE: &str = "portcullis";

/// An identity provider's keys: RSA (kid `rsa1`) and P-256 (kid `ec1`), published as a JWKS
/// file the gateway reads.
struct Idp {
    _dir: tempfile::TempDir,
    jwks: std::path::PathBuf,
    rsa: EncodingKey,
    rsa_public_pem: String,
    ec: EncodingKey,
}

impl Idp {
    fn new() -> Self {
        use rcgen::{KeyPair, PublicKeyData};
        use x509_parser::prelude::FromDer;
        use x509_parser::public_key::PublicKey;
        use x509_parser::x509::SubjectPublicKeyInfo;

        let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let spki = rsa.subject_public_key_info();
        let (_, info) = SubjectPublicKeyInfo::from_der(&spki).unwrap();
        let PublicKey::RSA(pk) = info.parsed().unwrap() else {
            panic!("not RSA")
        };
        let unsigned = |b: &[u8]| {
            let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
            URL_SAFE_NO_PAD.encode(&b[first..])
        };
        let ec = KeyPair::generate().unwrap();
        let point = ec.public_key_raw();
        assert_eq!(point.len(), 65);
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
             "n": unsigned(pk.modulus), "e": unsigned(pk.exponent)},
            {"kty": "EC", "kid": "ec1", "use": "sig", "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
        ]});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let rsa_public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        Self {
            _dir: dir,
            jwks: path,
            rsa: EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap(),
            rsa_public_pem,
            ec: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        }
    }

    fn toml(&self) -> String {
        format!(
            "[jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\n\
             prefix_template = \"users/{{sub}}/\"\nallow = [\"get\", \"put\", \"list\"]\n",
            self.jwks.display()
        )
    }

    fn rs256(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa1".into());
        jsonwebtoken::encode(&h, claims, &self.rsa).unwrap()
    }

    fn es256(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ec1".into());
        jsonwebtoken::encode(&h, claims, &self.ec).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "nbf": now() - 5})
}

fn with(mut c: Value, field: &str, value: Value) -> Value {
    c[field] = value;
    c
}

fn without(mut c: Value, field: &str) -> Value {
    c.as_object_mut().unwrap().remove(field);
    c
}

/// A token with a hand-made header and no real signature.
fn unsigned_token(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_from_the_identity_provider_are_principals_with_their_own_prefix() {
    let idp = Idp::new();
    let g = gateway(&idp.toml()).await;
    let rs = idp.rs256(&claims("carol"));
    assert_eq!(
        status_of(
            g.call(Method::PUT, "users/carol/notes.txt", &rs)
                .body("mine")
        )
        .await,
        StatusCode::OK
    );
    // Confined to users/carol/.
    assert_eq!(
        status_of(
            g.call(Method::PUT, "users/alice/notes.txt", &rs)
                .body("theirs")
        )
        .await,
        StatusCode::FORBIDDEN
    );
    // Only the allowed actions.
    assert_eq!(
        status_of(g.call(Method::DELETE, "users/carol/notes.txt", &rs)).await,
        StatusCode::FORBIDDEN
    );
    // ES256 from the same JWKS; within the clock-skew allowance a just-expired token passes.
    let es = idp.es256(&with(claims("carol"), "exp", json!(now() - 10)));
    assert_eq!(g.fetch("users/carol/notes.txt", &es).await, b"mine");
    // An API key still works beside JWTs.
    assert_eq!(g.fetch("users/carol/notes.txt", ADMIN).await, b"mine");
    eventually("the JWT requests are logged", || async {
        g.access_log_lines().iter().any(|l| l["auth"] == "jwt")
    })
    .await;
    let line = g
        .access_log_lines()
        .into_iter()
        .find(|l| l["auth"] == "jwt")
        .unwrap();
    // JWT principals have their own namespace.
    assert_eq!(line["principal"], "jwt:carol");
    let log = std::fs::read_to_string(&g.access_log).unwrap();
    for token in [&rs, &es] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a JWT is in the access log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_jwt_is_refused() {
    let idp = Idp::new();
    let g = gateway(&format!(
        "{}[rate_limit]\nunauthenticated_per_ip = {{ requests_per_second = 1000, burst = 1000 }}\n",
        idp.toml()
    ))
    .await;
    g.call(Method::PUT, "users/carol/x", ADMIN)
        .body("x")
        .send()
        .await
        .unwrap();
    let good = claims("carol");
    let mut confusion_header = Header::new(Algorithm::HS256);
    confusion_header.kid = Some("rsa1".into());
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("rsa9".into());
    let valid = idp.rs256(&good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            idp.rs256(&with(good.clone(), "exp", json!(now() - 120))),
        ),
        (
            "not yet valid",
            idp.rs256(&with(good.clone(), "nbf", json!(now() + 300))),
        ),
        (
            "wrong audience",
            idp.rs256(&with(good.clone(), "aud", json!("other"))),
        ),
        (
            "wrong issuer",
            idp.rs256(&with(good.clone(), "iss", json!("https://evil.test/"))),
        ),
        ("no exp", idp.rs256(&without(good.clone(), "exp"))),
        ("no aud", idp.rs256(&without(good.clone(), "aud"))),
        ("no iss", idp.rs256(&without(good.clone(), "iss"))),
        ("no sub", idp.rs256(&without(good.clone(), "sub"))),
        (
            "a sub that climbs out",
            idp.rs256(&with(good.clone(), "sub", json!("../alice"))),
        ),
        (
            "alg none",
            unsigned_token(json!({"alg": "none", "typ": "JWT"}), &good),
        ),
        (
            "alg None",
            unsigned_token(json!({"alg": "None", "kid": "rsa1"}), &good),
        ),
        (
            "HS256 signed with the RSA public key",
            jsonwebtoken::encode(
                &confusion_header,
                &good,
                &EncodingKey::from_secret(idp.rsa_public_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        (
            "unknown kid",
            jsonwebtoken::encode(&unknown_kid, &good, &idp.rsa).unwrap(),
        ),
        (
            "claims swapped under a valid signature",
            format!(
                "{head}.{}.{sig}",
                URL_SAFE_NO_PAD.encode(with(good.clone(), "sub", json!("admin")).to_string())
            ),
        ),
        ("RS256 header on an ES256 key", {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some("ec1".into());
            jsonwebtoken::encode(&h, &good, &idp.rsa).unwrap()
        }),
    ];
    for (what, token) in cases {
        let resp = g
            .call(Method::GET, "users/carol/x", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(resp.headers().contains_key("www-authenticate"), "{what}");
    }
    // The same valid token works (the refusals were about the tokens, not the setup).
    assert_eq!(g.fetch("users/carol/x", &valid).await, b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h2_and_http1_by_alpn() {
    let pki = Pki::new();
    let g = gateway(&pki.toml(None)).await;
    assert!(g.url.starts_with("https://"));
    let h2 = pki.client(None, false);
    let resp = h2
        .put(g.object_url("users/alice/t.bin"))
        .header("authorization", bearer(ALICE))
        .body(random_bytes(300_000, 9))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let h1 = pki.client(None, true);
    for (client, version) in [(&h2, Version::HTTP_2), (&h1, Version::HTTP_11)] {
        let resp = client
            .get(g.object_url("users/alice/t.bin"))
            .header("authorization", bearer(ALICE))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        assert_eq!(
            resp.bytes().await.unwrap().to_vec(),
            random_bytes(300_000, 9)
        );
    }
    // Uploads are read 64 KiB ahead under rustls (`server/read_ahead.rs`): large and small
    // ones arrive whole on both protocols, and a connection parked after one (idle past
    // 500 ms) serves the next request.
    for (client, size) in [
        (&h1, 5 * 1024 * 1024 + 3),
        (&h2, 3 * 1024 * 1024 + 1),
        (&h1, 10),
    ] {
        let resp = client
            .put(g.object_url("users/alice/big.bin"))
            .header("authorization", bearer(ALICE))
            .body(random_bytes(size, 11))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            g.bucket_object("users/alice/big.bin").await.as_deref(),
            Some(&random_bytes(size, 11)[..])
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Plain HTTP to the TLS listener gets nothing useful.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v1/objects/users/alice/t.bin", g.addr))
        .header("authorization", bearer(ALICE))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// A principal identified by its client certificate.
const DAVE: &str = r#"
[[principals]]
name = "dave"
client_cert_subjects = ["CN=dave, O=Example"]
allow = ["get", "put"]
prefix = "users/dave/"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_principals() {
    let pki = Pki::new();
    let g = gateway(&format!("{}{DAVE}", pki.toml(Some("optional")))).await;
    let dave = pki.client(Some(&pki.client_pem("dave")), false);
    assert_eq!(
        status_of(dave.put(g.object_url("users/dave/d.txt")).body("by cert")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(dave.put(g.object_url("users/alice/d.txt")).body("no")).await,
        StatusCode::FORBIDDEN
    );
    // A trusted certificate that maps to no principal is not enough.
    let erin = pki.client(Some(&pki.client_pem("erin")), false);
    assert_eq!(
        status_of(erin.get(g.object_url("users/dave/d.txt"))).await,
        StatusCode::UNAUTHORIZED
    );
    // A certificate from a CA the gateway does not trust fails the handshake.
    let stranger = pki.client(Some(&stranger_client_pem("dave")), false);
    assert!(
        stranger
            .get(g.object_url("users/dave/d.txt"))
            .send()
            .await
            .is_err()
    );
    // Optional: a client without a certificate still uses a key.
    let anonymous = pki.client(None, false);
    assert_eq!(
        status_of(
            anonymous
                .get(g.object_url("users/dave/d.txt"))
                .header("authorization", bearer(ADMIN))
        )
        .await,
        StatusCode::OK
    );
    eventually("the mTLS request is logged", || async {
        g.access_log_lines()
            .iter()
            .any(|l| l["auth"] == "mtls" && l["principal"] == "dave")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_that_only_prints_like_a_principal_is_not_it_and_sans_identify() {
    use rcgen::{DistinguishedName, DnType, SanType};
    let pki = Pki::new();
    let scanner = r#"
[[principals]]
name = "scanner"
client_cert_subjects = ["CN=scanner,O=Example"]
client_cert_sans = ["uri:spiffe://example.org/ns/ci/scanner"]
allow = ["get", "put"]
prefix = "scans/"
"#;
    let g = gateway(&format!("{}{scanner}", pki.toml(Some("optional")))).await;
    let with_dn = |pairs: &[(DnType, &str)], sans: Vec<SanType>| {
        let mut dn = DistinguishedName::new();
        for (t, v) in pairs {
            dn.push(t.clone(), *v);
        }
        pki.client(Some(&pki.client_pem_with(dn, sans)), false)
    };
    let put = |client: reqwest::Client, name: &'static str| {
        let url = g.object_url(&format!("scans/{name}"));
        async move { status_of(client.put(url).body("x")).await }
    };
    // The real subject: two RDNs.
    let real = with_dn(
        &[
            (DnType::CommonName, "scanner"),
            (DnType::OrganizationName, "Example"),
        ],
        vec![],
    );
    assert_eq!(put(real, "real").await, StatusCode::OK);
    // One CN holding the whole text is someone else.
    let forged = with_dn(&[(DnType::CommonName, "scanner,O=Example")], vec![]);
    assert_eq!(put(forged, "forged").await, StatusCode::UNAUTHORIZED);
    // A SPIFFE ID as a URI SAN identifies too, whatever the subject.
    let spiffe = with_dn(
        &[(DnType::CommonName, "workload-7f3a")],
        vec![SanType::URI(
            "spiffe://example.org/ns/ci/scanner".try_into().unwrap(),
        )],
    );
    assert_eq!(put(spiffe, "by-san").await, StatusCode::OK);
    let other_id = with_dn(
        &[(DnType::CommonName, "workload-7f3a")],
        vec![SanType::URI(
            "spiffe://example.org/ns/ci/other".try_into().unwrap(),
        )],
    );
    assert_eq!(put(other_id, "other").await, StatusCode::UNAUTHORIZED);
    assert_eq!(g.bucket_keys().await, vec!["scans/by-san", "scans/real"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_refuses_clients_without_one() {
    let pki = Pki::new();
    let g = gateway(&format!("{}{DAVE}", pki.toml(Some("required")))).await;
    let anonymous = pki.client(None, true);
    assert!(
        anonymous
            .get(g.object_url("users/dave/d.txt"))
            .header("authorization", bearer(ADMIN))
            .send()
            .await
            .is_err()
    );
    let dave = pki.client(Some(&pki.client_pem("dave")), true);
    assert_eq!(
        status_of(dave.put(g.object_url("users/dave/d.txt")).body("by cert")).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_listed_origins_only() {
    let g = gateway("[cors]\nallowed_origins = [\"https://app.example.com\"]\nmax_age = \"10m\"\n")
        .await;
    let preflight = |origin: &str| {
        g.http
            .request(Method::OPTIONS, g.object_url("users/alice/c.txt"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let resp = preflight("https://app.example.com").await.unwrap();
    assert!(resp.status().is_success());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-max-age"], "600");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert!(!h.contains_key("access-control-allow-credentials"));

    let resp = preflight("https://evil.example.com").await.unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    // Refused, and the log says so, with the origin.
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    eventually("the refused preflight is logged", || async {
        g.access_log_lines().iter().any(|l| {
            l["method"] == "OPTIONS"
                && l["error_code"] == "cors_refused"
                && l["origin"] == "https://evil.example.com"
                && l["status"] == 403
        })
    })
    .await;

    // The real request: ETag exposed to the listed origin; nothing for another.
    let resp = g
        .call(Method::PUT, "users/alice/c.txt", ALICE)
        .header("origin", "https://app.example.com")
        .body("cors")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("etag"), "{exposed}");
    let resp = g
        .call(Method::GET, "users/alice/c.txt", ALICE)
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    // Errors carry CORS headers too, so a browser app can read them.
    let resp = g
        .call(Method::GET, "users/alice/c.txt", "wrong")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("access-control-allow-origin"));
}

#[test]
fn cors_star_with_credentials_is_refused_at_load() {
    let toml = "[backend]\nkind = \"embedded\"\n[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n";
    let err = portcullis::config::parse(toml, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cors.allowed_origins"), "{err}");
    assert!(err.contains("allow_credentials"), "{err}");
    let ok = "[backend]\nkind = \"embedded\"\n[cors]\nallowed_origins = [\"*\"]\n";
    assert!(portcullis::config::parse(ok, None).is_ok());
}

#[tokio::test]
async fn jwt_principals_work_in_the_bucket_jwt_names() {
    use crate::buckets::{BACKUPS, MEDIA, two_buckets};
    let idp = Idp::new();
    let extra = format!(
        "{}bucket = \"backups\"\n{}",
        idp.toml(),
        two_buckets("media")
    );
    let g = gateway(&extra).await;
    let rs = idp.rs256(&claims("carol"));
    let put = g
        .call(Method::PUT, "users/carol/notes.txt", &rs)
        .body("mine");
    assert_eq!(status_of(put).await, StatusCode::OK);
    assert_eq!(g.keys_in(BACKUPS).await, ["users/carol/notes.txt"]);
    assert!(g.keys_in(MEDIA).await.is_empty());
    let me: Value = g
        .http
        .get(format!("{}/v1/me", g.url))
        .header("authorization", format!("Bearer {rs}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["bucket"], "backups");
}
