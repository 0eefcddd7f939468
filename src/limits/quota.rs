//! Daily transfer quotas (`max_bytes_per_day`): bytes in and out per principal per UTC day,
//! counted as bodies stream.
//!
//! The [`Ledger`] is this instance's count: the whole count without `[redis]`, and with it
//! the bytes not yet added to the shared count (flushed in batches by
//! [`super::shared::SharedLimits`]), plus the count to fall back on while Redis is away.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};

use crate::error::{ApiError, Code};

/// A body records its bytes in the ledger at least this often (and when it ends).
const RECORD_EVERY: u64 = 64 * 1024;

const DAY: u64 = 24 * 3600;

/// The UTC day `now` falls in, as days since the Unix epoch.
pub fn day_of(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / DAY
}

/// Time from `now` to the next UTC midnight.
pub fn until_midnight(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Duration::from_secs(DAY - secs % DAY)
}

/// `429 quota_exceeded`, with `Retry-After` until the next UTC midnight.
pub fn quota_exceeded(now: SystemTime) -> ApiError {
    ApiError::new(
        Code::QuotaExceeded,
        "this principal's transfer quota for today (UTC) is used up",
    )
    .header(
        http::header::RETRY_AFTER,
        HeaderValue::from(until_midnight(now).as_secs()),
    )
}

/// Whether a request fits a quota of `max` bytes with `used` already counted today: refused
/// once the day's bytes reach the quota, and an upload whose declared length would pass it.
pub fn fits(max: u64, used: u64, declared: Option<u64>) -> bool {
    used < max && declared.is_none_or(|d| used.saturating_add(d) <= max)
}

/// One principal's count for one day.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    day: u64,
    /// Bytes this instance moved that day.
    used: u64,
    /// Of those, bytes not yet added to the shared count.
    unflushed: u64,
}

/// Bytes per principal today, on this instance.
#[derive(Debug, Default)]
pub struct Ledger {
    tallies: Mutex<HashMap<Arc<str>, Tally>>,
}

/// Bytes to add to the shared count of `principal` for `day`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unflushed {
    pub principal: Arc<str>,
    pub day: u64,
    pub bytes: u64,
}

impl Ledger {
    /// Counts `bytes` for `principal` today.
    pub fn add(&self, principal: &Arc<str>, bytes: u64) {
        let today = day_of(SystemTime::now());
        let Ok(mut tallies) = self.tallies.lock() else {
            return;
        };
        let tally = tallies.entry(principal.clone()).or_default();
        if tally.day != today {
            // A new day: yesterday's unflushed bytes no longer decide anything.
            *tally = Tally {
                day: today,
                ..Tally::default()
            };
        }
        tally.used += bytes;
        tally.unflushed += bytes;
    }

    /// `(used, unflushed)` of `principal` on `day`.
    pub fn today(&self, principal: &str, day: u64) -> (u64, u64) {
        self.tallies
            .lock()
            .ok()
            .and_then(|t| t.get(principal).copied())
            .filter(|t| t.day == day)
            .map_or((0, 0), |t| (t.used, t.unflushed))
    }

    /// Takes every count not yet added to the shared count.
    pub fn take_unflushed(&self) -> Vec<Unflushed> {
        let Ok(mut tallies) = self.tallies.lock() else {
            return Vec::new();
        };
        let today = day_of(SystemTime::now());
        tallies.retain(|_, t| t.day == today);
        tallies
            .iter_mut()
            .filter(|(_, t)| t.unflushed > 0)
            .map(|(p, t)| Unflushed {
                principal: p.clone(),
                day: t.day,
                bytes: std::mem::take(&mut t.unflushed),
            })
            .collect()
    }

    /// Gives back counts a flush could not deliver, to be sent with the next one.
    pub fn restore(&self, counts: Vec<Unflushed>) {
        let Ok(mut tallies) = self.tallies.lock() else {
            return;
        };
        for c in counts {
            if let Some(t) = tallies.get_mut(&c.principal)
                && t.day == c.day
            {
                t.unflushed += c.bytes;
            }
        }
    }

    /// Refuses, on this instance's count alone, a request over `max`.
    pub fn check(
        &self,
        principal: &str,
        max: u64,
        declared: Option<u64>,
        now: SystemTime,
    ) -> Result<(), ApiError> {
        let (used, _) = self.today(principal, day_of(now));
        if fits(max, used, declared) {
            Ok(())
        } else {
            Err(quota_exceeded(now))
        }
    }
}

/// A body whose bytes count toward its principal's quota, recorded in batches.
pub struct Metered<B> {
    inner: B,
    ledger: Arc<Ledger>,
    principal: Arc<str>,
    unrecorded: u64,
}

impl<B> Metered<B> {
    pub fn new(inner: B, ledger: Arc<Ledger>, principal: Arc<str>) -> Self {
        Self {
            inner,
            ledger,
            principal,
            unrecorded: 0,
        }
    }

    fn record(&mut self) {
        if self.unrecorded > 0 {
            self.ledger
                .add(&self.principal, std::mem::take(&mut self.unrecorded));
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.record();
    }
}

impl<B> Body for Metered<B>
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
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.unrecorded += data.len() as u64;
                    if this.unrecorded >= RECORD_EVERY {
                        this.record();
                    }
                }
            }
            _ => this.record(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_fits_until_the_day_is_used_up() {
        assert!(fits(1000, 0, None));
        assert!(fits(1000, 999, None));
        assert!(!fits(1000, 1000, None));
        assert!(fits(1000, 400, Some(600)));
        assert!(!fits(1000, 401, Some(600)));
        assert!(!fits(10, 0, Some(u64::MAX)));
    }

    #[test]
    fn retry_after_runs_to_the_next_utc_midnight() {
        let t = UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 3600);
        assert_eq!(until_midnight(t), Duration::from_secs(23 * 3600));
        assert_eq!(day_of(t), 20_000);
        let err = quota_exceeded(t);
        assert_eq!(err.code, Code::QuotaExceeded);
    }

    #[test]
    fn the_ledger_counts_flushes_and_restores() {
        let ledger = Ledger::default();
        let alice: Arc<str> = Arc::from("alice");
        ledger.add(&alice, 100);
        ledger.add(&alice, 50);
        let day = day_of(SystemTime::now());
        assert_eq!(ledger.today("alice", day), (150, 150));
        let taken = ledger.take_unflushed();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].bytes, 150);
        assert_eq!(ledger.today("alice", day), (150, 0));
        ledger.restore(taken);
        assert_eq!(ledger.today("alice", day), (150, 150));
        assert!(ledger.check("alice", 150, None, SystemTime::now()).is_err());
        assert!(ledger.check("alice", 151, None, SystemTime::now()).is_ok());
        assert!(
            ledger
                .check("alice", 151, Some(2), SystemTime::now())
                .is_err()
        );
    }
}
