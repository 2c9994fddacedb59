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
//! Files: one per section (`server`, `storage`, `session`, `rate_limit`,
//! `openai`, `log`, `auth`, `secrets`), each with its types, defaults and
//! checks; `load` (the order sources are read in), `error` (what loading
//! can end in), `env` (the typed `CHATGATE_*` layer), `sources` (`.env`,
//! error messages), `human` (durations, floats and URLs as people write
//! them). This file holds what spans sections: [`Config`], the order of
//! its checks, and the bounds every duration shares.

use std::time::Duration;

use serde::{Deserialize, Serialize};

mod auth;
mod env;
mod error;
mod human;
mod load;
mod log;
mod openai;
mod rate_limit;
mod routing;
mod secrets;
mod server;
mod session;
mod sources;
mod storage;

pub use self::log::{ByteSize, Level, LogConfig, StderrLevel};
pub use auth::{client_key, AuthConfig, AuthMode, TrustedProxies};
pub use error::{ConfigError, Warning};
pub use human::redact_url;
pub use load::{Loaded, Sources};
pub use openai::OpenAiSection;
pub use rate_limit::{LimiterBackend, OnUnavailable, RateLimitConfig};
pub use routing::{
    ModelSection, RoutingConfig, TargetSection, UpstreamAuth, UpstreamSection, IMPLICIT_UPSTREAM,
};
pub use secrets::{Secret, Secrets};
pub use server::ServerConfig;
pub use session::SessionConfig;
pub use storage::{Backend, StorageConfig};

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
    /// `[upstreams.NAME]`: empty, `[openai]` is the one upstream.
    pub upstreams: std::collections::BTreeMap<String, UpstreamSection>,
    /// `[models."NAME"]`: empty, `openai.model` (and `openai.models`) are
    /// the names clients use, each sent as it is.
    pub models: std::collections::BTreeMap<String, ModelSection>,
    /// `[routing]`
    pub routing: RoutingConfig,
    /// Secrets: never read from the file, never serialized or logged.
    #[serde(skip)]
    pub secrets: Secrets,
}

impl Config {
    /// The configuration as TOML, as `check-config` prints it: durations
    /// and numbers as a person writes them, credentials in `base_url`
    /// hidden, and the secrets only as `(set)` or `(not set)`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.openai.base_url = redact_url(&self.openai.base_url);
        shown.storage.url = redact_url(&self.storage.url);
        shown.rate_limit.url = redact_url(&self.rate_limit.url);
        for u in shown.upstreams.values_mut() {
            u.base_url = redact_url(&u.base_url);
            // Extra headers often carry a credential: shown by name only.
            for value in u.headers.values_mut() {
                *value = "(set)".to_owned();
            }
        }
        let mut out =
            toml::to_string_pretty(&shown).expect("the config serializes to TOML (plain tables)");
        let set = |s: &Option<Secret>| if s.is_some() { "(set)" } else { "(not set)" };
        out.push_str(&format!(
            "\n# OPENAI_API_KEY: {}\n# SECRET_KEY: {}\n",
            set(&self.secrets.openai_api_key),
            set(&self.secrets.secret_key)
        ));
        for (name, u) in &self.upstreams {
            if !u.api_key_env.is_empty() {
                out.push_str(&format!(
                    "# {} (upstreams.{name}): {}\n",
                    u.api_key_env,
                    if self.secrets.upstream_keys.contains_key(name) {
                        "(set)"
                    } else {
                        "(not set)"
                    }
                ));
            }
        }
        out.push_str(&self.routing_table());
        out
    }

    /// What the types cannot say, section by section.
    ///
    /// Only the first mistake found is reported, so this order decides
    /// which one an operator sees when there are several. Every duration
    /// is bounded before any check compares two of them, so a comparison
    /// never reports on a value that is wrong by itself.
    fn validate(&self) -> Result<(), ConfigError> {
        self.openai
            .validate(&self.secrets, self.upstreams.is_empty())?;
        let durations = self
            .session
            .durations()
            .into_iter()
            .chain(self.server.durations())
            .chain(self.openai.durations())
            .chain(self.routing.durations());
        for d in durations {
            d.check()?;
        }
        self.session.validate()?;
        self.storage.validate()?;
        self.rate_limit.validate()?;
        self.server.validate()?;
        self.auth.validate(&self.secrets)?;
        self.routing.validate()?;
        self.validate_routing()?;
        self.log.validate()
    }
}

/// A default entry of a table of named entries (`upstreams`, `models`),
/// as TOML, with every key it may hold: what the environment layer types
/// their keys by. `None` for any other section.
fn entry_template(table: &str) -> Option<toml::Table> {
    Some(match table {
        "upstreams" => {
            let mut t = toml::Table::try_from(UpstreamSection::default())
                .expect("an upstream entry serializes to a TOML table");
            // Unset by default, so absent from the serialized entry.
            t.insert("max_retries".into(), toml::Value::Integer(0));
            t
        }
        "models" => toml::Table::try_from(ModelSection::default())
            .expect("a model entry serializes to a TOML table"),
        _ => return None,
    })
}

/// A key holding a duration, for the bounds every duration shares. Each
/// section lists its own, so a new duration key is bounded where it is
/// declared.
struct DurationKey {
    key: &'static str,
    value: Duration,
    /// Whether zero is a meaningful value rather than a mistake.
    zero_allowed: bool,
}

impl DurationKey {
    /// A century bounds every duration: larger ones overflow time
    /// arithmetic and mean nothing operationally.
    const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// A duration that must be more than zero.
    fn positive(key: &'static str, value: Duration) -> Self {
        DurationKey {
            key,
            value,
            zero_allowed: false,
        }
    }

    /// A duration for which zero means something (such as "at once").
    fn zero_allowed(key: &'static str, value: Duration) -> Self {
        DurationKey {
            key,
            value,
            zero_allowed: true,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.value.is_zero() && !self.zero_allowed {
            return Err(ConfigError::Invalid {
                key: self.key,
                expected: "a positive duration such as \"30m\"".into(),
            });
        }
        if self.value > Self::MAX {
            return Err(ConfigError::Invalid {
                key: self.key,
                expected: "a duration of at most 100 years".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::load::tests::sources;
    use super::*;

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
    fn a_duration_out_of_bounds_is_reported_before_a_comparison_with_it() {
        // idle_timeout is past the century bound; retention's own check
        // (at least idle_timeout) would otherwise blame retention.
        let (_d, s) = sources(None, &[("CHATGATE_SESSION__IDLE_TIMEOUT", "40000d")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("session.idle_timeout") && e.contains("100 years"),
            "{e}"
        );
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
}
