//! The S3 door under test: a gateway with `[s3_api]`, its access keys, an aws-sdk-s3 client
//! for it, and requests signed by hand (`sigv4.rs`) for what no SDK sends (signed chunks, bad
//! trailers, unsigned headers).

use super::*;

/// The door's master secret in tests.
pub const MASTER: &str = "door-master-secret-0123456789-abcdefghijkl";
pub const ADMIN_AK: &str = "PCAKADMIN0000000000A";
pub const ALICE_AK: &str = "PCAKALICE0000000000A";
pub const READER_AK: &str = "PCAKREADER000000000A";

/// The secret of access key `id`.
pub fn secret_of(id: &str) -> String {
    portcullis::auth::access_keys::derive_secret(MASTER.as_bytes(), id)
}

/// `[s3_api]` on 127.0.0.1:0 with the test master secret.
pub fn door_config() -> portcullis::config::S3ApiConfig {
    portcullis::config::S3ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        secrets_env: None,
        region: "us-east-1".into(),
        max_presign_ttl: portcullis::config::units::Span::secs(3600),
        domain: None,
        secret: Some(MASTER.into()),
    }
}

/// The test gateway with the door open and an access key for admin, alice and reader.
pub async fn door_gateway(extra: &str) -> TestGateway {
    door_gateway_tweaked(extra, |_| {}).await
}

pub async fn door_gateway_tweaked(
    extra: &str,
    tweak: impl FnOnce(&mut portcullis::config::Config),
) -> TestGateway {
    gateway_tweaked(extra, Relay::Direct, |c| {
        c.s3_api = Some(door_config());
        for p in &mut c.principals {
            let id = match p.name.as_str() {
                "admin" => ADMIN_AK,
                "alice" => ALICE_AK,
                "reader" => READER_AK,
                _ => continue,
            };
            p.s3_access_keys.push(id.into());
        }
        tweak(c);
    })
    .await
}

/// An aws-sdk-s3 client for the door with access key `id` (path style, us-east-1).
pub fn door_client(gw: &TestGateway, id: &str) -> aws_sdk_s3::Client {
    door_client_with(gw, id, &secret_of(id), "us-east-1")
}

pub fn door_client_with(
    gw: &TestGateway,
    id: &str,
    secret: &str,
    region: &str,
) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(id, secret, None, None, "test");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(gw.door_url.clone().expect("the door is open"))
        .region(aws_sdk_s3::config::Region::new(region.to_owned()))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// `client` without retries: SDKs retry `SlowDown` and `503`s on their own.
pub fn one_attempt(client: &aws_sdk_s3::Client) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// The S3 error code of a failed SDK call.
pub fn s3_code<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(e) => e.code().unwrap_or("?").to_owned(),
        None => format!("{err:?}"),
    }
}

/// A signed request to the door, sent with reqwest; `headers` are signed, `unsigned` are
/// added after signing.
pub struct Sent {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub code: Option<String>,
    pub body: String,
}

// Each argument is one part of the request the tests vary; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn send_signed<B: Into<reqwest::Body>>(
    gw: &TestGateway,
    signer: &Signer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    unsigned: &[(&str, &str)],
    payload_hash: &str,
    body: impl FnOnce(&str) -> B,
) -> Sent {
    let url = gw.door_url.clone().unwrap();
    let host = url.trim_start_matches("http://").to_owned();
    let mut signed: Vec<(&str, &str)> = vec![
        ("host", host.as_str()),
        ("x-amz-date", signer.amz_date.as_str()),
        ("x-amz-content-sha256", payload_hash),
    ];
    signed.extend_from_slice(headers);
    let (authorization, seed) = signer.authorization(method, path, "", &signed, payload_hash);
    let body = body(&seed);
    let mut req = gw
        .http
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .header("authorization", authorization);
    for (k, v) in signed.iter().chain(unsigned) {
        if *k != "host" {
            req = req.header(*k, *v);
        }
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .map(str::to_owned);
    Sent {
        status,
        headers,
        code,
        body,
    }
}
