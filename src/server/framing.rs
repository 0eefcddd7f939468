//! HTTP/1.1 request framing followed as the bytes arrive, to learn what hyper does not tell:
//! a head with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper reads such a request by `Transfer-Encoding` (RFC 9112 section 6.3 allows it), drops
//! `Content-Length` and closes the connection after the answer; the service never learns there
//! were two framings. A hop in front of us may have read the other one, so the SPEC (section 6)
//! wants `400` and a close, as nginx and Envoy answer. [`Framing`] follows the bytes a
//! connection reads (each head parsed with httparse, bodies skipped by their length or chunk
//! sizes, never copied) and keeps, for each request head in order, whether it had both. Once
//! it meets something it cannot follow it stops, and says "no" from then on: hyper refuses
//! such a request itself.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Longest head (or chunk-size or trailer line) followed; hyper refuses longer heads (`431`).
const MAX_LINE: usize = 64 * 1024;
/// What a follower keeps of its head buffer between requests.
const SMALL_HEAD: usize = 1024;
/// Headers a head may have for httparse here (hyper's own limit is 100).
const MAX_HEADERS: usize = 128;

/// The framing of one HTTP/1.1 connection's requests, shared by its reader and its service.
#[derive(Debug, Default)]
pub(super) struct Framing {
    follower: Mutex<Follower>,
}

impl Framing {
    /// Bytes the connection read from its peer, in order.
    pub(super) fn read(&self, bytes: &[u8]) {
        if let Ok(mut f) = self.follower.lock() {
            f.feed(bytes);
        }
    }

    /// Whether the next request hyper hands over had both `Content-Length` and
    /// `Transfer-Encoding`.
    pub(super) fn next_is_ambiguous(&self) -> bool {
        self.follower
            .lock()
            .ok()
            .and_then(|mut f| f.verdicts.pop_front())
            .unwrap_or(false)
    }
}

#[derive(Debug, Default)]
struct Follower {
    at: At,
    /// The head or line being gathered.
    pending: Vec<u8>,
    /// One per head seen and not yet handed over: had it both framings?
    verdicts: VecDeque<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum At {
    /// A request head.
    #[default]
    Head,
    /// A body of known length: bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// A chunk's data and its CRLF: bytes left.
    ChunkData(u64),
    /// The trailer section after the last chunk.
    Trailers,
    /// Lost: follows no more.
    Lost,
}

impl Follower {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.at {
                At::Lost => return,
                At::Body(left) | At::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.at = match (self.at, left) {
                        (At::Body(_), 0) => At::Head,
                        (At::Body(_), l) => At::Body(l),
                        (_, 0) => At::ChunkSize,
                        (_, l) => At::ChunkData(l),
                    };
                }
                At::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 section 2.2).
                    if self.pending.is_empty() {
                        let skip = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n');
                        bytes = &bytes[skip.count()..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    let Some(used) = self.gather(bytes, head_end) else {
                        return;
                    };
                    bytes = &bytes[used..];
                    self.head();
                }
                At::ChunkSize | At::Trailers => {
                    let Some(used) = self.gather(bytes, line_end) else {
                        return;
                    };
                    bytes = &bytes[used..];
                    self.line();
                }
            }
        }
    }

    /// Adds bytes to `pending` up to the end `end` finds; returns how many of `bytes` it
    /// took, or `None` when it took them all and the end is still to come.
    fn gather(&mut self, bytes: &[u8], end: fn(&[u8], usize) -> Option<usize>) -> Option<usize> {
        let from = self.pending.len().saturating_sub(3);
        let had = self.pending.len();
        self.pending.extend_from_slice(bytes);
        match end(&self.pending, from) {
            Some(e) => {
                self.pending.truncate(e);
                Some(e - had)
            }
            None => {
                if self.pending.len() > MAX_LINE {
                    self.lose();
                }
                None
            }
        }
    }

    fn head(&mut self) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&self.pending), Ok(httparse::Status::Complete(_))) {
            return self.lose();
        }
        let mut length = None;
        let mut chunked = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let Some(n) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                else {
                    return self.lose();
                };
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        self.verdicts.push_back(chunked && length.is_some());
        self.pending.clear();
        // A parked connection keeps this follower: it holds no large head's buffer.
        self.pending.shrink_to(SMALL_HEAD);
        self.at = match (chunked, length) {
            (true, _) => At::ChunkSize,
            (false, Some(n)) if n > 0 => At::Body(n),
            _ => At::Head,
        };
    }

    fn line(&mut self) {
        let at = self.at;
        let line = std::mem::take(&mut self.pending);
        self.at = match at {
            At::ChunkSize => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => At::Trailers,
                Ok(httparse::Status::Complete((_, size))) => match size.checked_add(2) {
                    Some(n) => At::ChunkData(n),
                    None => return self.lose(),
                },
                _ => return self.lose(),
            },
            // A blank line ends the trailers, and the request.
            _ if line == b"\r\n" || line == b"\n" => At::Head,
            _ => At::Trailers,
        };
        self.pending = line;
        self.pending.clear();
    }

    fn lose(&mut self) {
        self.at = At::Lost;
        self.pending = Vec::new();
    }
}

/// The end of a head: just past its blank line (`\r\n\r\n`, or bare `\n`s).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let lf = i + p;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// The end of a line: just past its `\n`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|p| from + p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdicts(wire: &[u8], pieces: usize) -> Vec<bool> {
        let f = Framing::default();
        for piece in wire.chunks(pieces.max(1)) {
            f.read(piece);
        }
        f.follower
            .lock()
            .unwrap()
            .verdicts
            .iter()
            .copied()
            .collect()
    }

    const PIPELINE: &[u8] = b"PUT /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: t\r\n\r\n\
PUT /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nworld\r\n3;ext=1\r\n\r\n\r\r\n0\r\nX-Trailer: 1\r\n\r\n\
PUT /d HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
0\r\n\r\n";

    #[test]
    fn follows_bodies_and_finds_both_framings() {
        for pieces in [1, 2, 3, 7, 64, PIPELINE.len()] {
            assert_eq!(
                verdicts(PIPELINE, pieces),
                vec![false, false, false, true],
                "in pieces of {pieces}"
            );
        }
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_skipped() {
        let body =
            b"\r\n\r\nPUT /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut wire = format!(
            "PUT /a HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(body);
        wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(verdicts(&wire, 5), vec![false, false]);
    }

    #[test]
    fn what_it_cannot_follow_stops_it() {
        let f = Framing::default();
        f.read(b"PUT /a HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        f.read(b"PUT /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!f.next_is_ambiguous());
        assert!(!f.next_is_ambiguous());
        assert_eq!(f.follower.lock().unwrap().at, At::Lost);
    }

    proptest! {
        #[test]
        fn never_panics(wire in prop::collection::vec(any::<u8>(), 0..512), piece in 1usize..40) {
            let _ = verdicts(&wire, piece);
        }
    }
}
