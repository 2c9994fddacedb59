//! Loading: the defaults, then `config.toml`, then the `CHATGATE_*`
//! variables, each overriding the one before, then the secrets from the
//! environment or `.env`, then validation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

use super::env::EnvLayer;
use super::sources::{describe, read_dotenv};
use super::{Config, ConfigError, Secret, Secrets, Warning};

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
        // The keys `[upstreams]` name may come from `.env` too.
        let key_vars: Vec<&str> = config
            .upstreams
            .values()
            .map(|u| u.api_key_env.as_str())
            .filter(|v| !v.is_empty())
            .collect();
        let (dotenv, dotenv_warning) = read_dotenv(sources.dotenv.as_deref(), &key_vars)?;
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
            upstream_keys: BTreeMap::new(),
        };
        // Every variable `[upstreams]` names must be set; an error names
        // the variable, never a value.
        for (name, u) in &config.upstreams {
            if u.api_key_env.is_empty() {
                continue;
            }
            match secret(&u.api_key_env) {
                Some(key) => {
                    config.secrets.upstream_keys.insert(name.clone(), key);
                }
                None => {
                    return Err(ConfigError::InvalidAt {
                        key: format!("upstreams.{name}.api_key_env"),
                        expected: format!(
                            "the variable {} to be set (environment or .env): it holds the key",
                            u.api_key_env
                        ),
                    })
                }
            }
        }
        config.validate()?;
        Ok(Loaded { config, warnings })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Sources in a fresh directory: `toml` as `config.toml` (if any),
    /// `env` as the environment, with an `OPENAI_API_KEY` unless `env`
    /// sets one, and `.env` in that directory. Keep the directory alive
    /// while loading.
    pub(in crate::config) fn sources(
        toml: Option<&str>,
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Sources) {
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
    fn explicit_missing_file_is_an_error() {
        let (_d, mut s) = sources(None, &[]);
        s.explicit = true;
        assert!(matches!(
            Config::load(&s),
            Err(ConfigError::Unreadable { .. })
        ));
    }
}
