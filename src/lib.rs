//! Portcullis: an authenticating, streaming HTTP gateway in front of a private S3 bucket.
//!
//! A request passes through these modules, in this order:
//!
//! - [`server`]: listeners, HTTP/1.1 and HTTP/2, deadlines, graceful shutdown.
//! - [`obs`]: request id and the access log (the outermost layer).
//! - [`api`]: routes; each handler runs the phases below and maps errors to JSON.
//! - [`auth`]: who is calling (API keys today).
//! - [`policy`]: may they do this, on this key ([`policy::ObjectKey`] is the only key type).
//! - [`limits`]: size and type limits, applied to the streaming body.
//! - [`relay`]: the only module that speaks to S3 (aws-sdk-s3).
//! - [`embedded`]: an S3 protocol server in the process, for `serve --dev`.
//!
//! [`load`] is the `portcullis load` generator. [`audit`] checks the bucket's security posture. [`admin`] is the separate listener for `/healthz`, `/readyz` and `/metrics`. [`config`]
//! holds the schema, units and validation; [`error`] the one error type.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod embedded;
pub mod error;
pub mod limits;
pub mod load;
pub mod obs;
pub mod policy;
pub mod relay;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::api::{AppState, Gateway};
use crate::auth::{KeyTable, parse_key_hash};
use crate::config::{BackendKind, Config};
use crate::embedded::EmbeddedServer;
use crate::limits::{AuthFailures, Limits, Shed};
use crate::obs::{AccessLog, AccessLogLayer};
use crate::policy::Principal;
use crate::relay::{Backend, BackendSettings};
use crate::server::{ServerOptions, TrustedProxies};

/// Errors that cross module boundaries inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response inside the gateway.
pub type Body = BoxBody<Bytes, BoxError>;

/// A whole HTTP service, boxed: what the listener serves.
pub type HttpService = tower::util::BoxCloneService<
    http::Request<Body>,
    http::Response<Body>,
    std::convert::Infallible,
>;

/// The backend a gateway relays to, with the embedded server when there is one (it stops
/// when this is dropped).
#[derive(Debug)]
pub struct BackendHandle {
    pub backend: Backend,
    pub embedded: Option<EmbeddedServer>,
}

/// Connects to the configured backend, starting the embedded server first if asked.
pub async fn start_backend(config: &Config) -> std::io::Result<BackendHandle> {
    let (settings, embedded) = match config.backend.kind {
        BackendKind::S3 => (BackendSettings::default(), None),
        BackendKind::Embedded => {
            let server = embedded::start(&config.backend.root, &config.backend.bucket).await?;
            let settings = BackendSettings {
                endpoint: Some(server.endpoint.clone()),
                credentials: Some((server.access_key.clone(), server.secret_key.clone())),
            };
            (settings, Some(server))
        }
    };
    let backend = relay::connect(config, settings).await;
    Ok(BackendHandle { backend, embedded })
}

/// Builds the per-request state from a validated config.
pub fn build_state(config: &Config, backend: Backend) -> AppState {
    let defaults = Limits::from_config(&config.limits);
    let mut keys = KeyTable::default();
    for p in &config.principals {
        let principal = Arc::new(Principal::from_config(p, &defaults, &config.rate_limit));
        keys.insert(
            p.api_keys.iter().filter_map(|k| parse_key_hash(k).ok()),
            principal,
        );
    }
    AppState {
        backend,
        keys,
        body_idle_timeout: config.server.body_idle_timeout.get(),
        auth_failures: AuthFailures::new(config.rate_limit.unauthenticated_per_ip),
        shed: Shed::new(config.server.max_concurrent_requests),
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves.
///
/// The tower stack, outermost first (each `.layer()` wraps the ones after it):
/// 1. request id, client address and access log: sees every request, even refused or
///    abandoned ones;
/// 2. the gateway: load shedding over `max_concurrent_requests` (503 at once), panics caught
///    and turned into a logged 500, then routing and per handler: authenticate (failed
///    attempts limited per address) → principal rate and concurrency (429) → policy (403) →
///    streaming limits → relay. Admission permits ride on the response body.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    state: Arc<AppState>,
    log: Arc<AccessLog>,
    opts: ServerOptions,
) {
    let service = ServiceBuilder::new()
        .layer(AccessLogLayer::new(log, opts.trusted_proxies.clone()))
        .service(Gateway::new(state));
    server::run(listener, shutdown, HttpService::new(service), opts).await;
}

/// Listener deadlines from the config.
pub fn server_options(config: &Config) -> ServerOptions {
    ServerOptions {
        header_read_timeout: config.server.header_read_timeout.get(),
        shutdown_grace: config.server.shutdown_grace.get(),
        trusted_proxies: TrustedProxies(
            config
                .server
                .trusted_proxies
                .iter()
                .filter_map(|p| config::parse_net(p))
                .collect(),
        ),
    }
}
