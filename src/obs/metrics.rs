//! Prometheus metrics (the `metrics` facade with its Prometheus exporter), served on the
//! admin listener. Label values come from small fixed sets (bucket name as configured,
//! route, method, status class, error code, S3 operation); keys and principal names are
//! never labels.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's CPU, memory, open files and start time (`process_*`, as Prometheus names
/// them), read at each scrape.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("portcullis_backend_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full("portcullis_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0, 300.0,
                    ],
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be set (an embedding program's): keep theirs.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            PROCESS
                .get_or_init(metrics_process::Collector::default)
                .describe();
            gauge!("portcullis_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let handle = install();
    if let Some(process) = PROCESS.get() {
        process.collect();
    }
    handle.render()
}

fn describe() {
    metrics::describe_counter!(
        "portcullis_requests_total",
        "Requests answered, by route, method and status class."
    );
    metrics::describe_counter!(
        "portcullis_request_bytes_total",
        "Request body bytes received from clients."
    );
    metrics::describe_counter!(
        "portcullis_response_bytes_total",
        "Response body bytes sent to clients."
    );
    metrics::describe_counter!(
        "portcullis_rejections_total",
        "Requests refused or failed, by error code (rate_limited, unauthenticated, payload_too_large, ...)."
    );
    metrics::describe_histogram!(
        "portcullis_request_duration_seconds",
        "Time from a request's arrival to the end of its response body, by route, method and status class."
    );
    metrics::describe_gauge!(
        "portcullis_build_info",
        "1, labelled with the running build's version."
    );
    metrics::describe_histogram!(
        "portcullis_backend_seconds",
        "Time spent in S3 calls, by operation."
    );
    metrics::describe_gauge!(
        "portcullis_requests_in_flight",
        "Requests being served now."
    );
    metrics::describe_gauge!(
        "portcullis_connections_open",
        "Client connections open now."
    );
    metrics::describe_counter!(
        "portcullis_tls_handshake_failures_total",
        "TLS handshakes that failed (bad or missing client certificate, protocol errors)."
    );
    metrics::describe_counter!(
        "portcullis_config_reloads_total",
        "SIGHUP reloads, by result (ok, refused)."
    );
    metrics::describe_counter!(
        "portcullis_connections_refused_total",
        "Connections closed at once because server.max_connections were open."
    );
    metrics::describe_counter!(
        "portcullis_send_deadline_expired_total",
        "Responses given up because the client took nothing of them for body_idle_timeout."
    );
    metrics::describe_gauge!(
        "portcullis_auth_blocked_addresses",
        "Client addresses (IPv6 by /64) refused now for failed authentication."
    );
    metrics::describe_gauge!(
        "portcullis_backend_ready",
        "1 when the bucket's last check succeeded, by bucket."
    );
    metrics::describe_gauge!(
        "portcullis_shared_state_up",
        "1 while Redis answers and limits are shared; 0 while they are per instance."
    );
    metrics::describe_counter!(
        "portcullis_shared_state_fallback_total",
        "Decisions made without Redis (per-instance limits, or 503 with on_error = deny)."
    );
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::POST => "POST",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// What the metrics record of an answered request.
pub(crate) struct Done<'a> {
    pub(crate) bucket: Option<&'a std::sync::Arc<str>>,
    pub(crate) route: &'static str,
    pub(crate) method: &'a http::Method,
    pub(crate) status: u16,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) error_code: Option<&'static str>,
    pub(crate) seconds: f64,
}

/// A request has been answered (its body ended or was abandoned).
pub(crate) fn request_done(done: Done<'_>) {
    let Done {
        bucket,
        route,
        method,
        status,
        bytes_in,
        bytes_out,
        error_code,
        seconds,
    } = done;
    let (method, class) = (method_label(method), status_class(status));
    // A request refused before it named a principal has no bucket: `bucket=""`.
    let bucket = bucket_label(bucket);
    counter!("portcullis_requests_total", "bucket" => bucket.clone(), "route" => route, "method" => method, "status" => class)
        .increment(1);
    histogram!("portcullis_request_duration_seconds", "bucket" => bucket.clone(), "route" => route, "method" => method, "status" => class)
        .record(seconds);
    counter!("portcullis_request_bytes_total", "bucket" => bucket.clone()).increment(bytes_in);
    counter!("portcullis_response_bytes_total", "bucket" => bucket).increment(bytes_out);
    if let Some(code) = error_code {
        counter!("portcullis_rejections_total", "reason" => code).increment(1);
    }
}

/// Requests in flight: +1 when one starts, -1 when it is logged.
pub(crate) fn in_flight(delta: f64) {
    gauge!("portcullis_requests_in_flight").increment(delta);
}

/// Open client connections.
pub(crate) fn connections(delta: f64) {
    gauge!("portcullis_connections_open").increment(delta);
}

/// Time spent in one S3 call.
/// A bucket's name as a label value, without copying it.
fn bucket_label(bucket: Option<&std::sync::Arc<str>>) -> metrics::SharedString {
    bucket.map_or(metrics::SharedString::const_str(""), |b| {
        metrics::SharedString::from(b.clone())
    })
}

pub(crate) fn backend_call(
    bucket: Option<&std::sync::Arc<str>>,
    operation: &'static str,
    seconds: f64,
) {
    histogram!("portcullis_backend_seconds", "bucket" => bucket_label(bucket), "op" => operation)
        .record(seconds);
}

/// Whether the bucket answered the last readiness check.
pub(crate) fn backend_ready(bucket: &str, ready: bool) {
    gauge!("portcullis_backend_ready", "bucket" => bucket.to_owned()).set(if ready {
        1.0
    } else {
        0.0
    });
}

/// A TLS handshake failed.
pub(crate) fn tls_handshake_failed() {
    counter!("portcullis_tls_handshake_failures_total").increment(1);
}

/// A config reload was applied or refused.
pub fn config_reload(ok: bool) {
    counter!("portcullis_config_reloads_total", "result" => if ok { "ok" } else { "refused" })
        .increment(1);
}

/// A response stalled past the send deadline and was given up.
pub(crate) fn send_deadline_expired() {
    counter!("portcullis_send_deadline_expired_total").increment(1);
}

/// Addresses blocked now for failed authentication.
pub(crate) fn auth_blocked_addresses(count: usize) {
    gauge!("portcullis_auth_blocked_addresses").set(count as f64);
}

/// A connection was closed at once: `server.max_connections` were open.
pub(crate) fn connection_refused() {
    counter!("portcullis_connections_refused_total").increment(1);
}

/// Whether Redis answers (limits shared) or not (per instance).
pub(crate) fn shared_state_up(up: bool) {
    gauge!("portcullis_shared_state_up").set(if up { 1.0 } else { 0.0 });
}

/// A decision made without Redis.
pub(crate) fn shared_state_fallback() {
    counter!("portcullis_shared_state_fallback_total").increment(1);
}
