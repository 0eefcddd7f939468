//! Reads of 64 KiB for readers that ask for less.
//!
//! rustls reads the socket one TLS record at a time (at most about 16 KiB) and h2 about one
//! frame at a time, so on their own an upload over TLS or h2 takes a `recv` per 8-16 KiB,
//! where HTTP/1.1 in the clear takes one per 64 KiB; on loopback each costs about as much as the bytes it
//! brings (`docs/performance.md`). [`ReadAhead`] sits under such a reader. Reads go straight
//! through until one fills the reader's buffer (a request is usually smaller: it never
//! reads ahead); from then on a small read fills a 64 KiB buffer with what the socket has,
//! and the next reads are served from it, until one such fill brings less than 16 KiB. The
//! buffer is released whenever the socket has nothing more, so an idle connection holds
//! none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

const SIZE: usize = 64 * 1024;
/// A read ahead that brings less stops reading ahead.
const STREAMING: usize = 16 * 1024;

pub(super) struct ReadAhead<T> {
    inner: T,
    /// Bytes read from `inner` and not yet handed on.
    ahead: BytesMut,
    /// A read filled the reader's buffer: read ahead from now on, until a read ahead brings
    /// less than [`STREAMING`].
    streaming: bool,
}

impl<T> ReadAhead<T> {
    pub(super) fn new(inner: T) -> Self {
        Self::with_unread(&[], inner)
    }

    /// With `unread`, bytes already read from `inner` (the h2 preface), handed on first.
    pub(super) fn with_unread(unread: &[u8], inner: T) -> Self {
        Self {
            inner,
            ahead: BytesMut::from(unread),
            streaming: false,
        }
    }

    pub(super) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed on.
    pub(super) fn unread(&self) -> usize {
        self.ahead.len()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            if !this.streaming || out.remaining() >= SIZE {
                // Straight into the reader's buffer; one it fills is a sign of more to come.
                let room = out.remaining();
                let before = out.filled().len();
                let polled = Pin::new(&mut this.inner).poll_read(cx, out);
                if let Poll::Ready(Ok(())) = polled {
                    this.streaming = out.filled().len() - before == room;
                }
                return polled;
            }
            this.ahead.reserve(SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.ahead) {
                // Less than a TLS record or an h2 frame at once: not worth reading ahead.
                Poll::Ready(Ok(n)) => this.streaming = n >= STREAMING,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: an idle connection keeps no buffer.
                    this.ahead = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = this.ahead.len().min(out.remaining());
        out.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

write_through!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads, large reads and the end of the stream: every byte once, in order.
    #[tokio::test]
    async fn every_byte_arrives_once_in_order() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                for piece in data.chunks(20_000) {
                    a.write_all(piece).await.unwrap();
                }
            })
        };
        let mut r = ReadAhead::new(b);
        let mut got = Vec::new();
        let mut sizes = [5usize, 4096, 16 * 1024 + 5, SIZE, 3 * SIZE]
            .into_iter()
            .cycle();
        loop {
            let mut buf = vec![0u8; sizes.next().unwrap()];
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
        assert_eq!(r.unread(), 0);
    }

    /// Bytes already read (the h2 preface) come first, then the socket's.
    #[tokio::test]
    async fn unread_bytes_come_first() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = ReadAhead::with_unread(b"hello", b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    /// A read that fills the reader's buffer makes the next small read take all the socket
    /// has, up to 64 KiB; a read that does not fill it reads nothing ahead.
    #[tokio::test]
    async fn reads_ahead_once_a_read_fills_its_buffer() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(b);
        let mut buf = [0u8; 4096];
        a.write_all(&[1u8; 100]).await.unwrap();
        assert_eq!(r.read(&mut buf).await.unwrap(), 100);
        a.write_all(&[1u8; 100 * 1024]).await.unwrap();
        assert_eq!(r.read(&mut buf).await.unwrap(), 4096);
        assert_eq!(r.unread(), 0);
        assert_eq!(r.read(&mut buf).await.unwrap(), 4096);
        assert_eq!(r.unread(), SIZE - 4096);
    }
}
