//! Limits shared by every instance through Redis (SPEC section 12): per-principal request
//! rates, failed-authentication blocks per address, and daily quotas.
//!
//! One admitted request costs one round trip: a Lua script that, on Redis's clock, checks
//! the address's block, the principal's quota and its GCRA rate together, and writes only
//! the rate's new state. The local limits stay in front (an instance already over the rate
//! alone does not ask), and they are what is left while Redis is away: with
//! `on_error = "local"` requests are decided on them, logged once per outage; with `"deny"`
//! they are refused with `503`. A background task asks Redis again every
//! [`RETRY_EVERY`] and resumes the shared limits when it answers. Quota bytes reach Redis in
//! batches (every [`FLUSH_EVERY`]), never one write per chunk; the data path never waits on
//! Redis.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::quota::{self, Ledger};
use super::rate::{address_key, rate_limited};
use crate::config::{OnRedisError, Rate, RedisConfig};
use crate::error::{ApiError, Code};

/// How often a Redis that went away is asked again.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often counted quota bytes are added to the shared count.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Quota counts are kept this long (the day they count, and a day of grace).
const QUOTA_TTL_SECS: i64 = 2 * 24 * 3600;

/// Block of the address, then the quota, then the GCRA rate. Returns `{0, 0}` (admitted),
/// `{1, µs to wait}` (over the rate), `{2, ms blocked}` (address blocked), `{3, used}` (over
/// the quota).
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[6] == '1' then
  local blocked = redis.call('PTTL', KEYS[2])
  if blocked > 0 then return {2, blocked} end
end
local max = tonumber(ARGV[3])
if max > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0') + tonumber(ARGV[4])
  local declared = tonumber(ARGV[5])
  if used >= max or (declared >= 0 and used + declared > max) then return {3, used} end
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
if new - now > tolerance then return {1, new - now - tolerance} end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
return {0, 0}
";

/// One failed authentication from an address: GCRA over its failures; past the budget the
/// address is blocked until the budget would allow one more. Returns the ms it is blocked
/// for, or 0.
const FAILED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return blocked end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
if new - now > tolerance then
  local wait = math.floor((new - now - tolerance) / 1000) + 1
  redis.call('SET', KEYS[2], '1', 'PX', wait)
  return wait
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1)
return 0
";

/// A GCRA rate as the scripts take it: the interval between requests and the tolerance (the
/// burst), in microseconds. The same numbers governor uses for the local limiter.
fn gcra(rate: Rate) -> (u64, u64) {
    let interval = 1_000_000 / u64::from(rate.requests_per_second.max(1));
    (interval, interval * u64::from(rate.burst.max(1)))
}

/// What a request asks of the shared limits.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub principal: &'a std::sync::Arc<str>,
    pub rate: Rate,
    /// `max_bytes_per_day`, when the principal has one.
    pub quota: Option<u64>,
    /// An upload's declared length.
    pub declared: Option<u64>,
    pub ip: Option<IpAddr>,
}

/// The shared limits: a Redis connection, whether it answers now, and the scripts.
pub struct SharedLimits {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    on_error: OnRedisError,
    up: AtomicBool,
    /// Failed authentication per address, as `[rate_limit] unauthenticated_per_ip`.
    failures: Rate,
    admit: redis::Script,
    failed: redis::Script,
    ledger: Arc<Ledger>,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Connects to Redis (a Redis that does not answer yet is not an error: the limits start
    /// as if it had gone away) and starts the background tasks, which end when the returned
    /// handle is dropped.
    pub async fn start(
        config: &RedisConfig,
        failures: Rate,
        ledger: Arc<Ledger>,
    ) -> Result<Arc<Self>, String> {
        let url = config.resolve_url()?;
        // The redis crate's rustls takes the process's provider: the gateway's one, aws-lc-rs
        // (installing it is a no-op when it already is).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = match &config.ca_file {
            None => redis::Client::open(url.as_str()),
            Some(ca) => {
                let root_cert = std::fs::read(ca)
                    .map_err(|e| format!("redis.ca_file {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
        }
        .map_err(|e| format!("${}: {e}", config.url_env))?;
        let this = Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout.get(),
            on_error: config.on_error,
            up: AtomicBool::new(false),
            failures,
            admit: redis::Script::new(ADMIT),
            failed: redis::Script::new(FAILED),
            ledger,
        });
        crate::obs::metrics::shared_state_up(false);
        if this.reconnect().await {
            this.came_back();
        } else {
            tracing::warn!(
                on_error = ?this.on_error,
                "Redis does not answer at start; limits are per instance until it does"
            );
        }
        let weak = Arc::downgrade(&this);
        tokio::spawn(watch(weak.clone()));
        tokio::spawn(flush(weak));
        Ok(this)
    }

    /// Does Redis answer now (as of the last call)?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The shared half of admission: the address's block, the principal's quota and rate.
    pub async fn admit(&self, ask: Ask<'_>) -> Result<(), ApiError> {
        let now = SystemTime::now();
        let day = quota::day_of(now);
        let (_, unflushed) = self.ledger.today(ask.principal, day);
        let Some(mut conn) = self.connection() else {
            return self.without_redis(&ask, now);
        };
        let (interval, tolerance) = gcra(ask.rate);
        let ip = ask.ip.map(address_key);
        let mut call = self.admit.prepare_invoke();
        call.key(format!("{}rate:{}", self.prefix, ask.principal))
            .key(format!(
                "{}block:{}",
                self.prefix,
                ip.map(|i| i.to_string()).unwrap_or_default()
            ))
            .key(format!("{}quota:{}:{day}", self.prefix, ask.principal))
            .arg(interval)
            .arg(tolerance)
            .arg(ask.quota.unwrap_or(0))
            .arg(unflushed)
            .arg(
                ask.declared
                    .map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX)),
            )
            .arg(if ip.is_some() { "1" } else { "0" });
        let answer: Result<Result<(i64, i64), _>, _> =
            tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok((0, _))) => Ok(()),
            Ok(Ok((1, wait_us))) => Err(rate_limited(
                Duration::from_micros(wait_us.max(0) as u64),
                "too many requests for this principal; slow down",
            )),
            Ok(Ok((2, blocked_ms))) => Err(rate_limited(
                Duration::from_millis(blocked_ms.max(0) as u64),
                "too many failed authentication attempts from this address",
            )),
            Ok(Ok((_, _))) => Err(quota::quota_exceeded(now)),
            Ok(Err(e)) => {
                self.went_away(&e);
                self.without_redis(&ask, now)
            }
            Err(_) => {
                self.went_away(&format!("no answer within {:?}", self.timeout));
                self.without_redis(&ask, now)
            }
        }
    }

    /// Records a failed authentication from `ip`; `Some` (a `429`) while the address is over
    /// its budget on any instance. Redis away: `None` (the local limit still applies).
    pub async fn failed(&self, ip: IpAddr) -> Option<ApiError> {
        let mut conn = self.connection()?;
        let ip = address_key(ip);
        let (interval, tolerance) = gcra(self.failures);
        let mut call = self.failed.prepare_invoke();
        call.key(format!("{}fail:{ip}", self.prefix))
            .key(format!("{}block:{ip}", self.prefix))
            .arg(interval)
            .arg(tolerance);
        let answer: Result<Result<i64, _>, _> =
            tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok(0)) => None,
            Ok(Ok(blocked_ms)) => Some(rate_limited(
                Duration::from_millis(blocked_ms.max(0) as u64),
                "too many failed authentication attempts from this address",
            )),
            Ok(Err(e)) => {
                self.went_away(&e);
                None
            }
            Err(_) => {
                self.went_away(&format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// The connection, while Redis answers.
    fn connection(&self) -> Option<ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// A decision without Redis: the local limits (already passed) and this instance's own
    /// quota count, or `503` with `on_error = "deny"`.
    fn without_redis(&self, ask: &Ask<'_>, now: SystemTime) -> Result<(), ApiError> {
        crate::obs::metrics::shared_state_fallback();
        match self.on_error {
            OnRedisError::Deny => Err(ApiError::new(
                Code::BackendUnavailable,
                "the gateway cannot reach its shared state; try again shortly",
            )
            .header(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            )),
            OnRedisError::Local => match ask.quota {
                Some(max) => self.ledger.check(ask.principal, max, ask.declared, now),
                None => Ok(()),
            },
        }
    }

    /// Redis failed a call: from now on decisions are local until the watch sees it again.
    fn went_away(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = %why,
                on_error = ?self.on_error,
                "Redis does not answer; limits are per instance until it does"
            );
            crate::obs::metrics::shared_state_up(false);
        }
    }

    fn came_back(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers; limits are shared again");
            crate::obs::metrics::shared_state_up(true);
        }
    }

    /// A connection that answers a `PING` within the timeout: the one there is, or a new one.
    async fn reconnect(&self) -> bool {
        let conn = match self.conn.load_full() {
            Some(conn) => (*conn).clone(),
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                let made = tokio::time::timeout(
                    Duration::from_secs(2),
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await;
                match made {
                    Ok(Ok(conn)) => {
                        self.conn.store(Some(Arc::new(conn.clone())));
                        conn
                    }
                    _ => return false,
                }
            }
        };
        let mut conn = conn;
        let ping = redis::cmd("PING");
        matches!(
            tokio::time::timeout(
                self.timeout.max(Duration::from_millis(200)),
                ping.query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Adds the ledger's new bytes to the shared counts, in one pipeline.
    async fn flush(&self) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let counts = self.ledger.take_unflushed();
        if counts.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for c in &counts {
            let key = format!("{}quota:{}:{}", self.prefix, c.principal, c.day);
            pipe.incr(&key, c.bytes)
                .ignore()
                .expire(&key, QUOTA_TTL_SECS)
                .ignore();
        }
        let sent: Result<Result<(), _>, _> =
            tokio::time::timeout(self.timeout * 4, pipe.query_async(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.ledger.restore(counts);
        }
    }
}

/// While Redis is away, asks it again every [`RETRY_EVERY`].
async fn watch(limits: Weak<SharedLimits>) {
    loop {
        tokio::time::sleep(RETRY_EVERY).await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        if !limits.is_up() && limits.reconnect().await {
            limits.came_back();
        }
    }
}

/// Every [`FLUSH_EVERY`], adds the counted quota bytes to the shared counts.
async fn flush(limits: Weak<SharedLimits>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        limits.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_takes_governor_s_numbers() {
        // 100/s, burst 200: a request every 10 ms, 200 at once.
        assert_eq!(
            gcra(Rate {
                requests_per_second: 100,
                burst: 200
            }),
            (10_000, 2_000_000)
        );
    }
}
