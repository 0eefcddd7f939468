//! `bytes_per_second`: a principal's bodies, both directions, delayed to its byte rate
//! (GCRA with governor, counted in KiB). It only ever delays; it never drops or reorders
//! bytes. A frame larger than the burst is passed on in pieces.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

const UNIT: usize = 1024;

/// One principal's byte budget, shared by all its transfers.
#[derive(Debug)]
pub struct ByteRate {
    limiter: DefaultDirectRateLimiter,
    /// The most KiB one check may ask for.
    burst: u32,
}

impl ByteRate {
    /// `bytes_per_second`, with one second's worth of burst (at least 1 KiB).
    pub fn new(bytes_per_second: u64) -> Self {
        let kib = u32::try_from((bytes_per_second / UNIT as u64).max(1)).unwrap_or(u32::MAX);
        let per_second = NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: DefaultDirectRateLimiter::direct(Quota::per_second(per_second)),
            burst: kib,
        }
    }
}

/// A body delayed to a [`ByteRate`].
pub struct Throttled<B> {
    inner: B,
    rate: Arc<ByteRate>,
    /// Bytes taken from `inner` and not yet passed on.
    pending: Option<Bytes>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Throttled<B> {
    pub fn new(inner: B, rate: Arc<ByteRate>) -> Self {
        Self {
            inner,
            rate,
            pending: None,
            sleep: None,
        }
    }
}

impl<B> Body for Throttled<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = &mut this.sleep {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            let mut data = match this.pending.take() {
                Some(d) => d,
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(d) if !d.is_empty() => d,
                        Ok(_) => continue,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    },
                    other => return Poll::Ready(other),
                },
            };
            let max = this.rate.burst as usize * UNIT;
            let piece = if data.len() > max {
                data.split_to(max)
            } else {
                std::mem::take(&mut data)
            };
            let cells = piece.len().div_ceil(UNIT) as u32;
            let cells = NonZeroU32::new(cells.min(this.rate.burst)).unwrap_or(NonZeroU32::MIN);
            let rest = (!data.is_empty()).then_some(data);
            match this.rate.limiter.check_n(cells) {
                Ok(Ok(())) => {
                    this.pending = rest;
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(this.rate.limiter.clock().now());
                    // Put the bytes back in order and wait.
                    this.pending = Some(match rest {
                        None => piece,
                        Some(rest) => {
                            let mut joined =
                                bytes::BytesMut::with_capacity(piece.len() + rest.len());
                            joined.extend_from_slice(&piece);
                            joined.extend_from_slice(&rest);
                            joined.freeze()
                        }
                    });
                    this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
                // Cannot happen: `cells` is capped at the burst.
                Err(_) => {
                    this.pending = rest;
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        super::body::hint_with_held(self.inner.size_hint(), self.pending.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn delays_but_keeps_every_byte_in_order() {
        let data: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        let rate = Arc::new(ByteRate::new(100 * 1024));
        let started = std::time::Instant::now();
        let body = Throttled::new(Full::new(Bytes::from(data.clone())), rate);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.to_vec(), data);
        // 100 KiB of burst, then 200 KiB at 100 KiB/s.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
    }
}
