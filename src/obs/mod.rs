//! Observability: the access log (one JSON line per request, SPEC section 9).

mod access_log;

pub use access_log::{AccessLog, AccessLogLayer, ClientIp, ConnInfo, RequestId, RequestNote, note};
