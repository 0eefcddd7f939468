//! Portcullis: an authenticating, streaming HTTP gateway in front of a private S3 bucket.
//!
//! A request passes through these modules, in this order:
//!
//! - [`server`]: listeners, HTTP/1.1 (parked between requests) and HTTP/2, deadlines,
//!   graceful shutdown.
//! - [`obs`]: request id and the access log (the outermost layer).
//! - [`api`]: routes; each handler runs the phases below and maps errors to JSON.
//! - [`auth`]: who is calling (API keys, JWTs, signed links, client certificates).
//! - [`policy`]: may they do this, on this key ([`policy::ObjectKey`] is the only key type).
//! - [`limits`]: size and type limits, applied to the streaming body.
//! - [`relay`]: the only module that speaks to S3 (aws-sdk-s3, and a light signed path for
//!   GET and HEAD).
//! - [`embedded`]: an S3 protocol server in the process, for `serve --dev`.
//!
//! [`console`] is the upload page at `GET /`. [`load`] is the `portcullis load` generator. [`audit`] checks the bucket's security posture. [`admin`] is the separate listener for `/healthz`, `/readyz` and `/metrics`. [`config`]
//! holds the schema, units and validation; [`error`] the one error type.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod dev;
pub mod embedded;
pub mod error;
#[doc(hidden)]
pub mod fuzz_props;
pub mod limits;
pub mod load;
pub mod obs;
pub mod policy;
mod quiet;
pub mod relay;
pub mod serve;
pub mod server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::api::{AppState, Gateway};
use crate::auth::{JwtVerifier, KeyTable, LinkSigner, parse_key_hash};
use crate::config::{BackendKind, Config};
use crate::embedded::EmbeddedServer;
use crate::limits::{AuthFailures, Limits, Shed, ShedLayer};
use crate::obs::{AccessLog, AccessLogLayer};
use crate::policy::Principal;
use crate::relay::{BackendSettings, Buckets};
use crate::server::{ServerOptions, TlsSource, TrustedProxies};

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
    pub buckets: Buckets,
    pub embedded: Option<EmbeddedServer>,
}

/// Connects to the configured buckets, starting the embedded server first if asked.
pub async fn start_backend(config: &Config) -> std::io::Result<BackendHandle> {
    let (settings, embedded) = match config.backend.kind {
        BackendKind::S3 => (BackendSettings::default(), None),
        BackendKind::Embedded => {
            let buckets = config.bucket_configs();
            let names: Vec<&str> = buckets.iter().map(|b| b.bucket.as_str()).collect();
            let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let server = embedded::start_with(&config.backend.root, &names, local).await?;
            let settings = BackendSettings {
                endpoint: Some(server.endpoint.clone()),
                credentials: Some((server.access_key.clone(), server.secret_key.clone())),
            };
            (settings, Some(server))
        }
    };
    let buckets = relay::connect(config, settings).await;
    Ok(BackendHandle { buckets, embedded })
}

/// What is built once at start and outlives every reload: the quota ledger and, with
/// `[redis]`, the limits shared with the other instances.
#[derive(Clone, Debug)]
pub struct Lasting {
    /// `server.max_concurrent_requests` and `max_requests_per_address`.
    pub shed: Arc<Shed>,
    pub ledger: Arc<limits::quota::Ledger>,
    pub shared: Option<Arc<limits::shared::SharedLimits>>,
}

impl Lasting {
    /// Connects to `[redis]` when there is one (a Redis that does not answer yet is not an
    /// error: limits are per instance until it does).
    pub async fn start(config: &Config) -> Result<Self, String> {
        let ledger = Arc::new(limits::quota::Ledger::default());
        let shared = match &config.redis {
            Some(redis) => Some(
                limits::shared::SharedLimits::start(
                    redis,
                    config.rate_limit.unauthenticated_per_ip,
                    ledger.clone(),
                )
                .await
                .map_err(|e| format!("redis: {e}"))?,
            ),
            None => None,
        };
        let shed = Arc::new(Shed::new(
            config.server.max_concurrent_requests,
            config.server.requests_per_address(),
        ));
        Ok(Self {
            shed,
            ledger,
            shared,
        })
    }
}

/// Builds the per-request state from a validated config. On reload, `previous` is the state
/// it replaces: the failed-auth and load-shedding counters carry over, and so does each
/// principal's rate state when its settings did not change.
pub fn build_state(
    config: &Config,
    buckets: Buckets,
    lasting: &Lasting,
    previous: Option<&AppState>,
) -> Result<AppState, String> {
    let defaults = Limits::from_config(&config.limits);
    // Every principal's bucket must be one the process runs: adding a bucket is a restart.
    let bucket_of = |field: String, name: &Option<String>| match name {
        None => Ok(Some(buckets.first().name().to_owned())),
        Some(name) if buckets.get(name).is_some() => Ok(Some(name.clone())),
        Some(name) => Err(format!(
            "{field}: the bucket `{name}` is not running (running: {}); adding a bucket \
             takes a restart",
            buckets.names().join(", ")
        )),
    };
    let mut keys = KeyTable::default();
    let mut principals = HashMap::new();
    let mut subjects = HashMap::new();
    for (i, p) in config.principals.iter().enumerate() {
        let p = &config::PrincipalConfig {
            bucket: bucket_of(format!("principals[{i}].bucket"), &p.bucket)?,
            ..p.clone()
        };
        let mut principal = Principal::from_config(p, &defaults, &config.rate_limit);
        if let Some(old) = previous.and_then(|s| s.principals.get(&p.name)) {
            principal = principal.keeping_gate_of(old);
        }
        let principal = Arc::new(principal);
        keys.insert(
            p.api_keys.iter().filter_map(|k| parse_key_hash(k).ok()),
            principal.clone(),
        );
        let names = p
            .client_cert_subjects
            .iter()
            .map(|s| auth::client_cert::parse_subject(s));
        let sans = p
            .client_cert_sans
            .iter()
            .map(|s| auth::client_cert::parse_san(s));
        for name in names.chain(sans).filter_map(Result::ok) {
            subjects.insert(name, principal.clone());
        }
        principals.insert(p.name.clone(), principal);
    }
    let jwt = config
        .jwt
        .as_ref()
        .map(|j| {
            let j = config::JwtConfig {
                bucket: bucket_of("jwt.bucket".into(), &j.bucket)?,
                ..j.clone()
            };
            JwtVerifier::from_config(&j, &defaults, &config.rate_limit)
        })
        .transpose()
        .map_err(|e| format!("jwt: {e}"))?;
    let links = config
        .links
        .as_ref()
        .map(LinkSigner::from_config)
        .transpose()
        .map_err(|e| format!("links: {e}"))?;
    Ok(AppState {
        buckets,
        ledger: lasting.ledger.clone(),
        shared: lasting.shared.clone(),
        keys,
        jwt,
        links,
        principals,
        subjects,
        public_url: config.server.public_url.clone(),
        body_idle_timeout: config.server.body_idle_timeout.get(),
        auth_failures: previous
            .map(|s| s.auth_failures.clone())
            .unwrap_or_else(|| {
                Arc::new(AuthFailures::new(config.rate_limit.unauthenticated_per_ip))
            }),
    })
}

/// One config, built: the state requests read, the service with its CORS layer, and the
/// TLS config new handshakes use.
struct Live {
    config: Config,
    state: Arc<AppState>,
    service: SyncService,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// [`HttpService`] that may be shared between threads (as the swapped config is).
type SyncService = tower::util::BoxCloneSyncService<
    http::Request<Body>,
    http::Response<Body>,
    std::convert::Infallible,
>;

/// The running gateway: its current `Live` config, swapped whole on reload. A request or
/// a handshake takes the config current when it starts and keeps it to its end, so a reload
/// never disturbs a transfer in flight.
pub struct Portcullis {
    live: ArcSwap<Live>,
    lasting: Lasting,
}

impl std::fmt::Debug for Portcullis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portcullis").finish_non_exhaustive()
    }
}

impl Portcullis {
    /// Builds the gateway from a validated config.
    pub fn new(config: &Config, buckets: Buckets, lasting: Lasting) -> Result<Arc<Self>, String> {
        let live = Live::build(config, buckets, &lasting, None)?;
        Ok(Arc::new(Self {
            live: ArcSwap::from_pointee(live),
            lasting,
        }))
    }

    /// The state requests see now.
    pub fn state(&self) -> Arc<AppState> {
        self.live.load().state.clone()
    }

    /// Swaps in `config` (already validated): principals, keys, limits, rate limits, CORS,
    /// JWT, links and certificates. What only a restart can change (listeners, backend,
    /// log) is left as it is, and said in the returned notes. On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let current = self.live.load_full();
        let old = &current.config;
        if old.server.tls.is_some() != config.server.tls.is_some() {
            return Err("server.tls cannot be turned on or off by a reload; restart".into());
        }
        let mut notes = Vec::new();
        let mut unchanged = |field: &str, same: bool| {
            if !same {
                notes.push(format!(
                    "{field} changed; it takes effect at the next restart"
                ));
            }
        };
        unchanged("server.listen", old.server.listen == config.server.listen);
        unchanged(
            "server.worker_threads",
            old.server.worker_threads == config.server.worker_threads,
        );
        unchanged("admin.listen", old.admin.listen == config.admin.listen);
        unchanged("backend", old.backend == config.backend);
        unchanged("buckets", old.bucket_configs() == config.bucket_configs());
        unchanged("log", old.log == config.log);
        unchanged(
            "server.max_concurrent_requests and max_requests_per_address",
            old.server.max_concurrent_requests == config.server.max_concurrent_requests
                && old.server.max_requests_per_address == config.server.max_requests_per_address,
        );
        unchanged(
            "server.max_connections",
            old.server.max_connections == config.server.max_connections,
        );
        unchanged(
            "rate_limit.unauthenticated_per_ip",
            old.rate_limit.unauthenticated_per_ip == config.rate_limit.unauthenticated_per_ip,
        );
        unchanged(
            "server.trusted_proxies and deadlines",
            old.server.trusted_proxies == config.server.trusted_proxies
                && old.server.header_read_timeout == config.server.header_read_timeout
                && old.server.keep_alive_timeout == config.server.keep_alive_timeout
                && old.server.shutdown_grace == config.server.shutdown_grace,
        );
        unchanged("redis", old.redis == config.redis);
        let live = Live::build(
            config,
            current.state.buckets.clone(),
            &self.lasting,
            Some(&current.state),
        )?;
        self.live.store(Arc::new(live));
        Ok(notes)
    }
}

impl Live {
    fn build(
        config: &Config,
        buckets: Buckets,
        lasting: &Lasting,
        previous: Option<&AppState>,
    ) -> Result<Self, String> {
        let state = Arc::new(build_state(config, buckets, lasting, previous)?);
        let tls = config
            .server
            .tls
            .as_ref()
            .map(server::tls::server_config)
            .transpose()
            .map_err(|e| format!("server.tls: {e}"))?;
        let gateway = Gateway::new(state.clone());
        let service = match &config.cors {
            Some(c) => SyncService::new(Preflights {
                inner: cors_layer(c).layer(gateway),
                allowed: c.allowed_origins.clone().into(),
            }),
            None => SyncService::new(gateway),
        };
        Ok(Self {
            config: config.clone(),
            state,
            service,
            tls,
        })
    }
}

/// Is `origin` one of `allowed` (`"*"`, an exact origin, or `scheme://host:*`)?
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| {
        a == "*"
            || a == origin
            || a.strip_suffix('*').is_some_and(|host| {
                a.ends_with(":*")
                    && origin.strip_prefix(host).is_some_and(|port| {
                        !port.is_empty()
                            && port.len() <= 5
                            && port.bytes().all(|b| b.is_ascii_digit())
                    })
            })
    })
}

/// Refuses the preflights of origins `[cors]` does not list, in front of the CORS layer.
#[derive(Clone)]
struct Preflights<S> {
    inner: S,
    allowed: Arc<[String]>,
}

impl<S> tower::Service<http::Request<Body>> for Preflights<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match refused_preflight(&self.allowed, &req) {
            Some(refused) => futures_util::future::Either::Left(std::future::ready(Ok(refused))),
            None => futures_util::future::Either::Right(self.inner.call(req)),
        }
    }
}

/// A CORS preflight from an origin `[cors]` does not list: `403`, logged with its `Origin`
/// (tower-http would answer it `200` without CORS headers, which says nothing in the log).
fn refused_preflight(
    allowed: &[String],
    req: &http::Request<Body>,
) -> Option<http::Response<Body>> {
    if req.method() != http::Method::OPTIONS
        || !req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let origin = req.headers().get(http::header::ORIGIN)?;
    let text = String::from_utf8_lossy(origin.as_bytes());
    if origin_allowed(allowed, &text) {
        return None;
    }
    let err = error::ApiError::new(
        error::Code::Forbidden,
        "this origin may not call the gateway from a browser",
    );
    obs::note(req, |n| {
        n.route = "preflight";
        n.origin = Some(text.chars().take(256).collect());
    });
    let resp = api::respond::refuse(req, &err);
    // A refused origin, not a refused principal: its own code in the log.
    obs::note(req, |n| n.error_code = Some("cors_refused"));
    Some(resp)
}

/// `[cors]` as tower-http's layer: the listed origins (or any, without credentials), the
/// API's methods and request headers, `ETag` and friends exposed, `max_age` on preflights.
/// An origin not on the list gets no CORS headers at all.
fn cors_layer(c: &config::CorsConfig) -> CorsLayer {
    use http::{Method, header};
    let origins = if c.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else if c.allowed_origins.iter().any(|o| o.ends_with(":*")) {
        let allowed = c.allowed_origins.clone();
        AllowOrigin::predicate(move |origin, _| {
            origin
                .to_str()
                .is_ok_and(|origin| origin_allowed(&allowed, origin))
        })
    } else {
        AllowOrigin::list(
            c.allowed_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::POST,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            http::HeaderName::from_static("content-md5"),
            http::HeaderName::from_static("x-amz-checksum-sha256"),
            http::HeaderName::from_static("repr-digest"),
            http::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::ETAG,
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
            header::LAST_MODIFIED,
            header::RETRY_AFTER,
            header::CONTENT_DISPOSITION,
            http::HeaderName::from_static("x-request-id"),
        ])
        .max_age(c.max_age.get())
        .allow_credentials(c.allow_credentials)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
///
/// The pipeline, outermost first (each layer wraps the ones after it):
/// 1. `server`: the connection (TLS, HTTP/1.1 or h2, deadlines, the send deadline, the
///    framing follower that marks a head with two framings);
/// 2. [`obs::AccessLogLayer`]: request id, client address (behind `trusted_proxies`), the
///    access-log line and metrics; it sees every request, even refused or abandoned ones;
/// 3. [`api::CatchPanicLayer`]: a panic inside becomes a logged `500` for that request;
/// 4. [`limits::ShedLayer`]: over `max_concurrent_requests` or the address's
///    `max_requests_per_address`, `503` at once; the request's place rides on its response
///    body;
/// 5. the current config's service, swapped whole on reload: with `[cors]`, refused
///    preflights (`403`, logged) and tower-http's CORS layer;
/// 6. [`api::Gateway`], the router: a request two hops could read two ways is `400`; then
///    the handler: admission (resolve the key → authenticate → authorize → admit within the
///    principal's rate, transfer cap and quota, shared through Redis with `[redis]`) →
///    streaming limits → relay → respond.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    gateway: Arc<Portcullis>,
    log: Arc<AccessLog>,
    mut opts: ServerOptions,
) {
    if let Some(first) = gateway.live.load().tls.clone() {
        let g = gateway.clone();
        opts.tls = Some(TlsSource(Arc::new(move || {
            g.live.load().tls.clone().unwrap_or_else(|| first.clone())
        })));
    }
    let shed = gateway.lasting.shed.clone();
    let current = tower::service_fn(move |req: http::Request<Body>| {
        let service = gateway.live.load().service.clone();
        service.oneshot(req)
    });
    let service = ServiceBuilder::new()
        .layer(AccessLogLayer::new(log, opts.trusted_proxies.clone()))
        .layer(api::CatchPanicLayer)
        .layer(ShedLayer::new(shed))
        .service(current);
    server::run(listener, shutdown, HttpService::new(service), opts).await;
}

/// Listener deadlines from the config.
pub fn server_options(config: &Config) -> ServerOptions {
    ServerOptions {
        header_read_timeout: config.server.header_read_timeout.get(),
        keep_alive_timeout: config.server.keep_alive_timeout.get(),
        shutdown_grace: config.server.shutdown_grace.get(),
        send_idle_timeout: config.server.body_idle_timeout.get(),
        max_connections: config.server.max_connections,
        tls: None,
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
