//! The S3 door under test: a gateway with `[s3_api]`, its access keys, an aws-sdk-s3 client
//! for it, and a SigV4 signer of our own for what no SDK sends (signed chunks, bad trailers,
//! unsigned headers). The signer is checked against AWS's published streaming example in
//! `door.rs`, so what it signs is what AWS would.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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

pub fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A SigV4 signer (header auth), as AWS documents it.
pub struct Signer {
    pub id: String,
    pub secret: String,
    pub region: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
}

impl Signer {
    pub fn now(id: &str, secret: &str) -> Self {
        Self::at(id, secret, std::time::SystemTime::now())
    }

    pub fn at(id: &str, secret: &str, t: std::time::SystemTime) -> Self {
        let t = time::OffsetDateTime::from(t);
        let amz_date = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        Self {
            id: id.into(),
            secret: secret.into(),
            region: "us-east-1".into(),
            amz_date,
        }
    }

    fn scope(&self) -> String {
        format!("{}/{}/s3/aws4_request", &self.amz_date[..8], self.region)
    }

    fn key(&self) -> Vec<u8> {
        let k = hmac(
            format!("AWS4{}", self.secret).as_bytes(),
            &self.amz_date.as_bytes()[..8],
        );
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, b"s3");
        hmac(&k, b"aws4_request")
    }

    fn sign(&self, string_to_sign: &str) -> String {
        hex::encode(hmac(&self.key(), string_to_sign.as_bytes()))
    }

    /// The `Authorization` header and the signature of a request whose signed headers are
    /// `headers` (lower-case names; `host` and `x-amz-date` included by the caller).
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> (String, String) {
        let mut hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        hs.sort();
        let canonical_headers: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = hs.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical =
            format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload_hash}");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{}\n{}",
            self.amz_date,
            self.scope(),
            hex_sha256(canonical.as_bytes())
        );
        let signature = self.sign(&to_sign);
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
                self.id,
                self.scope()
            ),
            signature,
        )
    }

    /// The signature of one chunk of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body.
    pub fn chunk_signature(&self, previous: &str, chunk: &[u8]) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{}\n{}",
            self.amz_date,
            self.scope(),
            hex_sha256(b""),
            hex_sha256(chunk)
        );
        self.sign(&to_sign)
    }

    /// The signature of the trailer section (`name:value\n`).
    pub fn trailer_signature(&self, previous: &str, trailers: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.amz_date,
            self.scope(),
            hex_sha256(trailers.as_bytes())
        );
        self.sign(&to_sign)
    }

    /// `data` as a signed aws-chunked body in chunks of `size`, after `seed`.
    pub fn signed_chunks(&self, seed: &str, data: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous = seed.to_owned();
        for chunk in data.chunks(size).chain(std::iter::once(&[][..])) {
            let sig = self.chunk_signature(&previous, chunk);
            out.extend(format!("{:x};chunk-signature={sig}\r\n", chunk.len()).as_bytes());
            out.extend(chunk);
            out.extend(b"\r\n");
            previous = sig;
        }
        out
    }
}

/// `data` as an unsigned aws-chunked body with one trailer (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
pub fn unsigned_chunks_with_trailer(data: &[u8], size: usize, trailer: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(size) {
        out.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend(chunk);
        out.extend(b"\r\n");
    }
    out.extend(format!("0\r\n{trailer}\r\n\r\n").as_bytes());
    out
}

/// CRC32 of `data`, base64, as `x-amz-checksum-crc32` carries it.
pub fn crc32_b64(data: &[u8]) -> String {
    let mut h = s3s::checksum::ChecksumHasher {
        crc32: Some(Default::default()),
        ..Default::default()
    };
    h.update(data);
    h.finalize().checksum_crc32.unwrap()
}

/// A signed request to the door, sent with reqwest; `headers` are signed, `unsigned` are
/// added after signing.
pub struct Sent {
    pub status: reqwest::StatusCode,
    pub code: Option<String>,
    pub body: String,
}

// Each argument is one part of the request the tests vary; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn send_signed(
    gw: &TestGateway,
    signer: &Signer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    unsigned: &[(&str, &str)],
    payload_hash: &str,
    body: impl FnOnce(&str) -> Vec<u8>,
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
    let body = resp.text().await.unwrap_or_default();
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .map(str::to_owned);
    Sent { status, code, body }
}
