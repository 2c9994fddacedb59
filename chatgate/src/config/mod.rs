//! Configuration: `config.toml`, overridden by `CHATGATE_*` environment
//! variables (`__` between levels), secrets from the environment or `.env`.
//!
//! Parsed once into typed sections (`deny_unknown_fields`, one `Default`
//! each, self-validating types), then checked for what types cannot say.
//! Every failure names the key and what was expected; `main` exits 2.
//! What is ignored rather than refused (foreign `CHATGATE_*` variables,
//! other variables in `.env`) comes back as [`Warning`]s for the caller to
//! report once its logger exists.
//!
//! Files: `env` (the typed `CHATGATE_*` layer), `sources` (`.env`, error
//! messages), `human` (durations, floats and URLs as people write them).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[session]`
    pub session: SessionConfig,
    /// `[rate_limit]`
    pub rate_limit: RateLimitConfig,
    /// `[openai]`
    pub openai: OpenAiSection,
    /// `[log]`
    pub log: LogConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// Secrets: never read from the file, never serialized or logged.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// `[server]`: the listener and its bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: NonZeroUsize,
    /// Largest `/v1` request body accepted (413 beyond): room for images
    /// sent as data URLs.
    pub max_v1_body_bytes: NonZeroUsize,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(with = "human::duration")]
    pub shutdown_grace: Duration,
    /// Origins allowed by CORS (`"*"` for any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// Most connections served at once; further clients wait in the backlog.
    pub max_connections: NonZeroUsize,
    /// How long a client may take to send a request's headers.
    #[serde(with = "human::duration")]
    pub header_timeout: Duration,
    /// A request body must arrive whole within this, or 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A response write that makes no progress for this long (the client
    /// stopped reading) closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDRs).
    pub trusted_proxies: Vec<String>,
    /// Whether `GET /` serves the chat playground (off: 404).
    pub playground: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "0.0.0.0:8000".parse().expect("valid default address"),
            max_body_bytes: NonZeroUsize::new(65_536).expect("nonzero"),
            max_v1_body_bytes: NonZeroUsize::new(16 << 20).expect("nonzero"),
            shutdown_grace: Duration::from_secs(10),
            cors_origins: vec!["*".to_owned()],
            max_connections: NonZeroUsize::new(10_000).expect("nonzero"),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            playground: true,
        }
    }
}

/// Which storage backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A SQLite file at `storage.path`.
    Sqlite,
    /// Process memory; nothing survives a restart.
    Memory,
    /// A PostgreSQL server at `storage.url`, which several gateways may
    /// share.
    Postgres,
}

/// Where the rate limiters keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// Process memory (governor): exact for one gateway.
    Memory,
    /// A Redis server at `rate_limit.url`: exact across every gateway
    /// sharing it.
    Redis,
}

/// What to do with a message when the rate limiter's Redis is out of
/// reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Refuse it (503).
    Deny,
    /// Let it through unchecked.
    Allow,
}

/// `[storage]`. `Debug` shows `url` through [`redact_url`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"sqlite"`, `"memory"` or `"postgres"`.
    pub backend: Backend,
    /// The SQLite file.
    pub path: PathBuf,
    /// The PostgreSQL server (`postgres://user:password@host:port/db`).
    pub url: String,
    /// The PostgreSQL schema for chatgate's tables (made if missing);
    /// empty: the server's default (`public`).
    pub schema: String,
    /// Connections to PostgreSQL this gateway may open.
    pub pool_size: NonZeroU32,
    /// Longest a PostgreSQL statement may run; also how long a request
    /// waits for a connection or for the server to answer a connect.
    #[serde(with = "human::duration")]
    pub statement_timeout: Duration,
    /// fsync every commit (`synchronous = FULL`): acknowledged turns also
    /// survive power loss, at the cost of a disk flush per commit. Off, they
    /// survive the process being killed (`kill -9`).
    pub full_sync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Sqlite,
            path: PathBuf::from("chatgate.db"),
            url: String::new(),
            schema: String::new(),
            pool_size: NonZeroU32::new(16).expect("nonzero"),
            statement_timeout: Duration::from_secs(5),
            full_sync: false,
        }
    }
}

/// `[session]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Idle time after which a session expires.
    #[serde(with = "human::duration")]
    pub idle_timeout: Duration,
    /// How long an idle session's data is kept.
    #[serde(with = "human::duration")]
    pub retention: Duration,
    /// How often the retention sweep runs.
    #[serde(with = "human::duration")]
    pub sweep_interval: Duration,
    /// Sessions kept in memory for fast turns (0 turns the cache off).
    pub hot_sessions: usize,
    /// About how much memory the hot-session cache may hold, in bytes.
    pub hot_cache_bytes: usize,
    /// Whether `initialize_session` (and stateless `/v1` requests) may
    /// bring their own system prompt.
    pub client_system_prompt: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            retention: Duration::from_secs(183 * 24 * 3600),
            sweep_interval: Duration::from_secs(3600),
            hot_sessions: 10_000,
            hot_cache_bytes: 32 << 20,
            client_system_prompt: true,
        }
    }
}

/// `[rate_limit]`. `Debug` shows `url` through [`redact_url`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `"memory"` or `"redis"`.
    pub backend: LimiterBackend,
    /// The Redis server (`redis://host:port/db`), for the `redis` backend.
    pub url: String,
    /// With Redis out of reach: `"deny"` (refuse messages) or `"allow"`.
    pub on_unavailable: OnUnavailable,
    /// How long a check may wait on Redis before it counts as out of reach.
    #[serde(with = "human::duration")]
    pub timeout: Duration,
    /// Prepended to every Redis key, so deployments can share a Redis.
    pub key_prefix: String,
    /// Messages per minute per session (burst of the same size).
    pub messages_per_minute: NonZeroU32,
    /// Messages per minute per principal, across its sessions (with
    /// `auth.mode` other than `none`).
    pub principal_messages_per_minute: NonZeroU32,
    /// Sessions created per hour per principal, or per client address for
    /// anonymous callers.
    pub sessions_per_hour: NonZeroU32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: LimiterBackend::Memory,
            url: String::new(),
            on_unavailable: OnUnavailable::Deny,
            timeout: Duration::from_millis(500),
            key_prefix: "chatgate:".into(),
            messages_per_minute: NonZeroU32::new(5).expect("nonzero"),
            principal_messages_per_minute: NonZeroU32::new(60).expect("nonzero"),
            sessions_per_hour: NonZeroU32::new(60).expect("nonzero"),
        }
    }
}

/// `[openai]`. `Debug` shows `base_url` through [`redact_url`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSection {
    /// Any OpenAI-compatible base URL.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Total deadline per turn's upstream call, retries included; for a
    /// stream, the deadline for its first byte.
    #[serde(with = "human::duration")]
    pub timeout: Duration,
    /// For a stream, the longest gap between two upstream chunks.
    #[serde(with = "human::duration")]
    pub stream_idle_timeout: Duration,
    /// The models clients may name on `/v1`; empty means `[model]`.
    pub models: Vec<String>,
    /// The most tokens any reply may have (0: no cap of ours).
    pub max_tokens: u32,
    /// `/v1` request fields removed before the request goes upstream
    /// (for an upstream that refuses a field clients send).
    pub drop_params: Vec<String>,
    /// `/v1` request fields refused (400 naming the field).
    pub deny_params: Vec<String>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Sampling temperature, 0 to 2.
    #[serde(serialize_with = "human::shortest_f32")]
    pub temperature: f32,
    /// Default system prompt; empty for none.
    pub system_prompt: String,
    /// Token budget for prompt + history + message.
    pub context_tokens: NonZeroUsize,
}

impl OpenAiSection {
    /// The models clients may name: `models`, or `[model]` when it is empty.
    pub fn allowed_models(&self) -> Vec<String> {
        if self.models.is_empty() {
            vec![self.model.clone()]
        } else {
            self.models.clone()
        }
    }
}

impl fmt::Debug for OpenAiSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSection")
            .field("base_url", &redact_url(&self.base_url))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("models", &self.models)
            .field("max_tokens", &self.max_tokens)
            .field("drop_params", &self.drop_params)
            .field("deny_params", &self.deny_params)
            .field("max_retries", &self.max_retries)
            .field("temperature", &self.temperature)
            .field("system_prompt", &self.system_prompt)
            .field("context_tokens", &self.context_tokens)
            .finish()
    }
}

impl Default for OpenAiSection {
    fn default() -> Self {
        OpenAiSection {
            base_url: chatcore::OPENAI_BASE_URL.to_owned(),
            model: "gpt-3.5-turbo".to_owned(),
            timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            models: Vec::new(),
            max_tokens: 0,
            drop_params: Vec::new(),
            deny_params: Vec::new(),
            max_retries: 2,
            temperature: 0.7,
            system_prompt: String::new(),
            context_tokens: NonZeroUsize::new(3000).expect("nonzero"),
        }
    }
}

/// A secret string: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; use only where it is sent, never where it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `OPENAI_API_KEY` and `SECRET_KEY`.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Sent upstream as `Authorization: Bearer`.
    pub openai_api_key: Option<Secret>,
    /// Signs client credentials once access control exists.
    pub secret_key: Option<Secret>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist or cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key has a bad value or is unknown (figment's message names it).
    #[error("{0}")]
    Parse(String),
    /// A `CHATGATE_*` variable under a known section names no key, or its
    /// value is not of its key's type.
    #[error("{message} (environment variable {var})")]
    Env {
        /// The variable, e.g. `CHATGATE_SERVER__MAX_BODY_BYTES`.
        var: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The `.env` file cannot be read or parsed. The reason gives a line
    /// number, never the line: it may hold a secret.
    #[error("cannot read {path}: {reason}")]
    Dotenv {
        /// The file.
        path: PathBuf,
        /// Why, e.g. `line 3: expected NAME=value`.
        reason: String,
    },
    /// A value that parsed but makes no sense.
    #[error("invalid value for `{key}`: {expected}")]
    Invalid {
        /// The key path, e.g. `openai.temperature`.
        key: &'static str,
        /// What was expected.
        expected: String,
    },
}

/// Something in the sources that was ignored rather than refused: the
/// operator should hear of it, but it must not stop the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// `CHATGATE_*` variables whose first segment is not a config section,
    /// such as the `CHATGATE_PORT=tcp://…` Kubernetes sets for a Service
    /// named chatgate.
    IgnoredEnv {
        /// The variables, sorted.
        vars: Vec<String>,
        /// The sections there are.
        sections: Vec<String>,
    },
    /// Variables in `.env` other than the secrets read from it.
    IgnoredDotenv {
        /// The `.env` file.
        file: PathBuf,
        /// The variables (names only), in file order.
        vars: Vec<String>,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::IgnoredEnv { vars, sections } => write!(
                f,
                "ignored environment variables {}: not a config section after CHATGATE_ \
                 (the sections are {})",
                vars.join(", "),
                sections.join(", ")
            ),
            Warning::IgnoredDotenv { file, vars } => write!(
                f,
                "ignored variables in {}: {} (only OPENAI_API_KEY and SECRET_KEY are read from it)",
                file.display(),
                vars.join(", ")
            ),
        }
    }
}

/// A loaded configuration and what was ignored on the way, for the caller
/// to report once it can (the logger is built from the configuration).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// What was ignored.
    pub warnings: Vec<Warning>,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The TOML file.
    pub file: PathBuf,
    /// Whether the file was named explicitly (then it must exist).
    pub explicit: bool,
    /// Environment variables (normally `std::env::vars()`).
    pub env: HashMap<String, String>,
    /// The `.env` file to read secrets from, if it exists.
    pub dotenv: Option<PathBuf>,
}

impl Sources {
    /// The process environment, `./.env`, and `file`.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Sources {
            explicit: file.is_some(),
            file: file.unwrap_or_else(|| PathBuf::from("config.toml")),
            env: std::env::vars().collect(),
            dotenv: Some(PathBuf::from(".env")),
        }
    }
}

mod auth;
mod env;
mod human;
mod log;
mod sources;

pub use self::log::{ByteSize, Level, LogConfig, StderrLevel};
pub use auth::{AuthConfig, AuthMode, TrustedProxies};
pub use human::redact_url;

use env::EnvLayer;
use sources::{describe, read_dotenv};

impl Config {
    /// Loads, merges and validates the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if sources.file.exists() {
            figment = figment.merge(Toml::file_exact(&sources.file));
        } else if sources.explicit {
            return Err(ConfigError::Unreadable {
                path: sources.file.clone(),
                reason: "no such file".into(),
            });
        }
        let env = EnvLayer::read(&sources.env)?;
        let mut warnings: Vec<Warning> = env.warning.iter().cloned().collect();
        let env_vars = env.vars.clone();
        let mut config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e, &env_vars)))?;
        let (dotenv, dotenv_warning) = read_dotenv(sources.dotenv.as_deref())?;
        warnings.extend(dotenv_warning);
        let secret = |name: &str| {
            sources
                .env
                .get(name)
                .or_else(|| dotenv.get(name))
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.clone()))
        };
        config.secrets = Secrets {
            openai_api_key: secret("OPENAI_API_KEY"),
            secret_key: secret("SECRET_KEY"),
        };
        config.validate()?;
        Ok(Loaded { config, warnings })
    }

    /// The configuration as TOML, as `check-config` prints it: durations
    /// and numbers as a person writes them, credentials in `base_url`
    /// hidden, and the secrets only as `(set)` or `(not set)`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.openai.base_url = redact_url(&self.openai.base_url);
        shown.storage.url = redact_url(&self.storage.url);
        shown.rate_limit.url = redact_url(&self.rate_limit.url);
        let mut out =
            toml::to_string_pretty(&shown).expect("the config serializes to TOML (plain tables)");
        let set = |s: &Option<Secret>| if s.is_some() { "(set)" } else { "(not set)" };
        out.push_str(&format!(
            "\n# OPENAI_API_KEY: {}\n# SECRET_KEY: {}\n",
            set(&self.secrets.openai_api_key),
            set(&self.secrets.secret_key)
        ));
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let o = &self.openai;
        let base = o.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "openai.base_url",
                expected: format!(
                    "an http:// or https:// URL, got {:?}",
                    redact_url(&o.base_url)
                ),
            });
        }
        match base.parse::<hyper::Uri>() {
            Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "openai.base_url",
                    expected: format!(
                        "a URL with a host, such as http://127.0.0.1:8080/v1, got {:?}",
                        redact_url(&o.base_url)
                    ),
                })
            }
        }
        if base == chatcore::OPENAI_BASE_URL && self.secrets.openai_api_key.is_none() {
            return Err(ConfigError::Invalid {
                key: "openai.base_url",
                expected:
                    "OPENAI_API_KEY must be set (environment or .env) to use api.openai.com; \
                           set it, or point openai.base_url at another OpenAI-compatible server"
                        .into(),
            });
        }
        if !(0.0..=2.0).contains(&o.temperature) {
            return Err(ConfigError::Invalid {
                key: "openai.temperature",
                expected: format!("a number from 0 to 2, got {}", o.temperature),
            });
        }
        if o.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "openai.timeout",
                expected: "a positive duration such as \"60s\"".into(),
            });
        }
        if o.model.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "openai.model",
                expected: "a model name".into(),
            });
        }
        if o.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "openai.models",
                expected: "a list of model names, none empty".into(),
            });
        }
        for (key, params) in [
            ("openai.drop_params", &o.drop_params),
            ("openai.deny_params", &o.deny_params),
        ] {
            // The gateway's own members cannot be dropped or refused.
            if let Some(p) = params
                .iter()
                .find(|p| p.trim().is_empty() || ["model", "messages"].contains(&p.as_str()))
            {
                return Err(ConfigError::Invalid {
                    key,
                    expected: format!(
                        "a list of request field names other than model and messages, got {p:?}"
                    ),
                });
            }
        }
        let s = &self.session;
        // A century bounds every duration: larger ones overflow time
        // arithmetic and mean nothing operationally.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        for (key, d) in [
            ("session.idle_timeout", s.idle_timeout),
            ("session.retention", s.retention),
            ("session.sweep_interval", s.sweep_interval),
            ("server.header_timeout", self.server.header_timeout),
            ("server.body_timeout", self.server.body_timeout),
            ("server.write_timeout", self.server.write_timeout),
            ("server.shutdown_grace", self.server.shutdown_grace),
            ("openai.timeout", o.timeout),
            ("openai.stream_idle_timeout", o.stream_idle_timeout),
        ] {
            if d.is_zero() && key != "server.shutdown_grace" {
                return Err(ConfigError::Invalid {
                    key,
                    expected: "a positive duration such as \"30m\"".into(),
                });
            }
            if d > CENTURY {
                return Err(ConfigError::Invalid {
                    key,
                    expected: "a duration of at most 100 years".into(),
                });
            }
        }
        if s.retention < s.idle_timeout {
            return Err(ConfigError::Invalid {
                key: "session.retention",
                expected: format!(
                    "at least session.idle_timeout ({}): a session must not be purged while it is still active",
                    human::duration::format(s.idle_timeout)
                ),
            });
        }
        if self.storage.backend == Backend::Sqlite && self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.path",
                expected: "a file path for the SQLite database".into(),
            });
        }
        // The URLs are not echoed: one may hold a password in a form the
        // redaction does not know.
        let st = &self.storage;
        if st.backend == Backend::Postgres
            && (!(st.url.starts_with("postgres://") || st.url.starts_with("postgresql://"))
                || chatcore::PostgresOptions::check_url(&st.url).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "storage.url",
                expected: "a postgres://user:password@host:port/database URL, with storage.backend = \"postgres\"".into(),
            });
        }
        if !st.schema.is_empty() && !chatcore::PostgresOptions::is_schema_name(&st.schema) {
            return Err(ConfigError::Invalid {
                key: "storage.schema",
                expected: "a lower-case identifier (a-z, 0-9, _; not starting with a digit; at most 63 bytes)".into(),
            });
        }
        if st.statement_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "storage.statement_timeout",
                expected: "a positive duration such as \"5s\"".into(),
            });
        }
        let rl = &self.rate_limit;
        if rl.backend == LimiterBackend::Redis
            && (!(rl.url.starts_with("redis://") || rl.url.starts_with("rediss://"))
                || chatcore::RedisLimiter::check_url(&rl.url).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "rate_limit.url",
                expected: "a redis://host:port/db URL, with rate_limit.backend = \"redis\"".into(),
            });
        }
        if rl.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "rate_limit.timeout",
                expected: "a positive duration such as \"500ms\"".into(),
            });
        }
        if let Err(bad) = TrustedProxies::parse(&self.server.trusted_proxies) {
            return Err(ConfigError::Invalid {
                key: "server.trusted_proxies",
                expected: format!("IP addresses or CIDR networks, got {bad:?}"),
            });
        }
        if self.auth.mode != AuthMode::None {
            let long_enough = self
                .secrets
                .secret_key
                .as_ref()
                .is_some_and(|k| k.expose().len() >= 32);
            if !long_enough {
                return Err(ConfigError::Invalid {
                    key: "auth.mode",
                    expected:
                        "SECRET_KEY (environment or .env) of at least 32 bytes: it signs and \
                               verifies session tokens and JWTs"
                            .into(),
                });
            }
        }
        self.log.validate()
    }
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("full_sync", &self.full_sync)
            .finish()
    }
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("backend", &self.backend)
            .field("url", &redact_url(&self.url))
            .field("on_unavailable", &self.on_unavailable)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("messages_per_minute", &self.messages_per_minute)
            .field(
                "principal_messages_per_minute",
                &self.principal_messages_per_minute,
            )
            .field("sessions_per_hour", &self.sessions_per_hour)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(toml: Option<&str>, env: &[(&str, &str)]) -> (tempfile::TempDir, Sources) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        if let Some(t) = toml {
            std::fs::write(&file, t).unwrap();
        }
        let mut map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("OPENAI_API_KEY".into())
            .or_insert_with(|| "sk-test".into());
        let s = Sources {
            file,
            explicit: false,
            env: map,
            dotenv: Some(dir.path().join(".env")),
        };
        (dir, s)
    }

    #[test]
    fn defaults_match_the_spec() {
        let (_d, s) = sources(None, &[]);
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:8000");
        assert_eq!(c.server.max_body_bytes.get(), 65_536);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.session.retention, Duration::from_secs(183 * 86_400));
        assert_eq!(c.rate_limit.messages_per_minute.get(), 5);
        assert_eq!(c.openai.model, "gpt-3.5-turbo");
        assert_eq!(c.openai.context_tokens.get(), 3000);
        assert_eq!(c.log.file, PathBuf::from("app.log"));
        assert!(c.log.content && c.log.sql);
        assert_eq!(c.log.stderr, StderrLevel::Warning);
        assert_eq!(c.log.max_content_bytes.get(), 2048);
        assert_eq!(c.log.max_size, ByteSize(50 * 1024 * 1024));
        assert_eq!(c.log.keep, 5);
    }

    #[test]
    fn env_overrides_file() {
        let (_d, s) = sources(
            Some("[server]\nbind = \"127.0.0.1:7000\"\n[rate_limit]\nmessages_per_minute = 9\n"),
            &[
                ("CHATGATE_SERVER__BIND", "127.0.0.1:9000"),
                ("CHATGATE_SESSION__IDLE_TIMEOUT", "5m"),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:9000");
        let (_d2, s2) = sources(
            None,
            &[("CHATGATE_SERVER__CORS_ORIGINS", r#"["https://a.example"]"#)],
        );
        let c2 = Config::load(&s2).unwrap().config;
        assert_eq!(c2.server.cors_origins, ["https://a.example"]);
        assert_eq!(c.rate_limit.messages_per_minute.get(), 9);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let (_d, s) = sources(Some("[server]\nbnd = \"x\"\n"), &[]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("bnd"), "{e}");
        let (_d, s) = sources(Some("[rate_limit]\nmessages_per_minute = 0\n"), &[]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("rate_limit.messages_per_minute"), "{e}");
        let (_d, s) = sources(None, &[("CHATGATE_SESSION__IDLE_TIMEOUT", "soon")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("session.idle_timeout"), "{e}");
        let (_d, s) = sources(None, &[("CHATGATE_OPENAI__BASE_URL", "http://")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("openai.base_url"), "{e}");
        let (_d, s) = sources(None, &[("CHATGATE_SESSION__IDLE_TIMEOUT", "300000y")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("session.idle_timeout"), "{e}");
        let (_d, s) = sources(None, &[("CHATGATE_SESSION__RETENTION", "1m")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("session.retention"), "{e}");
        let (_d, s) = sources(Some("[openai]\ntemperature = 3.5\n"), &[]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("openai.temperature"), "{e}");
    }

    #[test]
    fn log_keys_read_from_env_and_name_themselves_when_bad() {
        let (_d, s) = sources(
            None,
            &[
                ("CHATGATE_LOG__STDERR", "false"),
                ("CHATGATE_LOG__MAX_SIZE", "10MB"),
                ("CHATGATE_LOG__KEEP", "2"),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.log.stderr, StderrLevel::Off);
        assert_eq!(c.log.max_size, ByteSize(10_000_000));
        assert_eq!(c.log.keep, 2);
        for (key, value, named) in [
            ("CHATGATE_LOG__STDERR", "loud", "log.stderr"),
            ("CHATGATE_LOG__MAX_SIZE", "lots", "log.max_size"),
            ("CHATGATE_LOG__MAX_SIZE", "1KiB", "log.max_size"),
            (
                "CHATGATE_LOG__MAX_CONTENT_BYTES",
                "0",
                "log.max_content_bytes",
            ),
            ("CHATGATE_LOG__KEEP", "-1", "log.keep"),
        ] {
            let (_d, s) = sources(None, &[(key, value)]);
            let e = Config::load(&s).unwrap_err().to_string();
            assert!(e.contains(named), "{key}={value}: {e}");
        }
    }

    #[test]
    fn default_base_url_needs_a_key_from_env_or_dotenv() {
        let (d, mut s) = sources(None, &[]);
        s.env.remove("OPENAI_API_KEY");
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("OPENAI_API_KEY"), "{e}");
        std::fs::write(
            d.path().join(".env"),
            "OPENAI_API_KEY=sk-from-dotenv\nSECRET_KEY=s3\n",
        )
        .unwrap();
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.secrets.openai_api_key.unwrap().expose(), "sk-from-dotenv");
        assert!(!format!("{:?}", c.secrets.secret_key).contains("s3"));
        // Another base URL runs without a key.
        std::fs::remove_file(d.path().join(".env")).unwrap();
        s.env.insert(
            "CHATGATE_OPENAI__BASE_URL".into(),
            "http://127.0.0.1:1/v1".into(),
        );
        assert!(Config::load(&s).is_ok());
    }

    #[test]
    fn ignored_sources_come_back_as_warnings() {
        let (d, s) = sources(None, &[("CHATGATE_PORT", "tcp://10.0.0.1:8000")]);
        std::fs::write(d.path().join(".env"), "OPENAI_API_KEY=sk-1\nDEBUG=1\n").unwrap();
        let loaded = Config::load(&s).unwrap();
        let shown: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].contains("CHATGATE_PORT"), "{shown:?}");
        assert!(shown[1].contains("DEBUG"), "{shown:?}");
        let (_d, s) = sources(None, &[]);
        assert!(Config::load(&s).unwrap().warnings.is_empty());
    }

    #[test]
    fn storage_and_redis_passwords_are_shown_nowhere() {
        let pg = "postgres://chat:pg-s3cret@db:5432/chat";
        let redis = "redis://:redis-s3cret@cache:6379/0";
        let (_d, s) = sources(
            None,
            &[
                ("CHATGATE_STORAGE__BACKEND", "postgres"),
                ("CHATGATE_STORAGE__URL", pg),
                ("CHATGATE_RATE_LIMIT__BACKEND", "redis"),
                ("CHATGATE_RATE_LIMIT__URL", redis),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        assert_eq!(
            (c.storage.url.as_str(), c.rate_limit.url.as_str()),
            (pg, redis)
        );
        for shown in [c.to_toml(), format!("{c:?}")] {
            assert!(shown.contains("postgres://***@db:5432/chat"), "{shown}");
            assert!(shown.contains("redis://***@cache:6379/0"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        // A refused URL is not repeated in the error either.
        let (_d, s) = sources(
            None,
            &[
                ("CHATGATE_STORAGE__BACKEND", "postgres"),
                ("CHATGATE_STORAGE__URL", "host=db password=pg-s3cret"),
            ],
        );
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("storage.url") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn base_url_credentials_are_shown_nowhere() {
        let url = "http://bob:hunter2@127.0.0.1:9/v1?api-key=k3y";
        let (_d, s) = sources(None, &[("CHATGATE_OPENAI__BASE_URL", url)]);
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.openai.base_url, url, "the real URL is still used");
        for shown in [c.to_toml(), format!("{c:?}")] {
            assert!(
                shown.contains("http://***@127.0.0.1:9/v1?api-key=***"),
                "{shown}"
            );
            assert!(
                !shown.contains("hunter2") && !shown.contains("k3y"),
                "{shown}"
            );
        }
    }

    #[test]
    fn to_toml_writes_values_as_a_person_would_and_reads_back() {
        let (d, s) = sources(None, &[]);
        let c = Config::load(&s).unwrap().config;
        let text = c.to_toml();
        for line in [
            "retention = \"183d\"",
            "idle_timeout = \"30m\"",
            "temperature = 0.7\n",
            "# OPENAI_API_KEY: (set)",
            "# SECRET_KEY: (not set)",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        std::fs::write(d.path().join("config.toml"), &text).unwrap();
        let again = Config::load(&s).unwrap().config;
        assert_eq!(again.to_toml(), text);
        assert_eq!(again.openai.temperature, 0.7);
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let (_d, mut s) = sources(None, &[]);
        s.explicit = true;
        assert!(matches!(
            Config::load(&s),
            Err(ConfigError::Unreadable { .. })
        ));
    }
}
