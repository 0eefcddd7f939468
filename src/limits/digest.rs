//! Digests a client may send with an upload: `Content-MD5`, `x-amz-checksum-sha256`, and
//! `Repr-Digest` / `Content-Digest` with `sha-256` (RFC 9530). Parsed here, checked against the
//! streamed bytes by [`super::GuardedBody`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use super::ExpectedDigests;
use crate::error::{ApiError, Code};

/// The digests in `headers`; a malformed one is `400 bad_digest`. Every copy of a repeated
/// header, and every `sha-256` member of a dictionary, is read: they must all agree, since a
/// hop in front of us may have checked another copy than the one we would.
pub fn expected_digests(headers: &HeaderMap) -> Result<ExpectedDigests, ApiError> {
    let mut out = ExpectedDigests::default();
    let mut md5: Vec<[u8; 16]> = Vec::new();
    for v in headers.get_all("content-md5") {
        md5.push(
            decode::<16>(v.as_bytes())
                .ok_or_else(|| bad("Content-MD5 is not the base64 of 16 bytes"))?,
        );
    }
    out.md5 = agreed(&md5, "the Content-MD5 headers disagree with each other")?;
    let mut sha: Vec<[u8; 32]> = Vec::new();
    for v in headers.get_all("x-amz-checksum-sha256") {
        sha.push(
            decode::<32>(v.as_bytes())
                .ok_or_else(|| bad("x-amz-checksum-sha256 is not the base64 of 32 bytes"))?,
        );
    }
    for name in ["repr-digest", "content-digest"] {
        for v in headers.get_all(name) {
            let text = v
                .to_str()
                .map_err(|_| bad("a digest header is not ASCII"))?;
            sha.extend(rfc9530_sha256(text)?);
        }
    }
    out.sha256 = agreed(&sha, "the SHA-256 digests sent disagree with each other")?;
    Ok(out)
}

/// The one value all of `digests` hold, if any; several different ones are refused.
fn agreed<const N: usize>(
    digests: &[[u8; N]],
    disagree: &'static str,
) -> Result<Option<[u8; N]>, ApiError> {
    match digests.first() {
        Some(first) if digests.iter().any(|d| d != first) => Err(bad(disagree)),
        first => Ok(first.copied()),
    }
}

/// The `sha-256` members of an RFC 9530 digest dictionary, e.g. `sha-256=:X48E9q...=:`.
fn rfc9530_sha256(text: &str) -> Result<Vec<[u8; 32]>, ApiError> {
    let mut found = Vec::new();
    for member in text.split(',') {
        let Some((algorithm, value)) = member.trim().split_once('=') else {
            return Err(bad("a digest header is not `algorithm=:base64:`"));
        };
        if algorithm.trim().eq_ignore_ascii_case("sha-256") {
            let value = value.trim();
            let inner = value
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix(':'))
                .ok_or_else(|| bad("a sha-256 digest must be `:base64:`"))?;
            found.push(
                decode::<32>(inner.as_bytes())
                    .ok_or_else(|| bad("the sha-256 digest is not the base64 of 32 bytes"))?,
            );
        }
    }
    Ok(found)
}

fn decode<const N: usize>(b64: &[u8]) -> Option<[u8; N]> {
    STANDARD.decode(b64).ok()?.try_into().ok()
}

fn bad(message: &'static str) -> ApiError {
    ApiError::new(Code::BadDigest, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_each_form() {
        let md5 = STANDARD.encode([7u8; 16]);
        let sha = STANDARD.encode([9u8; 32]);
        let d = expected_digests(&headers(&[("content-md5", &md5)])).unwrap();
        assert_eq!(d.md5, Some([7u8; 16]));
        let d = expected_digests(&headers(&[("x-amz-checksum-sha256", &sha)])).unwrap();
        assert_eq!(d.sha256, Some([9u8; 32]));
        let d = expected_digests(&headers(&[(
            "repr-digest",
            &format!("sha-512=:AAAA:, sha-256=:{sha}:"),
        )]))
        .unwrap();
        assert_eq!(d.sha256, Some([9u8; 32]));
        assert!(expected_digests(&headers(&[])).unwrap().is_empty());
    }

    #[test]
    fn refuses_malformed_and_contradictory() {
        let sha = STANDARD.encode([9u8; 32]);
        let other = STANDARD.encode([1u8; 32]);
        for h in [
            headers(&[("content-md5", "nope")]),
            headers(&[("content-md5", &STANDARD.encode([1u8; 15]))]),
            headers(&[("x-amz-checksum-sha256", "!!")]),
            headers(&[("repr-digest", &format!("sha-256={sha}"))]),
            headers(&[("repr-digest", "garbage")]),
            headers(&[
                ("x-amz-checksum-sha256", &sha),
                ("repr-digest", &format!("sha-256=:{other}:")),
            ]),
            // Every copy of a repeated header counts, and every member.
            headers(&[
                ("x-amz-checksum-sha256", &sha),
                ("x-amz-checksum-sha256", &other),
            ]),
            headers(&[
                ("content-md5", &STANDARD.encode([7u8; 16])),
                ("content-md5", &STANDARD.encode([8u8; 16])),
            ]),
            headers(&[
                ("content-md5", &STANDARD.encode([7u8; 16])),
                ("content-md5", "bad"),
            ]),
            headers(&[(
                "repr-digest",
                &format!("sha-256=:{sha}:, sha-256=:{other}:"),
            )]),
        ] {
            let e = expected_digests(&h).unwrap_err();
            assert_eq!(e.code, Code::BadDigest);
        }
    }
}
