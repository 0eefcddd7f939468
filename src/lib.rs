//! Portcullis: an authenticating, streaming HTTP gateway in front of private S3 buckets.
//!
//! A request passes through these modules, in this order (the tower stack itself is built,
//! with its order written out, in [`run`]):
//!
//! - [`server`]: listeners, HTTP/1.1 (parked between requests) and HTTP/2, deadlines,
//!   graceful shutdown.
//! - [`obs`]: request id and the access log (the outermost layer).
//! - [`api`]: panic catching, the router; each handler runs the admission phase and maps
//!   errors to JSON.
//! - [`limits`]: load shedding (a layer), rates, quotas (shared through Redis with
//!   `[redis]`), and the limits applied to the streaming body.
//! - [`auth`]: who is calling (API keys, JWTs, signed links, client certificates).
//! - [`policy`]: may they do this, on this key ([`policy::ObjectKey`] is the only key type).
//! - [`relay`]: the only module that speaks to S3 (aws-sdk-s3, and a light signed path for
//!   GET, HEAD and single PutObject uploads), one [`relay::Backend`] per bucket.
//! - [`embedded`]: an S3 protocol server in the process, for `serve --dev`.
//!
//! [`config`] parses and checks the file (a leaf: it imports only [`rules`], the syntax it
//! shares with requests); [`build`] turns it into the live state, once, for `serve`, reload
//! and `check-config`. [`serve`] starts everything; [`dev`] is `serve --dev`'s config.
//! [`console`] is the upload page at `GET /`, [`load`] the `portcullis load` generator,
//! [`audit`] the bucket audit, [`admin`] the listener for `/healthz`, `/readyz` and
//! `/metrics`; [`error`] holds the one error type.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod build;
pub mod config;
pub mod console;
pub mod dev;
pub mod door;
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
pub mod rules;
pub mod serve;
pub mod server;

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
pub use crate::build::Lasting;
use crate::build::{BuildError, BuildErrors};
use crate::config::{BackendKind, Config};
use crate::embedded::EmbeddedServer;
use crate::limits::ShedLayer;
use crate::obs::{AccessLog, AccessLogLayer};
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
            let frame = embedded::DOWNLOAD_FRAME;
            let server = embedded::start_with(&config.backend.root, &names, local, frame).await?;
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

/// One config, built: the state requests read, the service with its CORS layer, and the
/// TLS config new handshakes use.
struct Live {
    config: Config,
    state: Arc<AppState>,
    service: SyncService,
    /// The S3 front door's service, with `[s3_api]`.
    door: Option<SyncService>,
    tls: build::Tls,
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
    pub fn new(
        config: &Config,
        buckets: Buckets,
        lasting: Lasting,
    ) -> Result<Arc<Self>, BuildErrors> {
        let live = Live::build(config, buckets, &lasting, None)?;
        Ok(Arc::new(Self {
            live: ArcSwap::from_pointee(live),
            lasting,
        }))
    }

    /// [`Portcullis::new`] with the identities built already ([`build::identities`]).
    pub fn with_identities(
        config: &Config,
        identities: build::Identities,
        buckets: Buckets,
        lasting: Lasting,
    ) -> Arc<Self> {
        let (state, tls) = build::assemble(config, identities, buckets, &lasting, None);
        Arc::new(Self {
            live: ArcSwap::from_pointee(Live::serving(config, state, tls)),
            lasting,
        })
    }

    /// The state requests see now.
    pub fn state(&self) -> Arc<AppState> {
        self.live.load().state.clone()
    }

    /// Swaps in `config` (already validated): principals, keys, limits, rate limits, CORS,
    /// JWT, links and certificates. What only a restart can change (listeners, backend,
    /// log) is left as it is, and said in the returned notes. On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, BuildErrors> {
        let current = self.live.load_full();
        let (old, new) = (
            config::RestartOnly::of(&current.config),
            config::RestartOnly::of(config),
        );
        if old.tls_switched(&new) {
            return Err(BuildError::new(
                "server.tls or s3_api.tls",
                "cannot be turned on or off by a reload; restart",
            )
            .into());
        }
        let notes = old
            .changes(&new)
            .into_iter()
            .map(|field| format!("{field} changed; it takes effect at the next restart"))
            .collect();
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
    ) -> Result<Self, BuildErrors> {
        let (state, tls) = build::state(config, buckets, lasting, previous)?;
        Ok(Self::serving(config, state, tls))
    }

    /// The service for `state`, with `[cors]` in front of the router.
    fn serving(config: &Config, state: AppState, tls: build::Tls) -> Self {
        let state = Arc::new(state);
        // The door answers browsers as `/v1` does: a page using its presigned URLs needs the
        // same `[cors]`.
        let door = state.door.is_some().then(|| {
            let door = door::Door::new(state.clone());
            match &config.cors {
                Some(c) => SyncService::new(Preflights {
                    inner: cors_layer(c).layer(door),
                    allowed: c.allowed_origins.clone().into(),
                }),
                None => SyncService::new(door),
            }
        });
        let gateway = Gateway::new(state.clone());
        let service = match &config.cors {
            Some(c) => SyncService::new(Preflights {
                inner: cors_layer(c).layer(gateway),
                allowed: c.allowed_origins.clone().into(),
            }),
            None => SyncService::new(gateway),
        };
        Self {
            config: config.clone(),
            state,
            service,
            door,
            tls,
        }
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
    if let Some(first) = gateway.live.load().tls.public.clone() {
        let g = gateway.clone();
        opts.tls = Some(TlsSource(Arc::new(move || {
            g.live
                .load()
                .tls
                .public
                .clone()
                .unwrap_or_else(|| first.clone())
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

/// Serves the S3 front door on `listener` until `shutdown` resolves: the same stack as
/// [`run`] (access log, panic catching, shedding, each answering in S3's XML here), then the
/// current config's [`door::Door`], swapped whole on reload.
pub async fn run_door(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    gateway: Arc<Portcullis>,
    log: Arc<AccessLog>,
    mut opts: ServerOptions,
) {
    opts.tls = None;
    if let Some(first) = gateway.live.load().tls.door.clone() {
        let g = gateway.clone();
        opts.tls = Some(TlsSource(Arc::new(move || {
            g.live
                .load()
                .tls
                .door
                .clone()
                .unwrap_or_else(|| first.clone())
        })));
    }
    let shed = gateway.lasting.shed.clone();
    let current = tower::service_fn(move |req: http::Request<Body>| {
        let live = gateway.live.load();
        // A reload cannot remove `[s3_api]` from under its listener (it is restart-only).
        let service = live.door.clone().unwrap_or_else(|| live.service.clone());
        service.oneshot(req)
    });
    let service = ServiceBuilder::new()
        .map_request(|mut req: http::Request<Body>| {
            req.extensions_mut().insert(door::S3Dialect);
            req
        })
        // S3 clients report the request id from this header, on every answer, refusals too.
        .map_response(|mut resp: http::Response<Body>| {
            if let Some(id) = resp.headers().get("x-request-id").cloned() {
                resp.headers_mut().insert("x-amz-request-id", id);
            }
            resp
        })
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
                .map(|net| net.0)
                .collect(),
        ),
    }
}
