//! The `portcullis` command: parse the command line, load the config, set up logging, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::admin::Health;
use portcullis::auth::generate_key;
use portcullis::config::{self, AuditMode, BackendKind, Config, LogFormat, PrincipalConfig, Rate};
use portcullis::obs::AccessLog;
use portcullis::policy::Action;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authenticating, streaming gateway in front of a private S3 bucket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Run on 127.0.0.1 with an embedded S3 backend and a fresh API key. No AWS needed.
        #[arg(long)]
        dev: bool,
        /// Listen here instead of `server.listen` (e.g. 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data folder of the embedded backend (default ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Admin listener here instead of `admin.listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// With --dev: also allow browser pages from this origin (repeatable); pages on
        /// http://localhost and http://127.0.0.1, any port, are always allowed.
        #[arg(long = "cors-origin", requires = "dev", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// With --dev: the base of the links it issues (default: its own address).
        #[arg(long, requires = "dev", value_name = "URL")]
        public_url: Option<String>,
    },
    /// Ask a running gateway's admin listener whether it is ready (exit 0) or not (exit 1):
    /// a container HEALTHCHECK that needs no curl in the image.
    Health {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        /// `/readyz` (default) or `/healthz`.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Validate a config file and print what is wrong, with file, line and field.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a new random API key and the `sha256:` hash to paste into a config.
    Keygen {
        /// Print `{"key","hash"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate load against a gateway (bounded by --duration and --requests).
    Load {
        /// The gateway, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// An API key; also read from PORTCULLIS_KEY.
        #[arg(long, env = "PORTCULLIS_KEY", hide_env_values = true)]
        key: String,
        #[arg(long, value_enum, default_value = "get")]
        op: portcullis::load::Op,
        /// Object size, e.g. 1KiB, 1MiB.
        #[arg(long, default_value = "1KiB")]
        size: portcullis::config::units::Size,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// How long to run, e.g. 30s.
        #[arg(long, default_value = "30s")]
        duration: portcullis::config::units::Span,
        /// Stop after this many requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Keys used are PREFIX + worker number (default: the key's principal's own prefix,
        /// from GET /v1/me, then `load/`).
        #[arg(long)]
        prefix: Option<String>,
        /// Content-Type of the uploads (default: none, the gateway sniffs).
        #[arg(long)]
        content_type: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run only the embedded S3 server (s3s + s3s-fs, for development and benchmarks, not
    /// production) and print its endpoint, bucket and generated credentials as one JSON line.
    S3Server {
        /// Data folder.
        #[arg(long)]
        root: PathBuf,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The bucket to create.
        #[arg(long, default_value = "portcullis")]
        bucket: String,
    },
    /// Check the bucket's security posture and print a report (exit 1 if a check failed).
    Audit {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// jemalloc rather than glibc's malloc: it returns freed pages to the system (glibc keeps
/// them in its heaps, so memory freed by parked connections stayed resident).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { json } => {
            let (key, hash) = generate_key();
            if json {
                println!("{}", serde_json::json!({ "key": key, "hash": hash }));
            } else {
                println!("key:  {key}");
                println!("hash: {hash}");
                println!("\nGive the key to the client; put the hash in its principal's api_keys.");
            }
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {}: {w}", config.display());
                }
                println!("{}: ok", config.display());
                print!("{}", config::describe(&loaded.config));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Load {
            url,
            key,
            op,
            size,
            concurrency,
            duration,
            requests,
            prefix,
            content_type,
            json,
        } => {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return ExitCode::FAILURE;
            };
            let prefix = match prefix {
                Some(p) => p,
                None => match runtime.block_on(portcullis::load::own_prefix(&url, &key)) {
                    Ok(own) => format!("{own}load/"),
                    Err(e) => {
                        eprintln!(
                            "portcullis: cannot learn the key's prefix (or pass --prefix): {e:#}"
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            let opts = portcullis::load::LoadOptions {
                url,
                key,
                op,
                size: size.bytes(),
                concurrency,
                duration: duration.get(),
                requests,
                prefix,
                content_type,
                progress: !json,
                presigned: None,
                prepared: false,
            };
            match runtime.block_on(portcullis::load::run(opts)) {
                Ok(summary) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&summary).unwrap_or_default()
                        );
                    } else {
                        print!("{}", summary.text());
                    }
                    if summary.mostly_errors() {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Audit { config, json } => {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(audit(&config, json)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::S3Server {
            root,
            listen,
            bucket,
        } => {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return ExitCode::FAILURE;
            };
            runtime.block_on(async {
                let server = match portcullis::embedded::start_on(&root, &bucket, listen).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("portcullis: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "endpoint": server.endpoint,
                        "access_key": server.access_key,
                        "secret_key": server.secret_key,
                        "bucket": bucket,
                    })
                );
                wait_for_signal().await;
                ExitCode::SUCCESS
            })
        }
        Command::Health { admin, path } => {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(portcullis::admin::probe(admin, &path)) {
                Ok(_) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("not ok: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            dev,
            listen,
            data,
            admin_listen,
            cors_origins,
            public_url,
        } => {
            let overrides = Overrides {
                listen,
                data,
                admin_listen,
            };
            let dev = dev.then_some(DevOptions {
                cors_origins,
                public_url,
            });
            let prepared = match prepare(config, dev, &overrides) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = prepared.config.server.worker_threads {
                runtime.worker_threads(n);
            }
            let runtime = match runtime.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(prepared, overrides)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config `serve` starts with, read before the runtime is built (it sizes the runtime).
struct Prepared {
    path: Option<PathBuf>,
    config: Config,
    warnings: Vec<config::Warning>,
    /// `--dev`: the generated key, shown once.
    dev_key: Option<String>,
}

/// `serve --dev`'s own flags.
struct DevOptions {
    cors_origins: Vec<String>,
    public_url: Option<String>,
}

fn prepare(
    path: Option<PathBuf>,
    dev: Option<DevOptions>,
    overrides: &Overrides,
) -> anyhow::Result<Prepared> {
    let (mut config, warnings, dev_key) = if let Some(dev) = dev {
        let (key, hash) = generate_key();
        let mut config = dev_config(hash);
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
        (config, Vec::new(), Some(key))
    } else {
        let path = path.as_ref().expect("clap requires --config without --dev");
        let loaded = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        (loaded.config, loaded.warnings, None)
    };
    overrides.apply(&mut config);
    Ok(Prepared {
        path,
        config,
        warnings,
        dev_key,
    })
}

async fn serve(prepared: Prepared, overrides: Overrides) -> anyhow::Result<()> {
    let Prepared {
        path,
        config,
        warnings,
        dev_key,
    } = prepared;
    init_tracing(config.log.format);
    // Every connection is a descriptor: take all the process may have (as nginx's
    // worker_rlimit_nofile would), so a burst of clients meets max_concurrent_requests, not
    // EMFILE.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    portcullis::obs::metrics::install();
    for w in warnings {
        tracing::warn!(field = %w.field, "{}", w.message);
    }

    let handle = portcullis::start_backend(&config).await?;
    // One bucket check at start; it also primes `/readyz`.
    let health = Health::new(handle.backend.clone());
    if !health.check().await {
        if config.backend.kind == BackendKind::Embedded {
            let why = match handle.backend.ping().await {
                Err(e) => format!("{}: {}", e.message, e.detail.as_deref().unwrap_or("")),
                Ok(()) => "it answered only on a second try".into(),
            };
            anyhow::bail!("the embedded backend does not answer: {why}");
        }
        tracing::error!("the bucket is not reachable now; requests will fail until it is");
    }
    if config.backend.kind == BackendKind::Embedded && config.backend.audit != AuditMode::Off {
        // Its S3 server implements none of the audit's calls (and logs each as a 501).
        tracing::info!("bucket audit skipped: the embedded backend implements none of its checks");
    } else if config.backend.audit != AuditMode::Off {
        let report = portcullis::audit::run(&handle.backend).await;
        for c in report
            .checks
            .iter()
            .filter(|c| c.state != portcullis::audit::State::Pass)
        {
            tracing::warn!(check = c.check, state = ?c.state, seen = %c.detail, why = c.why, fix = c.fix, "bucket audit");
        }
        report
            .enforce(config.backend.audit)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", report.table()))?;
    }
    let age = config.backend.abandoned_upload_age.get();
    if !age.is_zero() {
        match handle.backend.sweep_abandoned_uploads(age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "swept abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "could not sweep abandoned multipart uploads"),
        }
    }
    let log = Arc::new(AccessLog::open(&config.log.access_log)?);
    let addr: SocketAddr = config.server.listen.parse()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let mut config = config;
    if dev_key.is_some() && config.server.public_url.is_none() {
        // Links a page on another origin can use: absolute, on the address it listens on.
        config.server.public_url = Some(format!("http://{local}"));
    }
    let gateway = portcullis::Portcullis::new(&config, handle.backend.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(reload_on_sighup(gateway.clone(), path, overrides));
    let admin_addr: SocketAddr = config.admin.listen.parse()?;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {admin_addr} (admin): {e}"))?;
    let admin_local = admin.local_addr()?;
    let _watch = health.watch(READINESS_INTERVAL);
    tokio::spawn(portcullis::admin::serve(
        admin,
        health.clone(),
        std::future::pending(),
    ));
    tracing::info!(listen = %local, admin = %admin_local, bucket = handle.backend.bucket(), "portcullis is serving");

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
        eprintln!();
    }

    portcullis::run(
        listener,
        shutdown_signal(health.clone()),
        gateway,
        log,
        portcullis::server_options(&config),
    )
    .await;
    tracing::info!("stopped");
    drop(handle);
    Ok(())
}

/// Command-line values that replace the config's, at start and on every reload.
#[derive(Clone)]
struct Overrides {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen.to_string();
        }
        if let Some(data) = &self.data {
            config.backend.root = data.clone();
        }
        if let Some(admin) = self.admin_listen {
            config.admin.listen = admin.to_string();
        }
    }
}

/// `SIGHUP`: reads the config file again and swaps it in. A config that fails validation is
/// refused, the running one keeps serving, and the log says why.
async fn reload_on_sighup(
    gateway: Arc<portcullis::Portcullis>,
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
            let Some(path) = &path else {
                tracing::info!("SIGHUP: serve --dev has no config file to reload");
                continue;
            };
            let loaded = match config::load(path) {
                Ok(loaded) => loaded,
                Err(e) => {
                    portcullis::obs::metrics::config_reload(false);
                    tracing::error!(config = %path.display(), "reload refused; the running config keeps serving:\n{e}");
                    continue;
                }
            };
            let mut new = loaded.config;
            overrides.apply(&mut new);
            for w in loaded.warnings {
                tracing::warn!(field = %w.field, "{}", w.message);
            }
            match gateway.reload(&new) {
                Ok(notes) => {
                    portcullis::obs::metrics::config_reload(true);
                    for n in notes {
                        tracing::warn!("{n}");
                    }
                    tracing::info!(config = %path.display(), "config reloaded");
                }
                Err(e) => {
                    portcullis::obs::metrics::config_reload(false);
                    tracing::error!(config = %path.display(), "reload refused; the running config keeps serving: {e}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (gateway, path, overrides);
}

/// How often `/readyz` asks the bucket.
const READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// `portcullis audit`: true when no check failed.
async fn audit(path: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    let loaded = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = portcullis::start_backend(&loaded.config).await?;
    let report = portcullis::audit::run(&handle.backend).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(!report.any_failed())
}

/// `serve --dev`: embedded backend, one principal with every permission on the whole bucket.
fn dev_config(key_hash: String) -> Config {
    let mut c = Config::default();
    c.backend.kind = BackendKind::Embedded;
    // Any free port: 9090 is often taken (Prometheus itself); the banner prints the address.
    c.admin.listen = "127.0.0.1:0".into();
    c.backend.bucket = config::EMBEDDED_BUCKET.into();
    c.log.format = LogFormat::Pretty;
    // The embedded backend implements none of the audit's calls: nothing to learn at start.
    c.backend.audit = AuditMode::Off;
    c.rate_limit.max_concurrent_per_principal = 1024;
    // Pages served by a local dev server (any port) may call it.
    c.cors = Some(config::CorsConfig {
        allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
        max_age: config::units::Span::secs(600),
        allow_credentials: false,
    });
    // Signed links with a secret that lives as long as the process.
    let (secret, _) = generate_key();
    c.links = Some(config::LinksConfig {
        secrets_env: Vec::new(),
        default_ttl: config::units::Span::secs(60),
        max_ttl: config::units::Span::secs(24 * 3600),
        secrets: vec![secret],
    });
    c.principals.push(PrincipalConfig {
        name: "dev".into(),
        // Generous, so `portcullis load` against a dev gateway measures the gateway rather
        // than the default rate limit.
        rate_limit: Some(Rate {
            requests_per_second: 100_000,
            burst: 100_000,
        }),
        api_keys: vec![key_hash],
        allow: vec![
            Action::Get,
            Action::Put,
            Action::Delete,
            Action::List,
            Action::Link,
        ],
        ..Default::default()
    });
    c
}

fn init_tracing(format: LogFormat) {
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
async fn shutdown_signal(health: Arc<Health>) {
    wait_for_signal().await;
    health.drain();
    tracing::info!("signal received: draining (a second signal exits at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
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
