//! What loading can end in besides a configuration: [`ConfigError`], which
//! refuses it, and [`Warning`], for what was ignored instead.

use std::fmt;
use std::path::PathBuf;

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
    /// As [`ConfigError::Invalid`], under a key a table names
    /// (`upstreams.local.base_url`).
    #[error("invalid value for `{key}`: {expected}")]
    InvalidAt {
        /// The key path.
        key: String,
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
