//! Larger writes for HTTP/2 downloads.
//!
//! h2 writes one DATA frame at a time, 16 KiB (the most clients accept), and flushes after
//! each, so on its own a download over h2 goes out in 16 KiB `writev`s. On loopback a write's
//! cost is mostly the kernel's, whatever its size (sending, delivering, waking the reader):
//! that way a GET over h2c costs the gateway twice what it does over HTTP/1.1
//! (`docs/performance.md`).
//!
//! [`Coalesce`] sits under h2 and copies a frame-sized write into a buffer. A flush right
//! after it is put off once: the task is woken again, and h2, polled with nothing more to
//! write, flushes again, which writes the buffer out. While more frames are ready in the same
//! poll they gather, up to [`FULL`]. Small writes (headers, window updates, small answers) go
//! straight through when nothing is buffered, so small requests see no change; a write of at
//! least `FULL` goes straight through after what is buffered, so at most two batches are
//! held. The buffer is released once a burst has been written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write this large is a frame of a transfer: it may wait for the frames after it.
const BULK: usize = 8 * 1024;
/// Buffered bytes are written once they reach this.
pub(super) const FULL: usize = 64 * 1024;

pub(super) struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` has been written.
    sent: usize,
    /// Bytes were buffered since the last flush was put off.
    fresh: bool,
}

impl<T> Coalesce<T> {
    pub(super) fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            fresh: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the whole buffer; `release` frees it afterwards.
    fn poll_drain(&mut self, cx: &mut Context<'_>, release: bool) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if release {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // Room first; a write of `FULL` or more goes out on its own, after what is buffered,
        // so the buffer never holds more than two batches.
        if !this.buf.is_empty() && (this.buf.len() >= FULL || total >= FULL) {
            ready!(this.poll_drain(cx, false))?;
        }
        if this.buf.is_empty() && !(BULK..FULL).contains(&total) {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(FULL + BULK * 3);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        this.fresh = true;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.buf.len() {
            if this.fresh && this.buf.len() < FULL {
                // More frames may be ready in this same poll. h2 flushes again when polled
                // with nothing left to write, and this wake makes sure it is polled.
                this.fresh = false;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            let burst_over = !this.fresh;
            ready!(this.poll_drain(cx, burst_over))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx, true))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte arrives, in order, whatever the sizes and flushes, and a flush that was put
    /// off is done by the next one.
    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order() {
        let (a, mut b) = tokio::io::duplex(16 * 1024);
        let mut w = Coalesce::new(a);
        let sizes = [
            9,
            16 * 1024 + 9,
            16 * 1024 + 9,
            100,
            70 * 1024,
            13,
            16 * 1024 + 9,
            1024 * 1024,
            60 * 1024,
            5,
        ];
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut expected = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*size).map(|j| (i * 31 + j) as u8).collect();
            w.write_all(&chunk).await.unwrap();
            assert!(w.buf.len() < 2 * FULL, "{} bytes buffered", w.buf.len());
            w.flush().await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        // The last flush was put off; the next one writes.
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
    }

    /// A frame-sized write waits in the buffer for one flush, not two.
    #[tokio::test]
    async fn a_put_off_flush_is_done_by_the_next() {
        let (a, mut b) = tokio::io::duplex(1024 * 1024);
        let mut w = Coalesce::new(a);
        w.write_all(&[7u8; 16 * 1024]).await.unwrap();
        w.flush().await.unwrap();
        let mut got = vec![0u8; 16 * 1024];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read_exact(&mut got))
                .await
                .is_err(),
            "written before a second flush"
        );
        w.flush().await.unwrap();
        b.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 7));
        // Small writes go straight through.
        w.write_all(b"small").await.unwrap();
        let mut small = [0u8; 5];
        b.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"small");
    }
}
