//! The console (SPEC section 8): a page at `GET /` to upload, list, download, share and
//! delete without writing code. Plain HTML, CSS and JavaScript compiled into the binary; it
//! talks to the public API and nothing else, under a CSP that allows only this origin.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

use crate::Body;

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("console.js"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("console.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("favicon.svg"),
    },
];

/// Only this origin's scripts, styles and API; no inline code, no framing, no plugins.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Whether `path` is one of the console's files.
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The response for a console file (`GET` or `HEAD`), `304` when the client has it.
pub fn serve<B>(path: &str, req: &http::Request<B>) -> Option<Response<Body>> {
    let request = req.headers();
    let with_body = req.method() != http::Method::HEAD;
    let index = ASSETS.iter().position(|a| a.path == path)?;
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let body = if fresh || !with_body {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body.as_bytes())
    };
    let mut resp = Response::new(Full::new(body).map_err(|e| match e {}).boxed());
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if !fresh {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    }
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is ASCII"),
    );
    // Revalidated on every load (cheap: 304), so a new binary's console is never stale.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(resp)
}

fn etags() -> &'static [String; ASSETS.len()] {
    static ETAGS: OnceLock<[String; ASSETS.len()]> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS.each_ref().map(|a| {
            let digest = Sha256::digest(a.body.as_bytes());
            format!("\"{}\"", hex::encode(&digest[..12]))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_revalidate() {
        let resp = serve("/", &http::Request::new(())).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let etag = resp.headers()[header::ETAG].clone();
        let mut again = http::Request::new(());
        again.headers_mut().insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("/", &again).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        assert!(serve("/nope", &again).is_none());
    }

    #[test]
    fn the_page_has_no_inline_code_and_no_foreign_origin() {
        let html = ASSETS[0].body;
        assert!(!html.contains("<script>") && !html.contains("style="));
        for a in ASSETS.iter().filter(|a| a.path != "/favicon.svg") {
            assert!(
                !a.body.contains("http://") && !a.body.contains("https://"),
                "{}",
                a.path
            );
        }
    }
}
