//! Observability: the access log (one JSON line per request, SPEC section 9) and the
//! Prometheus metrics.

mod access_log;
mod batch;
pub mod metrics;

pub use access_log::{AccessLog, AccessLogLayer, ClientIp, ConnInfo, RequestId, RequestNote, note};
