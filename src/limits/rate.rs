//! Request rates (GCRA, with governor), failed-authentication limits per client IP, and each
//! principal's concurrent-transfer cap (so one principal with 500 slow uploads cannot take
//! the gateway from the others).
//!
//! Keyed state (per IP) is pruned as it goes, so it does not grow without bound as clients
//! come and go. Principals are a fixed, configured set: each has its own direct limiter.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Rate;
use crate::error::{ApiError, Code};

fn quota(rate: Rate) -> Quota {
    let rps = NonZeroU32::new(rate.requests_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}

/// `429` with `Retry-After` in whole seconds (at least 1).
pub fn rate_limited(wait: Duration, message: &'static str) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(Code::RateLimited, message)
        .header(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

/// What a [`PrincipalGate`] is built from.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GateSettings {
    rate: Rate,
    max_transfers: usize,
    bytes_per_second: Option<u64>,
}

/// One principal's request rate and concurrent-transfer cap.
#[derive(Debug)]
pub struct PrincipalGate {
    /// What it was built from: a reload keeps a gate (and its state) whose settings did
    /// not change.
    settings: GateSettings,
    rate: DefaultDirectRateLimiter,
    transfers: Arc<Semaphore>,
    /// `bytes_per_second`, shared by all of the principal's bodies.
    pub bytes: Option<Arc<super::ByteRate>>,
}

impl PrincipalGate {
    pub fn new(rate: Rate, max_transfers: usize) -> Self {
        Self {
            settings: GateSettings {
                rate,
                max_transfers,
                bytes_per_second: None,
            },
            rate: DefaultDirectRateLimiter::direct(quota(rate)),
            transfers: Arc::new(Semaphore::new(max_transfers)),
            bytes: None,
        }
    }

    /// With a byte rate for the principal's bodies.
    pub fn with_byte_rate(mut self, bytes_per_second: Option<u64>) -> Self {
        self.bytes = bytes_per_second.map(|b| Arc::new(super::ByteRate::new(b)));
        self.settings.bytes_per_second = bytes_per_second;
        self
    }

    /// The request rate it admits.
    pub fn rate(&self) -> Rate {
        self.settings.rate
    }

    /// Whether two gates were built from the same settings.
    pub fn same_settings(&self, other: &PrincipalGate) -> bool {
        self.settings == other.settings
    }

    /// Admits one request: within the rate and under the cap. The permit is held for the
    /// whole transfer (until the response body ends).
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Err(not_until) = self.rate.check() {
            let wait = not_until.wait_time_from(self.rate.clock().now());
            return Err(rate_limited(
                wait,
                "too many requests for this principal; slow down",
            ));
        }
        self.transfers.clone().try_acquire_owned().map_err(|_| {
            rate_limited(
                Duration::from_secs(1),
                "too many transfers at once for this principal",
            )
        })
    }
}

/// Failed authentication, limited per client IP. While an IP is over its budget, its
/// requests are refused with 429 before any credential is checked, so a key cannot be
/// guessed faster than the budget allows.
///
/// Time comes from a governor clock (`C`): the monotonic clock in the gateway, a fake one
/// in tests, so they advance time instead of waiting for it.
#[derive(Debug)]
pub struct AuthFailures<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    blocked: Mutex<HashMap<IpAddr, C::Instant>>,
    /// When the last block ends, in nanoseconds after `epoch`: past it, no address is
    /// blocked and `check` answers without taking the lock (the per-request path).
    blocked_until: AtomicU64,
    epoch: C::Instant,
    /// Checks since the last prune.
    since_prune: AtomicU64,
}

/// Prune keyed state after this many failures.
const PRUNE_EVERY: u64 = 1024;

impl AuthFailures {
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock + Clone> AuthFailures<C> {
    /// With `clock` for time.
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let epoch = clock.now();
        Self {
            limiter: RateLimiter::new(
                quota(rate),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
            blocked: Mutex::new(HashMap::new()),
            blocked_until: AtomicU64::new(0),
            epoch,
            since_prune: AtomicU64::new(0),
        }
    }

    fn nanos(&self, t: C::Instant) -> u64 {
        t.duration_since(self.epoch).as_u64()
    }

    /// Refuses an IP (IPv6: its /64) that is over its failed-authentication budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = self.clock.now();
        if self.nanos(now) >= self.blocked_until.load(Ordering::Relaxed) {
            return Ok(());
        }
        let ip = address_key(ip);
        let Ok(blocked) = self.blocked.lock() else {
            return Ok(());
        };
        match blocked.get(&ip) {
            Some(until) if *until > now => Err(rate_limited(
                until.duration_since(now).into(),
                "too many failed authentication attempts from this address",
            )),
            _ => Ok(()),
        }
    }

    /// Records a failed authentication; turns the 401 into a 429 once over budget.
    pub fn failed(&self, ip: IpAddr, err: ApiError) -> ApiError {
        if self.since_prune.fetch_add(1, Ordering::Relaxed) >= PRUNE_EVERY {
            self.prune();
        }
        let ip = address_key(ip);
        match self.limiter.check_key(&ip) {
            Ok(()) => err,
            Err(not_until) => {
                let now = self.clock.now();
                let wait = not_until.wait_time_from(now);
                let until = now + Nanos::from(wait);
                if let Ok(mut blocked) = self.blocked.lock() {
                    blocked.insert(ip, until);
                    crate::obs::metrics::auth_blocked_addresses(
                        blocked.values().filter(|u| **u > now).count(),
                    );
                }
                self.blocked_until
                    .fetch_max(self.nanos(until), Ordering::Relaxed);
                rate_limited(
                    wait,
                    "too many failed authentication attempts from this address",
                )
            }
        }
    }

    /// Forgets addresses whose budget is whole again and blocks that have run out.
    pub fn prune(&self) {
        self.since_prune.store(0, Ordering::Relaxed);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if let Ok(mut blocked) = self.blocked.lock() {
            let now = self.clock.now();
            blocked.retain(|_, until| *until > now);
            blocked.shrink_to_fit();
            crate::obs::metrics::auth_blocked_addresses(blocked.len());
        }
    }

    /// Addresses blocked now.
    pub fn blocked(&self) -> usize {
        let now = self.clock.now();
        self.blocked
            .lock()
            .map_or(0, |b| b.values().filter(|u| **u > now).count())
    }

    /// Addresses with state (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.limiter.len() + self.blocked.lock().map_or(0, |b| b.len())
    }
}

/// The address a per-address limit counts: IPv4 as it is, IPv6 by its /64 (what one host,
/// or one subscriber, is usually given: counting single IPv6 addresses would let one client
/// take as many budgets as it has addresses), an IPv4-mapped IPv6 address as its IPv4.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_rate_and_cap() {
        let gate = PrincipalGate::new(
            Rate {
                requests_per_second: 1,
                burst: 2,
            },
            10,
        );
        let _a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        let e = gate.admit().unwrap_err();
        assert_eq!(e.code, Code::RateLimited);
        let retry = e
            .headers
            .iter()
            .find(|(n, _)| n == http::header::RETRY_AFTER)
            .unwrap();
        assert_eq!(retry.1, "1");

        let gate = PrincipalGate::new(
            Rate {
                requests_per_second: 1000,
                burst: 1000,
            },
            2,
        );
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_err());
        drop(a);
        assert!(gate.admit().is_ok());
    }

    #[test]
    fn failed_auth_blocks_then_forgets() {
        // Time is a fake clock, advanced by the test: no waiting.
        let clock = governor::clock::FakeRelativeClock::default();
        let f = AuthFailures::with_clock(
            Rate {
                requests_per_second: 1,
                burst: 2,
            },
            clock.clone(),
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let e401 = || ApiError::new(Code::Unauthenticated, "x");
        assert!(f.check(ip).is_ok());
        assert_eq!(f.failed(ip, e401()).code, Code::Unauthenticated);
        assert_eq!(f.failed(ip, e401()).code, Code::Unauthenticated);
        let refused = f.failed(ip, e401());
        assert_eq!(refused.code, Code::RateLimited);
        assert!(f.check(ip).is_err());
        assert!(f.check(other).is_ok());
        assert_eq!(f.blocked(), 1);
        // Still blocked just before the budget allows one more, free just after.
        clock.advance(Duration::from_millis(999));
        assert!(f.check(ip).is_err());
        clock.advance(Duration::from_millis(2));
        assert!(f.check(ip).is_ok());
        // Once the whole budget is back, nothing about the address is kept.
        clock.advance(Duration::from_secs(2));
        f.prune();
        assert_eq!(f.tracked(), 0, "state for quiet addresses is dropped");
    }

    #[test]
    fn failed_auth_counts_ipv6_by_slash_64() {
        let f = AuthFailures::new(Rate {
            requests_per_second: 1,
            burst: 2,
        });
        let e401 = || ApiError::new(Code::Unauthenticated, "x");
        // A client rotating through its /64 is one address.
        for host in 1..=3 {
            let ip: IpAddr = format!("2001:db8:5:6::{host}").parse().unwrap();
            let _ = f.failed(ip, e401());
        }
        assert!(f.check("2001:db8:5:6::99".parse().unwrap()).is_err());
        assert!(f.check("2001:db8:5:7::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn keyed_state_stays_bounded() {
        let f = AuthFailures::new(Rate {
            requests_per_second: 1_000_000,
            burst: 1,
        });
        for i in 0..(PRUNE_EVERY * 3) {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            let _ = f.failed(ip, ApiError::new(Code::Unauthenticated, "x"));
        }
        assert!(
            f.tracked() <= PRUNE_EVERY as usize * 2 + 8,
            "{}",
            f.tracked()
        );
    }

    #[test]
    fn addresses_are_counted_by_ipv6_slash_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:0:1::1"), key("2001:db8:0:1:abcd::2"));
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8:0:2::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }
}
