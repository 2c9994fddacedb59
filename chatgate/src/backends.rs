//! The storage backend and the rate limiters a [`Config`] names: built
//! here, so that a new backend lands as one more arm in this file.

use std::sync::Arc;
use std::time::Duration;

use chatcore::{
    GovernorLimiter, MemoryStore, PostgresOptions, PostgresStore, RateLimiter, SqliteOptions,
    SqliteStore, Store,
};
use chatcore::{RedisLimiter, RedisLimiterConfig};
use slog::{o, Logger};

use crate::config::{AuthMode, Backend, Config, LimiterBackend, OnUnavailable};

/// The storage a config names, with its concrete handle for the metrics
/// (SQLite's queue and commits, PostgreSQL's pool).
#[derive(Debug)]
pub struct Storage {
    /// The store, as chatcore uses it.
    pub store: Arc<dyn Store>,
    /// The SQLite store, when that is the backend.
    pub sqlite: Option<SqliteStore>,
    /// The PostgreSQL store, when that is the backend.
    pub postgres: Option<PostgresStore>,
}

/// Opens the storage a config names.
///
/// # Errors
/// When the database cannot be opened, or PostgreSQL cannot be reached or
/// migrated.
pub async fn store(config: &Config, log: &Logger) -> chatcore::Result<Storage> {
    let sql_logger = config.log.sql.then(|| log.new(o!("component" => "sql")));
    let s = &config.storage;
    Ok(match s.backend {
        Backend::Memory => Storage {
            store: Arc::new(MemoryStore::new()),
            sqlite: None,
            postgres: None,
        },
        Backend::Sqlite => {
            let store = SqliteStore::open_with(
                &s.path,
                SqliteOptions {
                    sql_logger,
                    full_sync: s.full_sync,
                    logger: Some(log.new(o!("component" => "storage"))),
                    ..SqliteOptions::default()
                },
            )?;
            Storage {
                store: Arc::new(store.clone()),
                sqlite: Some(store),
                postgres: None,
            }
        }
        Backend::Postgres => {
            let store = PostgresStore::connect(PostgresOptions {
                url: s.url.clone(),
                ca_file: (!s.ca_file.is_empty()).then(|| s.ca_file.clone().into()),
                schema: (!s.schema.is_empty()).then(|| s.schema.clone()),
                pool_size: s.pool_size.get() as usize,
                statement_timeout: s.statement_timeout,
                connect_timeout: s.statement_timeout,
                sql_logger,
                logger: Some(log.new(o!("component" => "storage"))),
            })
            .await?;
            Storage {
                store: Arc::new(store.clone()),
                sqlite: None,
                postgres: Some(store),
            }
        }
    })
}

/// The quotas: messages per session; messages per principal (only with
/// access control, since without it no principal is known) or per client
/// address; sessions created per principal or client address; feedback
/// per session and per principal or address.
#[derive(Debug, Clone)]
pub struct Limiters {
    /// `rate_limit.messages_per_minute`, per session.
    pub messages: Arc<dyn RateLimiter>,
    /// `rate_limit.principal_messages_per_minute`.
    pub principal: Option<Arc<dyn RateLimiter>>,
    /// `rate_limit.sessions_per_hour`.
    pub sessions: Arc<dyn RateLimiter>,
    /// `rate_limit.address_messages_per_minute`.
    pub address: Arc<dyn RateLimiter>,
    /// `rate_limit.feedback_per_hour`.
    pub feedback: Arc<dyn RateLimiter>,
    /// The Redis limiter, when that is the backend (for its metrics).
    pub redis: Option<RedisLimiter>,
}

/// The limiters a config names. Redis is connected lazily: a gateway
/// starts while it is down and follows `rate_limit.on_unavailable` until
/// it returns.
///
/// # Errors
/// When `rate_limit.url` is not a usable Redis URL.
pub fn limiters(config: &Config, log: &Logger) -> chatcore::Result<Limiters> {
    let rl = &config.rate_limit;
    let access_control = config.auth.mode != AuthMode::None;
    match rl.backend {
        LimiterBackend::Memory => Ok(Limiters {
            messages: Arc::new(GovernorLimiter::new(rl.messages_per_minute)),
            principal: access_control
                .then(|| shared(GovernorLimiter::new(rl.principal_messages_per_minute))),
            sessions: shared(GovernorLimiter::per_hour(rl.sessions_per_hour)),
            address: shared(GovernorLimiter::new(rl.address_messages_per_minute)),
            feedback: shared(GovernorLimiter::per_hour(rl.feedback_per_hour)),
            redis: None,
        }),
        LimiterBackend::Redis => {
            let quota = |name: &str, limit, period| RedisLimiterConfig {
                prefix: format!("{}{name}:", rl.key_prefix),
                limit,
                period,
                timeout: rl.timeout,
                on_unavailable: match rl.on_unavailable {
                    OnUnavailable::Deny => chatcore::OnUnavailable::Deny,
                    OnUnavailable::Allow => chatcore::OnUnavailable::Allow,
                },
            };
            const MINUTE: Duration = Duration::from_secs(60);
            const HOUR: Duration = Duration::from_secs(3600);
            let ca = if rl.ca_file.is_empty() {
                None
            } else {
                Some(std::fs::read(&rl.ca_file).map_err(|e| {
                    chatcore::Error::invalid(
                        "rate_limit.ca_file",
                        format!("cannot read rate_limit.ca_file {}: {e}", rl.ca_file),
                    )
                })?)
            };
            let messages = RedisLimiter::connect_with_ca(
                &rl.url,
                ca,
                quota("session", rl.messages_per_minute, MINUTE),
            )?
            .with_logger(log.new(o!("component" => "rate_limit")));
            let sibling =
                |name, limit, period| shared(messages.sibling(quota(name, limit, period)));
            Ok(Limiters {
                principal: access_control
                    .then(|| sibling("principal", rl.principal_messages_per_minute, MINUTE)),
                sessions: sibling("sessions", rl.sessions_per_hour, HOUR),
                address: sibling("address", rl.address_messages_per_minute, MINUTE),
                feedback: sibling("feedback", rl.feedback_per_hour, HOUR),
                messages: shared(messages.clone()),
                redis: Some(messages),
            })
        }
    }
}

fn shared(limiter: impl RateLimiter + 'static) -> Arc<dyn RateLimiter> {
    Arc::new(limiter)
}
