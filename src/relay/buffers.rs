//! The memory that every upload's part buffer draws on (`backend.upload_buffer_memory`).
//!
//! A body of unknown length is gathered a part at a time before it goes to S3. Each byte
//! held takes its room in one budget shared by all uploads, and gives it back once S3 has
//! the part (or the upload ends). When the budget is spent, an upload waits for room,
//! reading no more of its body, and fails with `503` if none frees up soon: many slow
//! uploads can hold no more memory than the budget, whatever the number of principals.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use tokio::sync::Semaphore;

use crate::error::{ApiError, Code};

/// The shared budget, in bytes.
#[derive(Debug)]
pub(super) struct PartBuffers {
    room: Arc<Semaphore>,
    /// How long an upload waits for room before it is refused.
    wait: Duration,
}

impl PartBuffers {
    pub(super) fn new(bytes: u64, wait: Duration) -> Self {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        PartBuffers {
            room: Arc::new(Semaphore::new(bytes)),
            wait: wait.min(Duration::from_secs(2)),
        }
    }

    /// Bytes of room free now (for tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.room.available_permits()
    }
}

/// Room taken in the budget; given back when dropped.
#[derive(Debug)]
pub(super) struct Room {
    budget: Arc<Semaphore>,
    bytes: usize,
}

impl Drop for Room {
    fn drop(&mut self) {
        self.budget.add_permits(self.bytes);
    }
}

/// One upload's part being gathered: the bytes so far and their room.
#[derive(Debug)]
pub(super) struct PartBuffer {
    buf: BytesMut,
    part_size: usize,
    room: Room,
    wait: Duration,
}

impl PartBuffer {
    pub(super) fn new(buffers: &PartBuffers, part_size: usize) -> Self {
        PartBuffer {
            buf: BytesMut::with_capacity(part_size),
            part_size,
            room: Room {
                budget: buffers.room.clone(),
                bytes: 0,
            },
            wait: buffers.wait,
        }
    }

    /// Holds a part (or more) now.
    pub(super) fn has_part(&self) -> bool {
        self.buf.len() >= self.part_size
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends `data` once the budget has room for it.
    pub(super) async fn push(&mut self, data: &[u8]) -> Result<(), ApiError> {
        let need = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let budget = self.room.budget.clone();
        let taken = match budget.clone().try_acquire_many_owned(need) {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(self.wait, budget.acquire_many_owned(need))
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(full)?,
        };
        taken.forget();
        self.room.bytes += need as usize;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next part (at most `part_size` bytes) and its room.
    pub(super) fn take_part(&mut self) -> (Bytes, Room) {
        let part = self
            .buf
            .split_to(self.buf.len().min(self.part_size))
            .freeze();
        (part.clone(), self.room.split(part.len()))
    }

    /// Everything held, and its room.
    pub(super) fn take_all(mut self) -> (Bytes, Room) {
        let all = self.buf.split().freeze();
        let room = self.room.split(all.len());
        (all, room)
    }
}

impl Room {
    fn split(&mut self, bytes: usize) -> Room {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Room {
            budget: self.budget.clone(),
            bytes,
        }
    }
}

fn full() -> ApiError {
    ApiError::new(
        Code::Overloaded,
        "the gateway's upload buffers are full; retry shortly",
    )
    .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn uploads_share_one_budget_and_give_it_back() {
        let buffers = PartBuffers::new(10, Duration::from_secs(1));
        let mut a = PartBuffer::new(&buffers, 4);
        let mut b = PartBuffer::new(&buffers, 4);
        a.push(b"123456").await.unwrap();
        b.push(b"abc").await.unwrap();
        assert_eq!(buffers.free(), 1);
        // No room: refused after the wait, nothing appended.
        let started = tokio::time::Instant::now();
        let err = b.push(b"xy").await.unwrap_err();
        assert_eq!(err.code, Code::Overloaded);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(buffers.free(), 1);
        // A part sent gives its room back; waiting uploads get it.
        let (part, room) = a.take_part();
        assert_eq!(&part[..], b"1234");
        let waiting = tokio::spawn(async move {
            b.push(b"xyz").await.unwrap();
            b
        });
        tokio::task::yield_now().await;
        drop(room);
        let b = waiting.await.unwrap();
        assert_eq!(buffers.free(), 2, "a still holds 2, b 6");
        drop((a, b));
        assert_eq!(buffers.free(), 10, "everything is given back");
    }
}
