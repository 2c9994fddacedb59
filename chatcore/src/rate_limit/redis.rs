//! [`RedisLimiter`]: GCRA in Redis, so several gateways share one exact
//! quota per key.
//!
//! The whole decision is one Lua script, so it is atomic on the server: no
//! read-then-write race between gateways, which a GET followed by a SET
//! would have. The script reads the time from Redis itself (`TIME`), so the
//! gateways' clocks need not agree. Each key holds one number, the key's
//! theoretical arrival time, and expires once the key is back at full
//! quota, so idle keys cost nothing. The script is sent by hash (`EVALSHA`)
//! and loaded again when the server has forgotten it (a restart, `SCRIPT
//! FLUSH`).
//!
//! When Redis cannot be reached within the timeout, the limiter follows
//! its policy ([`OnUnavailable`]): refuse the message (the default; a quota
//! is a promise to whoever pays the upstream bill) or let it through
//! unchecked. Either way the event is counted, and the change of state is
//! logged once each way.

use std::any::Any;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use slog::Logger;

use super::{Check, Decision, Joint, Ping, RateLimiter};
use crate::error::{Error, Result};
use crate::types::SessionId;

/// GCRA over each key's theoretical arrival time (TAT), in microseconds of
/// Redis's clock, for one message drawing on every key given: `ARGV[2i-1]`
/// is key `i`'s emission interval (its period divided by its limit),
/// `ARGV[2i]` its burst. Every key is decided before any is written, so a
/// refusal spends no key's token. Replies `{1, remaining of each key…}` or
/// `{0, i, retry_after_us}` naming the first key that refused. Numbers are
/// written with `%d`: Lua's default formatting would round a microsecond
/// timestamp.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new_tats, remaining = {}, {1}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = new_tats[key] or tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return {0, i, allow_at - now}
  end
  new_tats[key] = new_tat
  remaining[i + 1] = math.floor((now - allow_at) / interval)
end
for key, new_tat in pairs(new_tats) do
  local ttl_ms = math.ceil((new_tat - now) / 1000)
  redis.call('SET', key, string.format('%d', new_tat), 'PX', string.format('%d', ttl_ms))
end
return remaining
";

/// What a [`RedisLimiter`] does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Refuse the message with
    /// [`ErrorKind::LimiterUnavailable`](crate::ErrorKind::LimiterUnavailable).
    #[default]
    Deny,
    /// Let the message through, unchecked.
    Allow,
}

/// One quota kept in Redis.
#[derive(Debug, Clone)]
pub struct RedisLimiterConfig {
    /// Prepended to every key, so that quotas (and deployments) sharing a
    /// Redis do not mix: e.g. `chatgate:msg:`.
    pub prefix: String,
    /// Messages per `period`, also the burst.
    pub limit: NonZeroU32,
    /// The quota's period: a minute for messages, an hour for sessions.
    pub period: Duration,
    /// How long one check may wait on Redis before it counts as
    /// unreachable.
    pub timeout: Duration,
    /// What to do then.
    pub on_unavailable: OnUnavailable,
}

/// Whether Redis answered last time, and how often it did not: shared by
/// the limiters on one connection, so a state change is logged once.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
    failures: AtomicU64,
}

/// GCRA per key in Redis: exact across every gateway sharing the Redis
/// (see the module docs).
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Arc<redis::Script>,
    health: Arc<Health>,
    log: Option<Logger>,
    prefix: String,
    interval_us: u64,
    limit: u32,
    timeout: Duration,
    policy: OnUnavailable,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("limit", &self.limit)
            .field("interval_us", &self.interval_us)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port/db`, or
    /// `rediss://` for TLS, the server's certificate checked against the
    /// system's roots). It connects on first use and reconnects by itself,
    /// so a gateway starts while Redis is down and recovers when it returns.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// URL is not a Redis URL.
    pub fn connect(url: &str, config: RedisLimiterConfig) -> Result<Self> {
        Self::connect_with_ca(url, None, config)
    }

    /// As [`RedisLimiter::connect`]; with `ca_pem` (PEM certificates), a
    /// `rediss://` server's certificate is checked against those roots
    /// instead of the system's: a private CA.
    ///
    /// # Errors
    /// As [`RedisLimiter::connect`]; also when `ca_pem` is given for a URL
    /// that is not `rediss://`.
    pub fn connect_with_ca(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        config: RedisLimiterConfig,
    ) -> Result<Self> {
        let client = match ca_pem {
            None => redis::Client::open(url),
            Some(_) if !url.starts_with("rediss://") => {
                return Err(Error::invalid(
                    "url",
                    "a CA file is for a rediss:// URL (Redis over TLS)",
                ))
            }
            Some(root) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
        }
        .map_err(|_| Error::invalid("url", "not a Redis URL"))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // Reconnect quickly and give up soon: a check that waits is a
            // chat turn that waits. The next check tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| Error::invalid("url", format!("cannot use this Redis URL: {e}")))?;
        Ok(Self::build(
            conn,
            Arc::new(redis::Script::new(GCRA)),
            Arc::default(),
            None,
            config,
        ))
    }

    /// Checks that `url` is a Redis URL this limiter can use, without
    /// connecting (for configuration checks).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when it
    /// is not; the error does not repeat it (it may hold a password).
    pub fn check_url(url: &str) -> Result<()> {
        redis::Client::open(url)
            .map(drop)
            .map_err(|_| Error::invalid("url", "not a Redis URL"))
    }

    /// Another quota on the same connection (and the same health state).
    pub fn sibling(&self, config: RedisLimiterConfig) -> Self {
        Self::build(
            self.conn.clone(),
            Arc::clone(&self.script),
            Arc::clone(&self.health),
            self.log.clone(),
            config,
        )
    }

    fn build(
        conn: ConnectionManager,
        script: Arc<redis::Script>,
        health: Arc<Health>,
        log: Option<Logger>,
        config: RedisLimiterConfig,
    ) -> Self {
        let period_us = u64::try_from(config.period.as_micros()).unwrap_or(u64::MAX);
        // Time is kept in microseconds: a quota finer than one a
        // microsecond (60 million a minute) is in effect no quota, and is
        // kept as one a microsecond.
        let interval_us = (period_us / u64::from(config.limit.get())).max(1);
        RedisLimiter {
            conn,
            script,
            health,
            log,
            prefix: config.prefix,
            interval_us,
            limit: config.limit.get(),
            timeout: config.timeout,
            policy: config.on_unavailable,
        }
    }

    /// Logs changes between reachable and unreachable to `log`.
    #[must_use]
    pub fn with_logger(mut self, log: Logger) -> Self {
        self.log = Some(log);
        self
    }

    /// How many checks found Redis unreachable (on any quota sharing this
    /// connection).
    pub fn unavailable_count(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// The policy when Redis cannot be reached.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.policy
    }

    /// This quota's key for `key`.
    fn key(&self, key: SessionId) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// Runs [`GCRA`] on `keys` (each with its quota); the script's reply,
    /// or how Redis failed.
    async fn run(
        &self,
        keys: &[(&RedisLimiter, SessionId)],
    ) -> std::result::Result<Vec<i64>, String> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        for (quota, key) in keys {
            invocation
                .key(quota.key(*key))
                .arg(quota.interval_us)
                .arg(quota.limit);
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
        {
            // Reachable once the reply is one the script gives.
            Ok(Ok(reply)) if matches!(reply[..], [1, ..] | [0, _, _]) => {
                self.reachable();
                Ok(reply)
            }
            Ok(Ok(reply)) => Err(format!("unexpected reply {reply:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn decide(&self, key: SessionId) -> Result<Decision> {
        let decision = match self.run(&[(self, key)]).await {
            Ok(reply) => match reply[..] {
                [1, remaining, ..] => Some(Decision::Allowed {
                    remaining: count(remaining),
                }),
                [0, _, retry_us, ..] => Some(Decision::Limited {
                    retry_after: micros(retry_us),
                }),
                _ => self.unreachable(format!("unexpected reply {reply:?}"))?,
            },
            Err(cause) => self.unreachable(cause)?,
        };
        Ok(decision.unwrap_or(Decision::Allowed {
            remaining: self.limit.saturating_sub(1),
        }))
    }

    /// `also`'s key and this one's in one script.
    async fn decide_both(
        &self,
        key: SessionId,
        also: &RedisLimiter,
        also_key: SessionId,
    ) -> Result<Joint> {
        let decision = match self.run(&[(also, also_key), (self, key)]).await {
            Ok(reply) => match reply[..] {
                [1, _, remaining, ..] => Some(Joint::Allowed {
                    remaining: count(remaining),
                }),
                [0, 1, retry_us, ..] => Some(Joint::AlsoLimited {
                    retry_after: micros(retry_us),
                }),
                [0, _, retry_us, ..] => Some(Joint::Limited {
                    retry_after: micros(retry_us),
                }),
                _ => self.unreachable(format!("unexpected reply {reply:?}"))?,
            },
            Err(cause) => self.unreachable(cause)?,
        };
        Ok(decision.unwrap_or(Joint::Allowed {
            remaining: self.limit.saturating_sub(1),
        }))
    }

    fn reachable(&self) {
        if self.health.down.swap(false, Ordering::Relaxed) {
            if let Some(log) = &self.log {
                slog::info!(log, "rate limiter store reachable again"; "backend" => "redis");
            }
        }
    }

    /// Redis failed: counted, logged once, and then the policy: an error
    /// (deny) or `Ok(None)`, to let the message through unchecked.
    fn unreachable<T>(&self, cause: String) -> Result<Option<T>> {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        if !self.health.down.swap(true, Ordering::Relaxed) {
            if let Some(log) = &self.log {
                let policy = match self.policy {
                    OnUnavailable::Deny => "deny: messages are refused until it returns",
                    OnUnavailable::Allow => "allow: messages pass unchecked until it returns",
                };
                slog::warn!(log, "rate limiter store unreachable";
                    "backend" => "redis", "cause" => &cause, "on_unavailable" => policy);
            }
        }
        match self.policy {
            OnUnavailable::Deny => Err(Error::limiter_unavailable(cause)),
            OnUnavailable::Allow => Ok(None),
        }
    }
}

/// A count from the script (never negative).
fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Microseconds from the script (never negative).
fn micros(n: i64) -> Duration {
    Duration::from_micros(u64::try_from(n).unwrap_or(0))
}

impl RateLimiter for RedisLimiter {
    fn check(&self, key: SessionId) -> Check<'_> {
        Check::pending(self.decide(key))
    }

    /// One script for both keys when `also` is a quota on the same Redis
    /// connection, with the same timeout and outage policy (an outage is
    /// then one event, decided by the one policy): one round trip, and a
    /// refusal spends neither token.
    fn check_both<'a>(
        &'a self,
        key: SessionId,
        also: &'a dyn RateLimiter,
        also_key: SessionId,
    ) -> Check<'a, Joint> {
        match (also as &dyn Any).downcast_ref::<RedisLimiter>() {
            Some(also)
                if Arc::ptr_eq(&self.health, &also.health)
                    && self.policy == also.policy
                    && self.timeout == also.timeout =>
            {
                Check::pending(self.decide_both(key, also, also_key))
            }
            _ => super::one_then_other(self, key, also, also_key),
        }
    }

    fn limit(&self) -> u32 {
        self.limit
    }

    fn ping(&self) -> Ping<'_> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PING");
            match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut conn)).await {
                Ok(Ok(_)) => {
                    self.reachable();
                    Ok(())
                }
                Ok(Err(e)) => Err(Error::limiter_unavailable(e.to_string())),
                Err(_) => Err(Error::limiter_unavailable(format!(
                    "no answer within {:?}",
                    self.timeout
                ))),
            }
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
