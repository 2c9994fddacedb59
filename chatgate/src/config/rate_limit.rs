//! `[rate_limit]`: the per-session, per-principal, per-address,
//! session-creation and feedback limits, and where their counts are kept
//! (this process or Redis).
//! `Debug` shows `url` through [`redact_url`].

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, redact_url, ConfigError};

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
    /// PEM roots that a `rediss://` server's certificate is checked against
    /// (a private CA); empty: the system's roots.
    pub ca_file: String,
    /// Messages per minute per session (burst of the same size).
    pub messages_per_minute: NonZeroU32,
    /// Messages per minute per principal, across its sessions (with
    /// `auth.mode` other than `none`).
    pub principal_messages_per_minute: NonZeroU32,
    /// Sessions created per hour per principal, or per client address for
    /// anonymous callers (in every mode).
    pub sessions_per_hour: NonZeroU32,
    /// Messages per minute per client address, across its sessions and
    /// stateless `/v1`, for callers with no principal (in every mode).
    pub address_messages_per_minute: NonZeroU32,
    /// Feedback per hour per session, and per principal or client address.
    pub feedback_per_hour: NonZeroU32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: LimiterBackend::Memory,
            url: String::new(),
            on_unavailable: OnUnavailable::Deny,
            timeout: Duration::from_millis(500),
            key_prefix: "chatgate:".into(),
            ca_file: String::new(),
            messages_per_minute: NonZeroU32::new(
                chatcore::ChatCoreBuilder::DEFAULT_MESSAGES_PER_MINUTE,
            )
            .expect("nonzero"),
            principal_messages_per_minute: NonZeroU32::new(60).expect("nonzero"),
            sessions_per_hour: NonZeroU32::new(60).expect("nonzero"),
            // Far above one person's chatting (several sessions and an
            // agent's tool loop included), far below a script's.
            address_messages_per_minute: NonZeroU32::new(120).expect("nonzero"),
            feedback_per_hour: NonZeroU32::new(60).expect("nonzero"),
        }
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
            .field("ca_file", &self.ca_file)
            .field("messages_per_minute", &self.messages_per_minute)
            .field(
                "principal_messages_per_minute",
                &self.principal_messages_per_minute,
            )
            .field("sessions_per_hour", &self.sessions_per_hour)
            .field(
                "address_messages_per_minute",
                &self.address_messages_per_minute,
            )
            .field("feedback_per_hour", &self.feedback_per_hour)
            .finish()
    }
}

impl RateLimitConfig {
    /// What the types cannot say.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // The URL is not echoed: it may hold a password in a form the
        // redaction does not know.
        if self.backend == LimiterBackend::Redis
            && (!(self.url.starts_with("redis://") || self.url.starts_with("rediss://"))
                || chatcore::RedisLimiter::check_url(&self.url).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "rate_limit.url",
                expected: "a redis://host:port/db URL, with rate_limit.backend = \"redis\"".into(),
            });
        }
        if !self.ca_file.is_empty() && !self.url.starts_with("rediss://") {
            return Err(ConfigError::Invalid {
                key: "rate_limit.ca_file",
                expected: "a CA file only with a rediss:// rate_limit.url (Redis over TLS)".into(),
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "rate_limit.timeout",
                expected: "a positive duration such as \"500ms\"".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_needs_a_redis_url_and_a_timeout() {
        let mut r = RateLimitConfig::default();
        assert!(r.validate().is_ok());
        r.backend = LimiterBackend::Redis;
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("rate_limit.url"), "{e}");
        r.url = "redis://:pw@cache:6379/0".into();
        assert!(r.validate().is_ok());
        // A private CA is for TLS only.
        r.ca_file = "/etc/chatgate/redis-ca.pem".into();
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("rate_limit.ca_file"), "{e}");
        r.url = "rediss://cache:6380/0".into();
        assert!(r.validate().is_ok());
        r.timeout = Duration::ZERO;
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("rate_limit.timeout"), "{e}");
    }
}
