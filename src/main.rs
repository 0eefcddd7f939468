//! The `portcullis` command: parse the command line, load the config, set up logging, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::auth::generate_key;
use portcullis::config;
use portcullis::serve::{DevOptions, Overrides, prepare, serve, wait_for_signal};

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
        /// The S3 door here instead of `s3_api.listen` (with --dev: 127.0.0.1:9000).
        #[arg(long)]
        s3_listen: Option<SocketAddr>,
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
        /// An S3 access key id and its secret for the S3 door instead. The secret is derived
        /// from the master secret in `s3_api.secrets_env`'s variable (named by --config, or
        /// PORTCULLIS_S3_SECRET without it).
        #[arg(long)]
        s3: bool,
        /// With --s3: the config whose `[s3_api] secrets_env` names the master secret.
        #[arg(long, requires = "s3")]
        config: Option<PathBuf>,
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
        /// PEM CA certificates to trust for an https:// URL (default: the platform's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Speak HTTP/2 (ALPN over TLS, prior knowledge over plain HTTP).
        #[arg(long)]
        http2: bool,
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
        /// The largest piece a download is sent in (benchmarks: `4KiB` sends the file
        /// system's reads as they come, as some S3 servers and TLS records do).
        #[arg(long, default_value = "128KiB")]
        frame_size: portcullis::config::units::Size,
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

/// A new S3 access key id and its secret, derived from the master secret the config (or
/// `PORTCULLIS_S3_SECRET`) names.
fn keygen_s3(config: Option<&std::path::Path>) -> Result<(String, String), String> {
    let var = match config {
        Some(path) => {
            let loaded = portcullis::config::load(path).map_err(|e| e.to_string())?;
            let door = loaded
                .config
                .s3_api
                .ok_or_else(|| format!("{} has no [s3_api]", path.display()))?;
            door.secrets_env
                .ok_or_else(|| format!("{} names no s3_api.secrets_env", path.display()))?
        }
        None => "PORTCULLIS_S3_SECRET".to_owned(),
    };
    let master = std::env::var(&var).map_err(|_| format!("${var} is not set"))?;
    if master.len() < portcullis::auth::MIN_SECRET_BYTES {
        return Err(format!(
            "the master secret in ${var} is shorter than {} bytes",
            portcullis::auth::MIN_SECRET_BYTES
        ));
    }
    let id = portcullis::auth::access_keys::generate_id();
    let secret = portcullis::auth::access_keys::derive_secret(master.as_bytes(), &id);
    Ok((id, secret))
}

/// jemalloc rather than glibc's malloc: it returns freed pages to the system (glibc keeps
/// them in its heaps, so memory freed by parked connections stayed resident).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen {
            json,
            s3: true,
            config,
        } => match keygen_s3(config.as_deref()) {
            Ok((id, secret)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "access_key_id": id, "secret": secret })
                    );
                } else {
                    println!("access key id: {id}");
                    println!("secret:        {secret}");
                    println!(
                        "\nAdd the id to its principal's s3_access_keys and reload; give both to the client."
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis keygen --s3: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { json, .. } => {
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
        Command::CheckConfig { config } => match config::load(&config).and_then(|loaded| {
            // Certificates, JWKS, secrets and client-certificate names, as serve builds them.
            portcullis::build::check(&loaded.config)
                .map_err(|e| loaded.source.locate(e.problems()))?;
            Ok(loaded)
        }) {
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
            ca_file,
            http2,
            json,
        } => {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return ExitCode::FAILURE;
            };
            let prefix = match prefix {
                Some(p) => p,
                None => match runtime.block_on(portcullis::load::own_prefix(
                    &url,
                    &key,
                    ca_file.as_deref(),
                )) {
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
                ca_file,
                http2,
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
            frame_size,
        } => {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return ExitCode::FAILURE;
            };
            runtime.block_on(async {
                let frame = frame_size.bytes() as usize;
                let buckets = [bucket.as_str()];
                let sent = portcullis::embedded::start_with(&root, &buckets, listen, frame);
                let server = match sent.await {
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
            s3_listen,
            cors_origins,
            public_url,
        } => {
            let overrides = Overrides {
                listen,
                data,
                admin_listen,
                s3_listen,
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

/// `portcullis audit`: every bucket's checks; true when none failed. `--json` prints one
/// report, or an array of them when there are several buckets.
async fn audit(path: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    let loaded = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = portcullis::start_backend(&loaded.config).await?;
    let mut reports = Vec::new();
    for backend in handle.buckets.iter() {
        reports.push(portcullis::audit::run(backend).await);
    }
    if json {
        match reports.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            all => println!("{}", serde_json::to_string_pretty(all)?),
        }
    } else {
        for (i, (report, backend)) in reports.iter().zip(handle.buckets.iter()).enumerate() {
            if i > 0 {
                println!();
            }
            if reports.len() > 1 {
                println!("bucket {}:", backend.name());
            }
            print!("{}", report.table());
        }
    }
    Ok(!reports.iter().any(|r| r.any_failed()))
}
