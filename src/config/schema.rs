//! The configuration schema (SPEC section 2): serde structs, each field with its unit and
//! default. Parsing only; the rules that span fields live in `validate.rs`.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::{Size, Span};
use std::net::SocketAddr;

use crate::rules::{Action, KeyHash, Net, TypePattern};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub backend: BackendConfig,
    /// `[[buckets]]`: several buckets behind one gateway. Empty: the one bucket of `[backend]`
    /// (see [`Config::bucket_configs`]).
    pub buckets: Vec<BucketConfig>,
    pub limits: LimitsConfig,
    pub rate_limit: RateLimitConfig,
    pub cors: Option<CorsConfig>,
    pub links: Option<LinksConfig>,
    pub log: LogConfig,
    pub principals: Vec<PrincipalConfig>,
    pub jwt: Option<JwtConfig>,
    /// `[redis]`: limits shared by every instance. Default: each instance keeps its own.
    pub redis: Option<RedisConfig>,
    /// `[s3_api]`: the S3 front door (SPEC section 11). Default: no door.
    pub s3_api: Option<S3ApiConfig>,
}

/// `[server]`: the public listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Base URL that makes signed links absolute. Default: none (links are relative).
    pub public_url: Option<String>,
    /// TLS with rustls: PEM certificate and key, `h2` and `http/1.1` by ALPN. Default: plain
    /// HTTP (behind a TLS-terminating load balancer).
    pub tls: Option<TlsConfig>,
    /// Time a client has to send the request head, from its first byte. Default `10s`.
    pub header_read_timeout: Span,
    /// An HTTP/1.1 connection idle between requests is closed after this. Default `75s`.
    pub keep_alive_timeout: Span,
    /// Longest pause allowed inside a request body. Default `30s`.
    pub body_idle_timeout: Span,
    /// How long in-flight requests may run after SIGTERM. Default `30s`.
    pub shutdown_grace: Span,
    /// Requests served at once before new ones are shed with 503. Default `1024`.
    pub max_concurrent_requests: usize,
    /// Of those, requests one client address (IPv6: its /64) may have at once; past it its
    /// new ones are shed with 503. Default: a quarter of `max_concurrent_requests`, and at
    /// least 8 (or all of them, when fewer).
    pub max_requests_per_address: Option<usize>,
    /// Client connections open at once; past it new ones are closed at once. Default `10000`.
    pub max_connections: usize,
    /// Threads that serve requests. Default: one per CPU.
    pub worker_threads: Option<usize>,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: Vec<Net>,
}

impl ServerConfig {
    /// `max_requests_per_address`, or its default.
    pub fn requests_per_address(&self) -> usize {
        let all = self.max_concurrent_requests.max(1);
        self.max_requests_per_address
            .unwrap_or((all / 4).max(all.min(8)))
            .clamp(1, all)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            tls: None,
            header_read_timeout: Span::secs(10),
            keep_alive_timeout: Span::secs(75),
            body_idle_timeout: Span::secs(30),
            shutdown_grace: Span::secs(30),
            max_concurrent_requests: 1024,
            max_requests_per_address: None,
            max_connections: 10_000,
            worker_threads: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `server.tls`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to (mTLS). Default: none.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"optional"` (default; a client without a certificate uses a key,
    /// a JWT or a link) or `"required"` (the handshake fails without a valid certificate).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether a client certificate is required when `client_ca` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

/// `[admin]`: the listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Which S3 the gateway relays to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A real S3 (or S3-compatible) endpoint, credentials from the AWS default chain.
    #[default]
    S3,
    /// An S3 protocol server inside the process, storing under `root`.
    Embedded,
}

/// Server-side encryption requested on every write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Sse {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// What to do with the bucket audit at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    #[default]
    Warn,
    Enforce,
    Off,
}

/// `[backend]`: how the gateway reaches S3, and (without `[[buckets]]`) its one bucket.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// `"s3"` (default) or `"embedded"`.
    pub kind: BackendKind,
    /// The name clients, logs and metrics see for the one bucket. Default `files`.
    pub name: Option<String>,
    /// The bucket. Required for `s3`; default `portcullis` for `embedded`.
    pub bucket: String,
    /// Default `us-east-1`.
    pub region: String,
    /// An S3-compatible endpoint (MinIO, R2, Ceph, a test server). Default: AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default `false`.
    pub force_path_style: bool,
    /// `"AES256"` or `"aws:kms"`, sent on every write. Default: none (bucket default).
    pub sse: Option<Sse>,
    /// KMS key for `sse = "aws:kms"`.
    pub kms_key_id: Option<String>,
    /// Part size for bodies of unknown length (multipart upload). 5MiB to 5GiB, default `8MiB`.
    pub part_size: Size,
    /// Memory all uploads' part buffers may hold together; past it an upload waits for room
    /// (reading no more of its body) and gets `503` if none frees up soon. At least
    /// `part_size`. Default `256MiB`.
    pub upload_buffer_memory: Size,
    /// Bucket audit at start. Default `"warn"`.
    pub audit: AuditMode,
    /// Limit on opening a connection to S3. Default `3s`.
    pub connect_timeout: Span,
    /// Limit on S3's answer (headers) to a call without a streamed request body. Default `30s`.
    pub first_byte_timeout: Span,
    /// Unfinished multipart uploads older than this are aborted at start (left by a killed
    /// process). `0s` turns the sweep off. Default `24h`.
    pub abandoned_upload_age: Span,
    /// Data folder of the embedded backend. Default `./data`.
    pub root: PathBuf,
    /// GET and HEAD of objects, and uploads stored with one PutObject, signed and sent by the
    /// gateway itself (SigV4 on a plain HTTP client) instead of through aws-sdk-s3, with the
    /// SDK's endpoint, credentials, timeouts, retries and error mapping. `false`: every call
    /// through the SDK. Default `true`. Also read as `light_reads`, its first name.
    #[serde(alias = "light_reads")]
    pub light_path: bool,
    /// On the light path to a plain-HTTP endpoint, a download's bytes wait in the kernel
    /// until this much has come (or its end, or 1 ms), so that an S3 server sending small
    /// frames wakes the gateway once per this many bytes, not once per frame. `0`: off.
    /// At most `1MiB`. Default `64KiB`.
    pub download_gather: Size,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::S3,
            name: None,
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            force_path_style: false,
            sse: None,
            kms_key_id: None,
            part_size: Size::mib(8),
            upload_buffer_memory: Size::mib(256),
            audit: AuditMode::Warn,
            connect_timeout: Span::secs(3),
            first_byte_timeout: Span::secs(30),
            abandoned_upload_age: Span::secs(24 * 3600),
            root: PathBuf::from("./data"),
            light_path: true,
            download_gather: Size::kib(64),
        }
    }
}

/// The fields of `[backend]` that describe its one bucket: with `[[buckets]]`, they go in
/// each bucket's entry instead, and `[backend]` may not set them.
pub const BUCKET_FIELDS: [&str; 9] = [
    "name",
    "bucket",
    "region",
    "endpoint",
    "force_path_style",
    "sse",
    "kms_key_id",
    "part_size",
    "audit",
];

/// The bucket name clients see when `[backend]` names none.
pub const DEFAULT_BUCKET_NAME: &str = "files";

/// `[[buckets]]`: one bucket behind the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// What clients, logs and metrics call it; never the S3 bucket's name.
    pub name: String,
    /// The S3 bucket. Required for `kind = "s3"`; the embedded backend defaults it to `name`.
    #[serde(default)]
    pub bucket: String,
    /// Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// As `backend.endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// As `backend.force_path_style`.
    #[serde(default)]
    pub force_path_style: bool,
    /// As `backend.sse`.
    #[serde(default)]
    pub sse: Option<Sse>,
    /// As `backend.kms_key_id`.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// As `backend.part_size`.
    #[serde(default = "default_part_size")]
    pub part_size: Size,
    /// As `backend.audit`.
    #[serde(default)]
    pub audit: AuditMode,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_part_size() -> Size {
    Size::mib(8)
}

impl Config {
    /// The buckets behind the gateway, in order (the first is the default of principals and
    /// JWTs): `[[buckets]]`, or else the one bucket `[backend]` describes.
    pub fn bucket_configs(&self) -> std::borrow::Cow<'_, [BucketConfig]> {
        if !self.buckets.is_empty() {
            return std::borrow::Cow::Borrowed(&self.buckets);
        }
        let b = &self.backend;
        std::borrow::Cow::Owned(vec![BucketConfig {
            name: b.name.clone().unwrap_or_else(|| DEFAULT_BUCKET_NAME.into()),
            bucket: b.bucket.clone(),
            region: b.region.clone(),
            endpoint: b.endpoint.clone(),
            force_path_style: b.force_path_style,
            sse: b.sse,
            kms_key_id: b.kms_key_id.clone(),
            part_size: b.part_size,
            audit: b.audit,
        }])
    }

    /// Where `[backend]`'s one bucket's fields are reported: `backend.X`, or `buckets[i].X`.
    pub fn bucket_field(&self, index: usize, field: &str) -> String {
        if self.buckets.is_empty() {
            format!("backend.{field}")
        } else {
            format!("buckets[{index}].{field}")
        }
    }
}

/// `[limits]`: the defaults every principal starts from.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest object accepted. Default `5GiB`.
    pub max_object_size: Size,
    /// Allowed content types, patterns like `image/*`. Default `["*/*"]`.
    pub content_types: Vec<TypePattern>,
    /// Check magic bytes against the declared type. Default `true`.
    pub sniff: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_object_size: Size::gib(5),
            content_types: vec![TypePattern::any()],
            sniff: true,
        }
    }
}

/// A GCRA rate: sustained requests per second and burst.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// `[rate_limit]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per principal. Default `100`.
    pub requests_per_second: u32,
    /// Default `200`.
    pub burst: u32,
    /// Failed authentication attempts per client IP. Default 5/s, burst 10.
    pub unauthenticated_per_ip: Rate,
    /// Per-principal body throttle, both directions. Default: none.
    pub bytes_per_second: Option<Size>,
    /// Transfers one principal may have in flight at once. Default `64`.
    pub max_concurrent_per_principal: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 100,
            burst: 200,
            unauthenticated_per_ip: Rate {
                requests_per_second: 5,
                burst: 10,
            },
            bytes_per_second: None,
            max_concurrent_per_principal: 64,
        }
    }
}

/// `[cors]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed to call from a browser, like `https://app.example.com`, or `"*"`;
    /// `http://localhost:*` allows that host on any port.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer. Default `50m`.
    #[serde(default = "default_cors_max_age")]
    pub max_age: Span,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, TLS client certificates).
    /// Not needed for bearer keys. Refused with `"*"`. Default `false`.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_max_age() -> Span {
    Span::secs(50 * 60)
}

/// `[links]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// Environment variables holding the HMAC secrets (at least 32 bytes each): the first
    /// signs, all verify.
    pub secrets_env: Vec<String>,
    /// Lifetime of a link when the request names none. Default `60s`.
    #[serde(default = "default_link_ttl")]
    pub default_ttl: Span,
    /// Longest lifetime a link may ask for. Default `15m`.
    #[serde(default = "default_link_max_ttl")]
    pub max_ttl: Span,
    /// Secrets given directly (`serve --dev` only; never read from a file).
    #[serde(skip)]
    pub secrets: Vec<String>,
}

fn default_link_ttl() -> Span {
    Span::secs(60)
}

fn default_link_max_ttl() -> Span {
    Span::secs(15 * 60)
}

/// Access-log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Format of the application log (stderr). Default `"json"`.
    pub format: LogFormat,
    /// `"stdout"` (default) or a file path; one JSON line per request.
    pub access_log: String,
    /// How long a line may wait to be written together with others. Default `100ms`;
    /// `0s` writes each line as its request ends.
    pub access_log_flush: Span,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            access_log: "stdout".into(),
            access_log_flush: Span::millis(100),
        }
    }
}

/// `[[principals]]`: who may call, what they may do, where.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    /// `sha256:<64 hex>` hashes of the principal's API keys (several: rotation).
    pub api_keys: Vec<KeyHash>,
    /// Actions: `get` (GET and HEAD), `put`, `delete`, `list`, `link`.
    pub allow: Vec<Action>,
    /// Every key the principal touches starts with this. Default `""` (the whole bucket).
    ///
    /// Checked with the other rules (not while parsing) so that a file's every problem is
    /// reported at once.
    pub prefix: String,
    /// Narrows `limits.max_object_size`.
    pub max_object_size: Option<Size>,
    /// Narrows `limits.content_types`.
    pub content_types: Option<Vec<TypePattern>>,
    /// Overrides `[rate_limit]` for this principal.
    pub rate_limit: Option<Rate>,
    /// mTLS: client-certificate subjects that identify this principal, RFC 4514 text in the
    /// certificate's RDN order (`CN=scanner, O=Example`).
    pub client_cert_subjects: Vec<String>,
    /// mTLS: subject alternative names that identify this principal: `dns:NAME`, `uri:URI`
    /// (a SPIFFE ID) or `email:ADDRESS`.
    pub client_cert_sans: Vec<String>,
    /// The bucket it works in, by name. Default: the first bucket.
    pub bucket: Option<String>,
    /// Bytes in and out per UTC day. Default: no quota.
    pub max_bytes_per_day: Option<Size>,
    /// Access key ids for the S3 front door (several: rotation). Their secrets are derived
    /// from `s3_api.secrets_env`'s master secret, so the file holds none.
    pub s3_access_keys: Vec<String>,
}

/// `[jwt]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// JWKS document with the identity provider's RS256/ES256 public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Environment variable holding an HS256 secret (at least 32 bytes).
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// The claim that names the principal. Default `sub`.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The principal's prefix, `{claim}` replaced by the claim's value, like `users/{sub}/`.
    /// Required (`""` grants the whole bucket).
    #[serde(default)]
    pub prefix_template: Option<String>,
    /// Actions of every JWT principal (`link` is not among them: see the README).
    #[serde(default)]
    pub allow: Vec<Action>,
    /// The bucket JWT principals work in, by name. Default: the first bucket.
    #[serde(default)]
    pub bucket: Option<String>,
}

fn default_principal_claim() -> String {
    "sub".into()
}

/// What to do while Redis does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Serve on per-instance limits until Redis answers again.
    #[default]
    Local,
    /// Refuse requests that need a shared decision with `503`.
    Deny,
}

/// `[redis]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Environment variable holding `redis://[:password@]host:port/db`, `rediss://` (TLS) or
    /// `unix:///path/to/socket`.
    pub url_env: String,
    /// Prefix of every key the gateway writes. Default `portcullis:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest wait for an answer before Redis counts as away. Default `50ms`.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Span,
    /// `"local"` (default) or `"deny"`.
    #[serde(default)]
    pub on_error: OnRedisError,
    /// PEM CA certificates for a `rediss://` server whose certificate the system's roots do
    /// not cover. Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The URL given directly (tests only; never read from a file).
    #[serde(skip)]
    pub url: Option<String>,
}

fn default_key_prefix() -> String {
    "portcullis:".into()
}

fn default_redis_timeout() -> Span {
    Span::millis(50)
}

impl RedisConfig {
    /// The URL: given directly, or from `url_env`.
    pub fn resolve_url(&self) -> Result<String, String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        std::env::var(&self.url_env).map_err(|_| format!("${} is not set", self.url_env))
    }
}

/// `[s3_api]`: the S3 front door, a second listener that speaks S3 (SigV4) to the same
/// principals, policy and limits.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3ApiConfig {
    pub listen: SocketAddr,
    /// As `[server] tls`: h2 and http/1.1 by ALPN. Default: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Environment variable holding the master secret (at least 32 bytes) every access key's
    /// secret is derived from.
    #[serde(default)]
    pub secrets_env: Option<String>,
    /// The region clients sign for. Default `us-east-1`.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Longest `X-Amz-Expires` of a presigned URL. Default `7d` (S3's own limit).
    #[serde(default = "default_max_presign_ttl")]
    pub max_presign_ttl: Span,
    /// Also accept virtual-hosted style, `BUCKET.<domain>`. Default: path style only.
    #[serde(default)]
    pub domain: Option<String>,
    /// The master secret given directly (`serve --dev` only; never read from a file).
    #[serde(skip)]
    pub secret: Option<String>,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

fn default_max_presign_ttl() -> Span {
    Span::secs(7 * 24 * 3600)
}

impl S3ApiConfig {
    /// The master secret: given directly, or from `secrets_env`.
    pub fn resolve_secret(&self) -> Result<String, String> {
        if let Some(secret) = &self.secret {
            return Ok(secret.clone());
        }
        let Some(var) = &self.secrets_env else {
            return Err("is required: the environment variable holding the master secret".into());
        };
        std::env::var(var).map_err(|_| format!("${var} is not set"))
    }
}
