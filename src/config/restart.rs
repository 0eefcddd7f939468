//! What a reload cannot change: the part of a config that only a restart applies. A reload
//! compares the old and new [`RestartOnly`] and says in the log what waits for a restart;
//! everything else is swapped in.

use std::borrow::Cow;
use std::net::SocketAddr;

use super::schema::*;
use super::units::Span;

/// The restart-only part of a config, field by field.
#[derive(Debug, PartialEq)]
pub struct RestartOnly<'a> {
    listen: SocketAddr,
    worker_threads: Option<usize>,
    admin_listen: SocketAddr,
    backend: &'a BackendConfig,
    buckets: Cow<'a, [BucketConfig]>,
    log: &'a LogConfig,
    capacity: (usize, Option<usize>),
    max_connections: usize,
    unauthenticated_per_ip: Rate,
    trusted_proxies: &'a [crate::rules::Net],
    deadlines: [Span; 3],
    tls_on: bool,
    redis: Option<&'a RedisConfig>,
    /// `s3_api.listen`, and whether the door has TLS.
    door: Option<(SocketAddr, bool)>,
}

impl<'a> RestartOnly<'a> {
    pub fn of(c: &'a Config) -> Self {
        Self {
            listen: c.server.listen,
            worker_threads: c.server.worker_threads,
            admin_listen: c.admin.listen,
            backend: &c.backend,
            buckets: c.bucket_configs(),
            log: &c.log,
            capacity: (
                c.server.max_concurrent_requests,
                c.server.max_requests_per_address,
            ),
            max_connections: c.server.max_connections,
            unauthenticated_per_ip: c.rate_limit.unauthenticated_per_ip,
            trusted_proxies: &c.server.trusted_proxies,
            deadlines: [
                c.server.header_read_timeout,
                c.server.keep_alive_timeout,
                c.server.shutdown_grace,
            ],
            tls_on: c.server.tls.is_some(),
            redis: c.redis.as_ref(),
            door: c.s3_api.as_ref().map(|d| (d.listen, d.tls.is_some())),
        }
    }

    /// Whether TLS is turned on or off: a reload refuses that rather than wait for a restart
    /// (new handshakes would otherwise meet a listener that no longer matches the file).
    pub fn tls_switched(&self, new: &RestartOnly<'_>) -> bool {
        self.tls_on != new.tls_on
            || matches!((self.door, new.door), (Some((_, a)), Some((_, b))) if a != b)
    }

    /// The config names of what differs from `new`, for the reload's log.
    pub fn changes(&self, new: &RestartOnly<'_>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut note = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        note("server.listen", self.listen == new.listen);
        note(
            "server.worker_threads",
            self.worker_threads == new.worker_threads,
        );
        note("admin.listen", self.admin_listen == new.admin_listen);
        note("backend", self.backend == new.backend);
        note("buckets", self.buckets == new.buckets);
        note("log", self.log == new.log);
        note(
            "server.max_concurrent_requests and max_requests_per_address",
            self.capacity == new.capacity,
        );
        note(
            "server.max_connections",
            self.max_connections == new.max_connections,
        );
        note(
            "rate_limit.unauthenticated_per_ip",
            self.unauthenticated_per_ip == new.unauthenticated_per_ip,
        );
        note(
            "server.trusted_proxies and deadlines",
            self.trusted_proxies == new.trusted_proxies && self.deadlines == new.deadlines,
        );
        note("redis", self.redis == new.redis);
        note(
            "s3_api.listen",
            self.door.map(|d| d.0) == new.door.map(|d| d.0),
        );
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_named_and_the_rest_is_not() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(
            RestartOnly::of(&old)
                .changes(&RestartOnly::of(&new))
                .is_empty()
        );
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.principals.push(PrincipalConfig::default());
        new.buckets.push(BucketConfig {
            name: "media".into(),
            bucket: "media".into(),
            region: "us-east-1".into(),
            endpoint: None,
            force_path_style: false,
            sse: None,
            kms_key_id: None,
            part_size: super::super::units::Size::mib(8),
            audit: AuditMode::Warn,
        });
        assert_eq!(
            RestartOnly::of(&old).changes(&RestartOnly::of(&new)),
            ["server.listen", "buckets"]
        );
    }
}
