//! `PostgresStore`: sessions, messages, feedback and API keys in one
//! PostgreSQL database, shared by several gateways.
//!
//! A pool of connections (deadpool) serves every call, and a quarter of
//! them a turn's claims, which commit without waiting for the disk
//! ([`claims_config`]); a connection is held only for its own statements
//! or transaction, never across a model call.
//! Turns of one session are serialised across gateways by claims on the
//! session's row (`claims.rs`); claims and claimed appends waiting at the
//! same moment go to the server as one statement each (`batch.rs`,
//! `appends.rs`). The retention sweep is serialised by a lease
//! (`purge.rs`), and the schema is migrated under an advisory lock
//! (`schema.rs`); `sessions.rs`, `responses.rs`, `feedback.rs` and
//! `keys.rs` hold the other operations; `vacuum.rs` keeps the sessions
//! table lean under a stream of turns. This file connects and maps errors.
//!
//! Every connection runs with a `statement_timeout`; a statement that hits
//! it, a server out of reach, a pool with no free connection in time and a
//! dropped connection are [`ErrorKind::StorageUnavailable`] (try again
//! later), anything else [`ErrorKind::Storage`].
//!
//! [`ErrorKind::StorageUnavailable`]: crate::ErrorKind::StorageUnavailable
//! [`ErrorKind::Storage`]: crate::ErrorKind::Storage

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use slog::Logger;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{from_millis, Rating, Session, SessionId};

mod appends;
mod batch;
mod claims;
mod feedback;
mod keys;
mod messages;
mod purge;
mod responses;
mod schema;
mod sessions;
mod tls;
mod vacuum;

/// How a [`PostgresStore`] connects.
#[derive(Clone)]
pub struct PostgresOptions {
    /// The server, as a `postgres://user:password@host:port/database` URL
    /// (or a libpq key-value string). Its `sslmode` is read as libpq reads
    /// it: `disable` (or none), `prefer`, `require`, `verify-ca`,
    /// `verify-full` (TLS with rustls).
    pub url: String,
    /// PEM roots that the server's certificate is checked against (a
    /// private CA); `None`: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections the store keeps at most (at least two): a quarter of
    /// them, and at least one, serve turn claims.
    pub pool_size: usize,
    /// The longest a statement may run (set on every connection); one that
    /// runs longer fails with
    /// [`ErrorKind::StorageUnavailable`].
    pub statement_timeout: Duration,
    /// The longest to wait for a new connection, and for a free one from a
    /// busy pool.
    pub connect_timeout: Duration,
    /// A schema to keep the tables in, created if missing and put first on
    /// every connection's `search_path`, so that several deployments (or
    /// tests) can share one database. A plain lower-case identifier.
    pub schema: Option<String>,
    /// Where every SQL statement executed is reported (the gateway's `log.sql`);
    /// `None` reports nothing. Parameter values are never logged.
    pub sql_logger: Option<Logger>,
    /// Where the store reports trouble it works around by itself (a batch
    /// of statements the server refused, tried again one by one); `None`
    /// reports nothing.
    pub logger: Option<Logger>,
}

impl PostgresOptions {
    /// Checks that `url` is a PostgreSQL connection string this store can
    /// use, without connecting (for configuration checks).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when it is malformed; the error does not
    /// repeat it (it may hold a password).
    pub fn check_url(url: &str) -> Result<()> {
        let (url, _) = tls::sslmode(url)?;
        url.parse::<tokio_postgres::Config>()
            .map(drop)
            .map_err(|e| Error::invalid("url", "the PostgreSQL URL is malformed").with_source(e))
    }

    /// Whether `name` is a schema name this store takes: a lower-case
    /// identifier (`a`-`z`, `0`-`9`, `_`, not starting with a digit, at
    /// most 63 bytes), which SQL can name unquoted.
    pub fn is_schema_name(name: &str) -> bool {
        is_plain_identifier(name)
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            url: "postgres://localhost/chatgate".into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            schema: None,
            sql_logger: None,
            logger: None,
            ca_file: None,
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &crate::redact::redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("schema", &self.schema)
            .field("sql_logger", &self.sql_logger.is_some())
            .field("logger", &self.logger.is_some())
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A storage backend on a PostgreSQL database, for several gateways at
/// once. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    db: Arc<Db>,
}

/// What the store's clones share.
struct Db {
    pool: Pool,
    claims: Pool,
    /// Claimed appends, committed in groups (`appends.rs`).
    appends: appends::Appends,
    /// Turn claims, in groups (`claims.rs`).
    claims_batches: claims::Claims,
    /// Turns stored since `sessions` was last vacuumed (`vacuum.rs`).
    upkeep: vacuum::Upkeep,
    log: Option<Logger>,
    /// Who this store is when it holds the sweep lease: random per store,
    /// so two gateways never mistake each other's lease for their own.
    holder: uuid::Uuid,
    connect_timeout: Duration,
    /// The longest a call may wait for its connection and its statement
    /// together: past it, the server counts as out of reach even when the
    /// network drops packets silently and no error ever comes.
    call_timeout: Duration,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool_status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .field("idle", &status.idle)
            .field("holder", &self.db.holder)
            .finish()
    }
}

/// Connections for turn claims: as `config`, but their commits do not wait
/// for the server's disk. A claim is not data: a server crash that forgets
/// one leaves its turn unable to store (its append finds the claim gone)
/// and the session free, and the append, on an ordinary connection, waits
/// for the disk, which by then holds the claim too. Not waiting makes a
/// claim markedly cheaper for the server.
/// Named apart (`chatgate-claims`, or the URL's `application_name` with
/// `-claims`) so that an operator sees them apart in `pg_stat_activity`.
fn claims_config(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut claims = config.clone();
    let options = config.get_options().unwrap_or_default();
    claims.options(format!("{options} -c synchronous_commit=off").trim_start());
    let name = config.get_application_name().unwrap_or("chatgate");
    claims.application_name(format!("{name}-claims"));
    claims
}

/// The pool's state, for an operator's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostgresPoolStatus {
    /// Connections the pool keeps at most.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// Calls waiting for a connection, or for their batch (claims and
    /// claimed appends, which go to the server in groups).
    pub waiting: usize,
}

impl PostgresStore {
    /// The schema version this build migrates databases to.
    pub const SCHEMA_VERSION: i32 = schema::LATEST;

    /// Connects to the server, builds the pool and brings the schema up to
    /// date (waiting for another gateway that is migrating it).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the
    /// URL or schema name is malformed;
    /// [`ErrorKind::StorageUnavailable`]
    /// when the server cannot be reached in time;
    /// [`ErrorKind::Storage`] when the schema
    /// cannot be migrated.
    pub async fn connect(options: PostgresOptions) -> Result<Self> {
        if let Some(schema) = &options.schema {
            if !is_plain_identifier(schema) {
                return Err(Error::invalid(
                    "schema",
                    "the PostgreSQL schema must be a lower-case identifier (a-z, 0-9, _)",
                ));
            }
        }
        let (url, ssl) = tls::sslmode(&options.url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::invalid("url", "the PostgreSQL URL is malformed").with_source(e))?;
        // Server settings go in the startup packet, so every connection has
        // them from its first statement without a round trip of its own.
        let mut startup = config.get_options().unwrap_or_default().to_owned();
        // Read committed is what the claim's re-read relies on (see
        // `claims`), whatever the database's default is.
        startup.push_str(&format!(
            " -c statement_timeout={} -c default_transaction_isolation=read\\ committed",
            options.statement_timeout.as_millis().max(1)
        ));
        if let Some(schema) = &options.schema {
            startup.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(startup.trim());
        config.connect_timeout(options.connect_timeout);
        // A server that vanished without a reset is noticed by the kernel
        // too, not only by the call timeout.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.tcp_user_timeout(options.statement_timeout + options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("chatgate");
        }
        let claims_config = claims_config(&config);
        let make_pool = |config: tokio_postgres::Config, size: usize| -> Result<Pool> {
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager =
                match ssl {
                    tls::SslMode::Plain if options.ca_file.is_none() => {
                        Manager::from_config(config, NoTls, manager_config)
                    }
                    tls::SslMode::Plain => return Err(Error::invalid(
                        "ca_file",
                        "a CA file needs TLS: sslmode=require, verify-ca or verify-full in the URL",
                    )),
                    mode => {
                        let tls = tls::connector(mode, options.ca_file.as_deref())?;
                        Manager::from_config(config, tls, manager_config)
                    }
                };
            Pool::builder(manager)
                .max_size(size.max(1))
                .wait_timeout(Some(options.connect_timeout))
                .create_timeout(Some(options.connect_timeout))
                .recycle_timeout(Some(options.connect_timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(Error::internal)
        };
        // Claims are short and a turn takes one: a quarter of the
        // connections serve them, so the server sees no more connections
        // than `pool_size` says (two at least: one of each kind).
        let claims_size = (options.pool_size / 4).max(1);
        let pool = make_pool(config, options.pool_size.saturating_sub(claims_size).max(1))?;
        let claims = make_pool(claims_config, claims_size)?;
        let call_timeout = options.statement_timeout + options.connect_timeout;
        let appends = appends::Appends::start(
            pool.clone(),
            options.sql_logger.clone(),
            options.logger.clone(),
            call_timeout,
        );
        let claims_batches = claims::Claims::start(
            claims.clone(),
            options.sql_logger.clone(),
            options.logger.clone(),
            call_timeout,
        );
        let store = PostgresStore {
            db: Arc::new(Db {
                pool,
                claims,
                appends,
                claims_batches,
                upkeep: vacuum::Upkeep::default(),
                log: options.sql_logger,
                holder: uuid::Uuid::new_v4(),
                connect_timeout: options.connect_timeout,
                call_timeout,
            }),
        };
        let mut client = store.client().await?;
        schema::migrate(
            &mut client,
            options.schema.as_deref(),
            store.db.log.as_ref(),
        )
        .await?;
        vacuum::start(Arc::downgrade(&store.db), options.logger);
        Ok(store)
    }

    /// The pool's state, for an operator's metrics: every connection,
    /// those for claims included.
    pub fn pool_status(&self) -> PostgresPoolStatus {
        let (status, claims) = (self.db.pool.status(), self.db.claims.status());
        PostgresPoolStatus {
            max_size: status.max_size + claims.max_size,
            size: status.size + claims.size,
            idle: status.available + claims.available,
            waiting: status.waiting
                + claims.waiting
                + self.db.appends.queued()
                + self.db.claims_batches.queued(),
        }
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<Object> {
        self.db.pool.get().await.map_err(pool_error)
    }

    /// A connection for a turn claim's statements (see [`claims_config`]).
    async fn claims_client(&self) -> Result<Object> {
        self.db.claims.get().await.map_err(pool_error)
    }

    /// Reports one SQL statement about to run (the gateway's `log.sql`): its text
    /// only, never parameter values.
    fn log_sql(&self, sql: &str) {
        if let Some(log) = &self.db.log {
            crate::storage::log_sql(log, sql);
        }
    }

    /// `call` within the call timeout; past it, `StorageUnavailable`.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.db.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::storage_unavailable(format!(
                "PostgreSQL did not answer within {:?}",
                self.db.call_timeout
            ))),
        }
    }

    /// Runs one statement on a pooled connection and returns its rows.
    async fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.bounded(async {
            let client = self.client().await?;
            self.log_sql(sql);
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query(&statement, params).await?)
        })
        .await
    }

    /// Runs one statement on a pooled connection; at most one row.
    async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.bounded(async {
            let client = self.client().await?;
            self.log_sql(sql);
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query_opt(&statement, params).await?)
        })
        .await
    }

    /// Runs one statement on a pooled connection; the rows it changed.
    async fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.execute_on(&self.db.pool, sql, params).await
    }

    /// As [`PostgresStore::execute`], on a connection from `pool`.
    async fn execute_on(
        &self,
        pool: &Pool,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.bounded(async {
            let client = pool.get().await.map_err(pool_error)?;
            self.log_sql(sql);
            let statement = client.prepare_cached(sql).await?;
            Ok(client.execute(&statement, params).await?)
        })
        .await
    }
}

/// Whether `s` can go into SQL unquoted and mean itself (PostgreSQL folds
/// unquoted names to lower case).
fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

/// `t` cut to whole milliseconds, as stored (see `schema`).
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    from_millis(t.timestamp_millis())
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let code = e.code().map(|c| c.code().to_owned());
        match code.as_deref() {
            // A character PostgreSQL's text cannot hold (NUL): the
            // caller's text, not the database, is at fault.
            Some("22021" | "22P05") => Error::new(
                ErrorKind::InvalidInput,
                "text must not contain NUL characters",
            )
            .with_source(e),
            Some(code) if transient_state(code) => Error::storage_unavailable(e),
            Some(_) => Error::storage(e),
            None if e.is_closed() || io_caused(&e) => Error::storage_unavailable(e),
            None => Error::storage(e),
        }
    }
}

/// Whether SQLSTATE `code` is a failure that passes: a statement timeout
/// (`57014`), a lost or refused connection (class `08`), a server short of
/// resources (class `53`), a server shutting down or starting (`57P0x`),
/// a transaction that lost a race (`40001`, `40P01`), or a server that
/// takes no writes (`25006`: a standby, as during a failover).
fn transient_state(code: &str) -> bool {
    code == "57014"
        || code == "25006"
        || code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || code == "40001"
        || code == "40P01"
}

/// Whether `e` came from the network (a server out of reach, a reset).
fn io_caused(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Maps a failure to get a pooled connection.
fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => Error::from(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            Error::storage_unavailable(format!("no PostgreSQL connection available in time: {e}"))
        }
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => Error::internal(e),
    }
}

/// Reads the session in the row's first five columns: `created_at`,
/// `last_active`, `system_prompt`, `metadata`, `owner`.
fn session_from(id: SessionId, row: &Row, first: usize) -> Result<Session> {
    Ok(Session {
        id,
        created_at: row.try_get(first)?,
        last_active: row.try_get(first + 1)?,
        system_prompt: row.try_get(first + 2)?,
        metadata: row.try_get(first + 3)?,
        owner: row.try_get(first + 4)?,
        target: row.try_get(first + 5)?,
    })
}

/// A rating as stored.
fn rating_from(value: Option<i16>) -> Result<Option<Rating>> {
    value.map(|r| Rating::new(i64::from(r))).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_alone_commit_without_waiting_for_the_disk() {
        let mut config: tokio_postgres::Config = "postgres://chat@db/chat".parse().unwrap();
        config.options("-c statement_timeout=5000 -c search_path=tenant");
        config.application_name("chatgate");
        let claims = claims_config(&config);
        assert_eq!(claims.get_application_name(), Some("chatgate-claims"));
        config.application_name("billing");
        assert_eq!(
            claims_config(&config).get_application_name(),
            Some("billing-claims")
        );
        assert_eq!(
            claims.get_options(),
            Some("-c statement_timeout=5000 -c search_path=tenant -c synchronous_commit=off")
        );
        assert_eq!(claims.get_hosts(), config.get_hosts());
        assert_eq!(claims.get_user(), config.get_user());
        assert!(!config.get_options().unwrap().contains("synchronous_commit"));
    }

    #[test]
    fn debug_hides_the_password() {
        for (url, shown) in [
            (
                "postgres://chat:s3cret@db:5432/chat",
                "postgres://***@db:5432/chat",
            ),
            ("postgres://chat@db/chat", "postgres://***@db/chat"),
            (
                "postgres://db/chat?user=chat&password=s3cret&sslmode=disable",
                "postgres://db/chat?user=chat&password=***&sslmode=disable",
            ),
            (
                "host=db user=chat password=s3cret",
                "host=db user=chat password=***",
            ),
        ] {
            assert_eq!(crate::redact_url(url), shown);
            let options = PostgresOptions {
                url: url.into(),
                ..PostgresOptions::default()
            };
            assert!(!format!("{options:?}").contains("s3cret"));
        }
    }

    #[test]
    fn only_plain_identifiers_name_a_schema() {
        assert!(is_plain_identifier("t_0af3"));
        assert!(is_plain_identifier("_tenant"));
        for bad in [
            "",
            "1abc",
            "Tenant",
            "a;drop",
            "a b",
            "a\"b",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }
}
