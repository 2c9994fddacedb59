//! `[storage]`: where sessions and messages are kept (SQLite, memory or
//! PostgreSQL). `Debug` shows `url` through [`redact_url`].

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, redact_url, ConfigError};

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

/// `[storage]`. `Debug` shows `url` through [`redact_url`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"sqlite"`, `"memory"` or `"postgres"`.
    pub backend: Backend,
    /// The SQLite file.
    pub path: PathBuf,
    /// The PostgreSQL server (`postgres://user:password@host:port/db`),
    /// with `?sslmode=require|verify-ca|verify-full` for TLS.
    pub url: String,
    /// PEM roots that a TLS server's certificate is checked against (a
    /// private CA); empty: the system's roots.
    pub ca_file: String,
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
        let postgres_default = chatcore::PostgresOptions::default();
        StorageConfig {
            backend: Backend::Sqlite,
            path: PathBuf::from("chatgate.db"),
            url: String::new(),
            ca_file: String::new(),
            schema: String::new(),
            // The library's defaults are the gateway's.
            pool_size: u32::try_from(postgres_default.pool_size)
                .ok()
                .and_then(NonZeroU32::new)
                .expect("a small nonzero pool"),
            statement_timeout: postgres_default.statement_timeout,
            full_sync: chatcore::SqliteOptions::default().full_sync,
        }
    }
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("full_sync", &self.full_sync)
            .finish()
    }
}

impl StorageConfig {
    /// What the types cannot say.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == Backend::Sqlite && self.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.path",
                expected: "a file path for the SQLite database".into(),
            });
        }
        // The URL is not echoed: it may hold a password in a form the
        // redaction does not know.
        if self.backend == Backend::Postgres
            && (!(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://"))
                || chatcore::PostgresOptions::check_url(&self.url).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "storage.url",
                expected: "a postgres://user:password@host:port/database URL, with storage.backend = \"postgres\"".into(),
            });
        }
        if !self.ca_file.is_empty() && !self.url.contains("sslmode=") {
            return Err(ConfigError::Invalid {
                key: "storage.ca_file",
                expected: "a CA file only with TLS: sslmode=require, verify-ca or verify-full in storage.url".into(),
            });
        }
        if !self.schema.is_empty() && !chatcore::PostgresOptions::is_schema_name(&self.schema) {
            return Err(ConfigError::Invalid {
                key: "storage.schema",
                expected: "a lower-case identifier (a-z, 0-9, _; not starting with a digit; at most 63 bytes)".into(),
            });
        }
        if self.statement_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "storage.statement_timeout",
                expected: "a positive duration such as \"5s\"".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &StorageConfig) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_ca_file_needs_tls_in_the_url() {
        let plain = StorageConfig {
            backend: Backend::Postgres,
            url: "postgres://chat@db/chat".into(),
            ca_file: "/etc/chatgate/pg-ca.pem".into(),
            ..StorageConfig::default()
        };
        assert!(refused(&plain).contains("storage.ca_file"));
        let tls = StorageConfig {
            url: "postgres://chat@db/chat?sslmode=verify-full".into(),
            ..plain
        };
        assert!(tls.validate().is_ok());
    }

    #[test]
    fn each_backend_needs_its_own_keys() {
        assert!(StorageConfig::default().validate().is_ok());
        let sqlite = StorageConfig {
            path: PathBuf::new(),
            ..StorageConfig::default()
        };
        assert!(refused(&sqlite).contains("storage.path"));
        // Memory keeps nothing on disk, so no path is needed.
        let memory = StorageConfig {
            backend: Backend::Memory,
            ..sqlite
        };
        assert!(memory.validate().is_ok());
        let mut pg = StorageConfig {
            backend: Backend::Postgres,
            url: "mysql://chat:pw@db/chat".into(),
            ..StorageConfig::default()
        };
        assert!(refused(&pg).contains("storage.url"));
        pg.url = "postgresql://chat:pw@db:5432/chat".into();
        assert!(pg.validate().is_ok());
    }

    #[test]
    fn schema_and_statement_timeout_are_checked() {
        let mut s = StorageConfig {
            schema: "Chat-Gate".into(),
            ..StorageConfig::default()
        };
        assert!(refused(&s).contains("storage.schema"));
        s.schema = "chatgate_2".into();
        assert!(s.validate().is_ok());
        s.statement_timeout = Duration::ZERO;
        assert!(refused(&s).contains("storage.statement_timeout"));
    }
}
