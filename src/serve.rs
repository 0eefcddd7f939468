//! `portcullis serve`: everything between a config and a gateway answering on its listener.
//! [`prepare`] reads the config (or makes `--dev`'s) before the runtime exists, since it sizes
//! the runtime; [`serve`] starts the backend, checks it (readiness, audit, the sweep of
//! abandoned uploads), binds the listeners, prints `--dev`'s banner, reloads on `SIGHUP`
//! ([`reload_on_sighup`]) and drains on `SIGTERM` ([`shutdown_signal`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::Health;
use crate::auth::generate_key;
use crate::config::{self, AuditMode, BackendKind, Config, LogFormat};
use crate::obs::AccessLog;

/// The config `serve` starts with, read before the runtime is built (it sizes the runtime).
pub struct Prepared {
    pub path: Option<PathBuf>,
    pub config: Config,
    pub warnings: Vec<config::Warning>,
    /// Where the config came from (`--dev`: nowhere), to place the build step's problems.
    pub source: config::Source,
    /// `--dev`: the generated key, shown once.
    pub dev_key: Option<String>,
}

/// `serve --dev`'s own flags.
pub struct DevOptions {
    pub cors_origins: Vec<String>,
    pub public_url: Option<String>,
}

pub fn prepare(
    path: Option<PathBuf>,
    dev: Option<DevOptions>,
    overrides: &Overrides,
) -> anyhow::Result<Prepared> {
    let (mut config, warnings, source, dev_key) = if let Some(dev) = dev {
        let (key, hash) = generate_key();
        let hash = hash.parse().expect("generate_key makes a valid hash");
        let mut config = crate::dev::config(hash);
        for origin in dev.cors_origins {
            config::check_origin(&origin).map_err(|e| anyhow::anyhow!("--cors-origin: {e}"))?;
            if let Some(cors) = &mut config.cors {
                cors.allowed_origins.push(origin);
            }
        }
        if let Some(url) = dev.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--public-url: `{url}` must start with http:// or https://");
            }
            config.server.public_url = Some(url);
        }
        (config, Vec::new(), config::Source::default(), Some(key))
    } else {
        let path = path.as_ref().expect("clap requires --config without --dev");
        let loaded = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        (loaded.config, loaded.warnings, loaded.source, None)
    };
    overrides.apply(&mut config);
    Ok(Prepared {
        path,
        config,
        warnings,
        source,
        dev_key,
    })
}

pub async fn serve(prepared: Prepared, overrides: Overrides) -> anyhow::Result<()> {
    let Prepared {
        path,
        config,
        warnings,
        source,
        dev_key,
    } = prepared;
    init_tracing(config.log.format);
    // Certificates, JWKS, secrets and principals, built once and before anything starts: a
    // config that cannot be built stops here, with its file and lines.
    let buckets = config.bucket_configs();
    let names: Vec<&str> = buckets.iter().map(|b| b.name.as_str()).collect();
    let identities = crate::build::identities(&config, &names, None)
        .map_err(|e| anyhow::anyhow!("{}", source.locate(e.problems())))?;
    drop(names);
    drop(buckets);
    // Every connection is a descriptor: take all the process may have (as nginx's
    // worker_rlimit_nofile would), so a burst of clients meets max_concurrent_requests, not
    // EMFILE.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    crate::obs::metrics::install();
    for w in warnings {
        tracing::warn!(field = %w.field, "{}", w.message);
    }

    let handle = crate::start_backend(&config).await?;
    // One check of every bucket at start; it also primes `/readyz`.
    let health = Health::new(&handle.buckets);
    if !health.check().await {
        if config.backend.kind == BackendKind::Embedded {
            let why = match handle.buckets.first().ping().await {
                Err(e) => format!("{}: {}", e.message, e.detail.as_deref().unwrap_or("")),
                Ok(()) => "it answered only on a second try".into(),
            };
            anyhow::bail!("the embedded backend does not answer: {why}");
        }
        tracing::error!("a bucket is not reachable now; its requests will fail until it is");
    }
    let configs = config.bucket_configs();
    for (backend, bucket) in handle.buckets.iter().zip(configs.iter()) {
        audit_at_start(&config, backend, bucket.audit).await?;
    }
    let age = config.backend.abandoned_upload_age.get();
    if !age.is_zero() {
        for backend in handle.buckets.iter() {
            match backend.sweep_abandoned_uploads(age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    bucket = backend.name(),
                    aborted = n,
                    "swept abandoned multipart uploads"
                ),
                Err(e) => {
                    tracing::warn!(bucket = backend.name(), error = %e, "could not sweep abandoned multipart uploads")
                }
            }
        }
    }
    let log = Arc::new(AccessLog::open(
        &config.log.access_log,
        config.log.access_log_flush.get(),
    )?);
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let mut config = config;
    if dev_key.is_some() && config.server.public_url.is_none() {
        // Links a page on another origin can use: absolute, on the address it listens on.
        config.server.public_url = Some(format!("http://{local}"));
    }
    let lasting = crate::Lasting::start(&config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway =
        crate::Portcullis::with_identities(&config, identities, handle.buckets.clone(), lasting);
    tokio::spawn(reload_on_sighup(
        gateway.clone(),
        log.clone(),
        path,
        overrides,
    ));
    let admin_addr = config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {admin_addr} (admin): {e}"))?;
    let admin_local = admin.local_addr()?;
    let door = match &config.s3_api {
        None => None,
        Some(door) => {
            let at = door.listen;
            let listener = TcpListener::bind(at).await.map_err(|e| {
                let hint = if dev_key.is_some() {
                    "; --s3-listen moves it"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot listen on {at} (the S3 door): {e}{hint}")
            })?;
            Some(listener)
        }
    };
    let door_local = door.as_ref().map(|l| l.local_addr()).transpose()?;
    let _watch = health.watch(READINESS_INTERVAL);
    tokio::spawn(crate::admin::serve(
        admin,
        health.clone(),
        std::future::pending(),
    ));
    let names = handle.buckets.names().join(", ");
    match door_local {
        Some(door) => {
            tracing::info!(listen = %local, s3_api = %door, admin = %admin_local, buckets = %names, "portcullis is serving")
        }
        None => {
            tracing::info!(listen = %local, admin = %admin_local, buckets = %names, "portcullis is serving")
        }
    }

    if let Some(key) = dev_key {
        let root = config.backend.root.display();
        eprintln!();
        eprintln!("  Portcullis dev gateway on http://{local}  (embedded S3 storing under {root})");
        eprintln!("  API key (shown once): {key}");
        eprintln!("  Console (upload and download in a browser): http://{local}/");
        eprintln!("  Admin (healthz, readyz, metrics): http://{admin_local}");
        eprintln!();
        eprintln!("  Try:  echo hello > hello.txt");
        eprintln!(
            "        curl -T hello.txt -H 'Authorization: Bearer {key}' http://{local}/v1/objects/hello.txt"
        );
        eprintln!(
            "        curl -H 'Authorization: Bearer {key}' http://{local}/v1/objects/hello.txt"
        );
        if let (Some(door), Some((id, secret))) = (door_local, dev_s3_credentials(&config)) {
            let region = config
                .s3_api
                .as_ref()
                .map_or("us-east-1", |d| d.region.as_str());
            eprintln!();
            eprintln!("  S3 door on http://{door}  (aws-cli, boto3, rclone, s5cmd)");
            eprintln!("  Access key id: {id}");
            eprintln!("  Secret (shown once): {secret}");
            eprintln!(
                "  Try:  AWS_ACCESS_KEY_ID={id} AWS_SECRET_ACCESS_KEY={secret} AWS_DEFAULT_REGION={region} \\"
            );
            eprintln!(
                "        aws --endpoint-url http://{door} s3 cp hello.txt s3://{}/hello.txt",
                config.bucket_configs()[0].name
            );
        }
        eprintln!();
    }

    // One signal stops both listeners; each drains its own requests.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let door_task = door.map(|listener| {
        let mut stopped = stopped.clone();
        tokio::spawn(crate::run_door(
            listener,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            gateway.clone(),
            log.clone(),
            crate::server_options(&config),
        ))
    });
    let signal = async move {
        shutdown_signal(health.clone()).await;
        let _ = stop.send(true);
    };
    crate::run(
        listener,
        signal,
        gateway,
        log.clone(),
        crate::server_options(&config),
    )
    .await;
    if let Some(task) = door_task {
        let _ = task.await;
    }
    log.flush();
    tracing::info!("stopped");
    drop(handle);
    Ok(())
}

/// `serve --dev`'s S3 access key and its secret, from its config.
fn dev_s3_credentials(config: &Config) -> Option<(String, String)> {
    let master = config.s3_api.as_ref()?.secret.as_ref()?;
    let id = config.principals.first()?.s3_access_keys.first()?;
    Some((
        id.clone(),
        crate::auth::access_keys::derive_secret(master.as_bytes(), id),
    ))
}

/// Command-line values that replace the config's, at start and on every reload.
#[derive(Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub admin_listen: Option<SocketAddr>,
    /// Moves `s3_api.listen` (with `--dev`, the door's 127.0.0.1:9000).
    pub s3_listen: Option<SocketAddr>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(data) = &self.data {
            config.backend.root = data.clone();
        }
        if let Some(admin) = self.admin_listen {
            config.admin.listen = admin;
        }
        if let (Some(at), Some(door)) = (self.s3_listen, config.s3_api.as_mut()) {
            door.listen = at;
        }
    }
}

/// The bucket audit at start, as `mode` asks: `enforce` refuses to start on a public bucket.
async fn audit_at_start(
    config: &Config,
    backend: &crate::relay::Backend,
    mode: AuditMode,
) -> anyhow::Result<()> {
    if mode == AuditMode::Off {
        return Ok(());
    }
    if config.backend.kind == BackendKind::Embedded {
        // Its S3 server implements none of the audit's calls (and logs each as a 501).
        tracing::info!(
            bucket = backend.name(),
            "bucket audit skipped: the embedded backend implements none of its checks"
        );
        return Ok(());
    }
    let report = crate::audit::run(backend).await;
    for c in report
        .checks
        .iter()
        .filter(|c| c.state != crate::audit::State::Pass)
    {
        tracing::warn!(bucket = backend.name(), check = c.check, state = ?c.state, seen = %c.detail, why = c.why, fix = c.fix, "bucket audit");
    }
    report
        .enforce(mode)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", report.table()))
}

/// `SIGHUP`: opens the access log's file again (logrotate), reads the config file again and
/// swaps it in. A config that fails validation is refused, the running one keeps serving, and
/// the log says why.
pub async fn reload_on_sighup(
    gateway: Arc<crate::Portcullis>,
    log: Arc<AccessLog>,
    path: Option<PathBuf>,
    overrides: Overrides,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload is unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            // Blocking file work, as reading the config below is: once per SIGHUP.
            match log.reopen() {
                Ok(Some(file)) => tracing::info!(file = %file.display(), "access log reopened"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the access log; writing on to the file it had")
                }
            }
            let Some(path) = &path else {
                tracing::info!("SIGHUP: serve --dev has no config file to reload");
                continue;
            };
            let loaded = match config::load(path) {
                Ok(loaded) => loaded,
                Err(e) => {
                    crate::obs::metrics::config_reload(false);
                    tracing::error!(config = %path.display(), "reload refused; the running config keeps serving:\n{e}");
                    continue;
                }
            };
            let mut new = loaded.config.clone();
            overrides.apply(&mut new);
            for w in &loaded.warnings {
                tracing::warn!(field = %w.field, "{}", w.message);
            }
            match gateway.reload(&new) {
                Ok(notes) => {
                    crate::obs::metrics::config_reload(true);
                    for n in notes {
                        tracing::warn!("{n}");
                    }
                    tracing::info!(config = %path.display(), "config reloaded");
                }
                Err(e) => {
                    crate::obs::metrics::config_reload(false);
                    let e = loaded.source.locate(e.problems());
                    tracing::error!(config = %path.display(), "reload refused; the running config keeps serving:\n{e}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (gateway, log, path, overrides);
}

/// How often `/readyz` asks the bucket.
pub const READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};
    let asked =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Whatever PORTCULLIS_LOG asks, these targets never log below these levels: the embedded
    // S3 server's debug lines and the SDK's trace lines print whole signed requests, and a
    // SigV4 signature can be replayed for 15 minutes. A cap only lowers what was asked.
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("s3s", LevelFilter::INFO)
        // s3s logs every refused request as an error; the door and the relay log each
        // failure once themselves, with the request id.
        .with_target("s3s::ops", LevelFilter::OFF)
        .with_target("s3s_fs", LevelFilter::INFO)
        .with_target("aws_smithy_runtime", LevelFilter::DEBUG)
        .with_target("aws_sigv4", LevelFilter::DEBUG);
    let filter = asked.and(caps);
    let layer = fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
        LogFormat::Pretty => layer.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

/// The first SIGTERM or SIGINT: `/readyz` goes unready, the listener stops accepting and
/// in-flight requests may finish (up to `shutdown_grace`). A second one exits at once.
pub async fn shutdown_signal(health: Arc<Health>) {
    wait_for_signal().await;
    health.drain();
    tracing::info!("signal received: draining (a second signal exits at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return ctrl_c.await.unwrap_or(());
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
