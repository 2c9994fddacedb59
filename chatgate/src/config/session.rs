//! `[session]`: how long sessions live and are kept, and the in-memory
//! cache of recent ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, ConfigError, DurationKey};

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
        // The library's defaults are the gateway's.
        type Core = chatcore::ChatCoreBuilder;
        SessionConfig {
            idle_timeout: Core::DEFAULT_IDLE_TIMEOUT,
            retention: Core::DEFAULT_RETENTION,
            sweep_interval: Duration::from_secs(3600),
            hot_sessions: Core::DEFAULT_HOT_SESSIONS,
            hot_cache_bytes: Core::DEFAULT_HOT_CACHE_BYTES,
            client_system_prompt: true,
        }
    }
}

impl SessionConfig {
    /// Its durations, for the bounds every duration shares.
    pub(super) fn durations(&self) -> [DurationKey; 3] {
        [
            DurationKey::positive("session.idle_timeout", self.idle_timeout),
            DurationKey::positive("session.retention", self.retention),
            DurationKey::positive("session.sweep_interval", self.sweep_interval),
        ]
    }

    /// What the types cannot say, besides the bounds of its durations
    /// (checked first, so the comparison here is between sane values).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.retention < self.idle_timeout {
            return Err(ConfigError::Invalid {
                key: "session.retention",
                expected: format!(
                    "at least session.idle_timeout ({}): a session must not be purged while it is still active",
                    human::duration::format(self.idle_timeout)
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_must_outlast_idle_timeout() {
        let mut s = SessionConfig::default();
        assert!(s.validate().is_ok());
        s.retention = s.idle_timeout;
        assert!(s.validate().is_ok());
        s.retention = Duration::from_secs(60);
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("session.retention") && e.contains("(30m)"),
            "{e}"
        );
    }
}
