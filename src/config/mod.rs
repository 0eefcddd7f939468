//! Configuration: the TOML schema, human units, validation that names file, line, field and
//! reason, and loading. A bad config is refused with a clear message, never a panic.

mod describe;
mod restart;
mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use describe::describe;
pub use restart::RestartOnly;
pub use schema::*;
pub use validate::{Warning, check_origin};

/// One thing wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending field, when it could be found.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `principals[1].prefix`; empty for the whole file.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("<config>")?,
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in one config, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A config that parsed and validated, with the warnings worth telling the operator.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Warning>,
    /// Where it came from: problems the build step finds later are placed in it.
    pub source: Source,
}

/// A config's file and text, to give a problem found in it its file and line.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    text: String,
}

impl Source {
    /// `(field, reason)` problems as errors with this source's file and each field's line,
    /// in file order.
    pub fn locate(&self, problems: impl IntoIterator<Item = (String, String)>) -> ConfigErrors {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|(field, reason)| ConfigError {
                file: self.file.clone(),
                line: locate_nearest(&self.text, &field),
                field,
                reason,
            })
            .collect();
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        ConfigErrors(errors)
    }
}

/// Reads, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: Some(path.to_owned()),
            line: None,
            field: String::new(),
            reason: format!("cannot read the file: {e}"),
        }])
    })?;
    let mut loaded = parse(&text, Some(path))?;
    loaded
        .warnings
        .extend(file_permission_warnings(path, &loaded.config));
    Ok(loaded)
}

/// Files whose permissions let other users change the gateway's config or read its secrets:
/// a config anyone may write, private keys anyone may read.
fn file_permission_warnings(path: &Path, config: &Config) -> Vec<Warning> {
    let mut w = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode());
        if mode(path).is_some_and(|m| m & 0o002 != 0) {
            w.push(Warning {
                field: String::new(),
                message: format!(
                    "{} is writable by every user: anyone on this machine can change who may \
                     do what; chmod o-w it",
                    path.display()
                ),
            });
        }
        if let Some(tls) = &config.server.tls
            && mode(&tls.key).is_some_and(|m| m & 0o044 != 0)
        {
            w.push(Warning {
                field: "server.tls.key".into(),
                message: format!(
                    "{} is readable by other users: chmod 600 it",
                    tls.key.display()
                ),
            });
        }
    }
    w
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(text: &str, file: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let file = file.map(Path::to_owned);
    let config = deserialize(text).map_err(|(field, line, reason)| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line,
            field,
            reason,
        }])
    })?;
    let source = Source {
        file,
        text: text.to_owned(),
    };
    match validate::validate(&config) {
        Ok(warnings) => Ok(Loaded {
            config,
            warnings,
            source,
        }),
        Err(problems) => Err(source.locate(problems)),
    }
}

/// serde with the path of the field that failed and the line of the failure.
fn deserialize(text: &str) -> Result<Config, (String, Option<usize>, String)> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        (String::new(), line, e.message().to_owned())
    })?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| line_of(text, s.start))
            .or_else(|| locate(text, &field));
        (field, line, inner.message().to_owned())
    })?;
    // With several buckets, each bucket's settings live in its own entry: `[backend]`
    // setting one of them too would leave it unclear which wins.
    if !config.buckets.is_empty() {
        let both = backend_bucket_fields(text);
        if let Some(first) = both.first() {
            let field = format!("backend.{first}");
            let line = locate(text, &field);
            let named = both
                .iter()
                .map(|f| format!("backend.{f}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err((
                field,
                line,
                format!(
                    "{named} and [[buckets]] are both given: with [[buckets]], each bucket's \
                     settings go in its own entry (keep [backend] for kind, root, timeouts, \
                     light_path, upload_buffer_memory and abandoned_upload_age)"
                ),
            ));
        }
    }
    // The embedded backend makes its buckets; they need no S3 name from the operator.
    if config.backend.kind == BackendKind::Embedded {
        if config.backend.bucket.is_empty() {
            config.backend.bucket = EMBEDDED_BUCKET.into();
        }
        for b in &mut config.buckets {
            if b.bucket.is_empty() && validate::buckets::valid_bucket_name(&b.name) {
                b.bucket = b.name.clone();
            }
        }
    }
    Ok(config)
}

/// The bucket fields (`BUCKET_FIELDS`) the text's `[backend]` table sets.
fn backend_bucket_fields(text: &str) -> Vec<&'static str> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(backend) = table.get("backend").and_then(toml::Value::as_table) else {
        return Vec::new();
    };
    BUCKET_FIELDS
        .into_iter()
        .filter(|f| backend.contains_key(*f))
        .collect()
}

/// The embedded backend's bucket when the config names none (`serve --dev`'s too).
pub const EMBEDDED_BUCKET: &str = "portcullis";

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line of `field`, or of the nearest enclosing table when the field is missing.
fn locate_nearest(text: &str, field: &str) -> Option<usize> {
    let mut path = field;
    loop {
        if let Some(line) = locate(text, path) {
            return Some(line);
        }
        path = &path[..path.rfind(['.', '['])?];
    }
}

/// Finds the line of a dotted field path such as `principals[1].prefix`.
fn locate(text: &str, field: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut table = doc.get_ref();
    let mut value: Option<&DeValue<'_>> = None;
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if let Some(DeValue::Table(t)) = value {
            table = t;
        } else if value.is_some() {
            break;
        }
        let (_, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        span = v.span();
        value = Some(v.get_ref());
        if let (Some(i), Some(DeValue::Array(items))) = (index, value) {
            let item = items.get(i)?;
            span = item.span();
            value = Some(item.get_ref());
        }
    }
    Some(line_of(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Some(Path::new("t.toml"))).unwrap_err().0
    }

    #[test]
    fn defaults_are_valid_for_embedded() {
        let loaded = parse("[backend]\nkind = \"embedded\"\n", None).unwrap();
        assert_eq!(loaded.config.backend.part_size, units::Size::mib(8));
        assert_eq!(loaded.config.server.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn the_light_path_keeps_its_first_name() {
        for key in ["light_path", "light_reads"] {
            let text = format!("[backend]\nkind = \"embedded\"\n{key} = false\n");
            assert!(
                !parse(&text, None).unwrap().config.backend.light_path,
                "{key}"
            );
        }
        assert!(
            parse("[backend]\nkind = \"embedded\"\n", None)
                .unwrap()
                .config
                .backend
                .light_path
        );
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = &errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")[0];
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("t.toml:3"), "{e}");
        assert!(e.reason.contains("lisen"), "{e}");
    }

    #[test]
    fn download_gather_is_at_most_a_mebibyte() {
        let e = &errors("[backend]\nkind = \"embedded\"\ndownload_gather = \"2MiB\"\n")[0];
        assert_eq!(e.field, "backend.download_gather", "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let ok = parse(
            "[backend]\nkind = \"embedded\"\ndownload_gather = 0\n",
            None,
        )
        .unwrap();
        assert_eq!(ok.config.backend.download_gather, units::Size(0));
    }

    #[test]
    fn bad_unit_names_the_field() {
        let e = &errors("[backend]\nkind = \"embedded\"\npart_size = \"8 parsecs\"\n")[0];
        assert_eq!(e.field, "backend.part_size", "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn server_deadlines_and_threads_are_checked() {
        let base = "[backend]\nkind = \"embedded\"\n[server]\n";
        for (extra, field) in [
            ("worker_threads = 0\n", "server.worker_threads"),
            ("worker_threads = 5000\n", "server.worker_threads"),
            ("keep_alive_timeout = \"0s\"\n", "server.keep_alive_timeout"),
        ] {
            let e = &errors(&format!("{base}{extra}"))[0];
            assert_eq!(e.field, field, "{e}");
        }
        let loaded = parse(&format!("{base}worker_threads = 1\n"), None).unwrap();
        assert_eq!(loaded.config.server.worker_threads, Some(1));
        assert_eq!(
            loaded.config.server.keep_alive_timeout,
            units::Span::secs(75)
        );
    }

    #[test]
    fn validation_error_is_located() {
        let text = "[backend]\nkind = \"embedded\"\n\n[[principals]]\nname = \"a\"\napi_keys = []\n\n[[principals]]\nname = \"b\"\nprefix = \"/abs/\"\n";
        let errs = errors(text);
        let e = errs
            .iter()
            .find(|e| e.field == "principals[1].prefix")
            .unwrap();
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn redis_is_checked_at_load() {
        let base = "[backend]\nkind = \"embedded\"\n";
        let fields = |extra: &str| -> Vec<String> {
            errors(&format!("{base}{extra}"))
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        };
        let f = fields("[redis]\nurl_env = \"PORTCULLIS_SURELY_UNSET_VARIABLE\"\n");
        assert!(
            f.iter()
                .any(|e| e.contains("redis.url_env: $PORTCULLIS_SURELY_UNSET_VARIABLE is not set")),
            "{f:?}"
        );
        // PATH is set, and not a URL; its value is not repeated.
        let f = fields("[redis]\nurl_env = \"PATH\"\ntimeout = \"0s\"\non_error = \"deny\"\n");
        assert!(
            f.iter()
                .any(|e| e.contains("redis.url_env: $PATH is not a redis://")),
            "{f:?}"
        );
        assert!(f.iter().any(|e| e.contains("redis.timeout")), "{f:?}");
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(
            path.is_empty() || !f.iter().any(|e| e.contains(&path)),
            "{f:?}"
        );
        let f = fields("[redis]\nurl_env = \"PATH\"\non_error = \"maybe\"\n");
        assert!(f.iter().any(|e| e.contains("redis.on_error")), "{f:?}");
        let f =
            fields("[[principals]]\nname = \"q\"\nallow = [\"get\"]\nmax_bytes_per_day = \"0B\"\n");
        assert!(
            f.iter()
                .any(|e| e.contains("principals[0].max_bytes_per_day")),
            "{f:?}"
        );
    }

    #[test]
    fn addresses_networks_patterns_and_key_hashes_are_parsed_where_they_are_read() {
        let base = "[backend]\nkind = \"embedded\"\n";
        for (extra, field, line) in [
            ("[server]\nlisten = \"localhost\"\n", "server.listen", 4),
            ("[admin]\nlisten = \"9090\"\n", "admin.listen", 4),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"ten\"]\n",
                "server.trusted_proxies[1]",
                4,
            ),
            (
                "[limits]\ncontent_types = [\"image\"]\n",
                "limits.content_types[0]",
                4,
            ),
            (
                "[[principals]]\nname = \"a\"\napi_keys = [\"sha256:12\"]\n",
                "principals[0].api_keys[0]",
                5,
            ),
        ] {
            let e = &errors(&format!("{base}{extra}"))[0];
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.line, Some(line), "{e}");
        }
        let c = parse(
            &format!("{base}[server]\ntrusted_proxies = [\"192.0.2.7\", \"10.0.0.0/8\"]\n"),
            None,
        )
        .unwrap()
        .config;
        assert_eq!(c.server.trusted_proxies[0].0.to_string(), "192.0.2.7/32");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = &errors("[server\nlisten = 1\n")[0];
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn cors_and_links_without_public_url_are_warned_about() {
        let text =
            "[backend]\nkind = \"embedded\"\n[cors]\nallowed_origins = [\"http://localhost:*\"]\n";
        let mut config = parse(text, None).unwrap().config;
        config.links = Some(LinksConfig {
            secrets_env: Vec::new(),
            default_ttl: units::Span::secs(60),
            max_ttl: units::Span::secs(600),
            secrets: vec!["a-test-secret-of-at-least-32-bytes!".into()],
        });
        let warned = |c: &Config| {
            validate::validate(c)
                .unwrap()
                .iter()
                .any(|w| w.field == "server.public_url" && w.message.contains("relative"))
        };
        assert!(warned(&config));
        config.server.public_url = Some("https://files.example.com".into());
        assert!(!warned(&config));
    }
}
