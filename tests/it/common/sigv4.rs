//! A SigV4 signer of our own, as AWS documents it, for what no SDK sends (signed chunks, bad
//! trailers, unsigned headers). It is checked against AWS's published streaming example in
//! `door.rs`, so what it signs is what AWS would. The door benchmark uses it too.

#![allow(dead_code, unreachable_pub)]

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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
