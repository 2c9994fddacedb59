//! `[server]`: the listener, its bounds and timeouts, CORS, and which
//! proxies are believed about a client's address.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, ConfigError, DurationKey, TrustedProxies};

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

impl ServerConfig {
    /// Its durations, for the bounds every duration shares.
    pub(super) fn durations(&self) -> [DurationKey; 4] {
        [
            DurationKey::positive("server.header_timeout", self.header_timeout),
            DurationKey::positive("server.body_timeout", self.body_timeout),
            DurationKey::positive("server.write_timeout", self.write_timeout),
            // Zero is meaningful here: stop at once, cutting requests off.
            DurationKey::zero_allowed("server.shutdown_grace", self.shutdown_grace),
        ]
    }

    /// What the types cannot say, besides the bounds of its durations.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Err(bad) = TrustedProxies::parse(&self.trusted_proxies) {
            return Err(ConfigError::Invalid {
                key: "server.trusted_proxies",
                expected: format!("IP addresses or CIDR networks, got {bad:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_must_be_addresses_or_networks() {
        let mut s = ServerConfig::default();
        assert!(s.validate().is_ok());
        s.trusted_proxies = vec!["10.0.0.0/8".into(), "nope".into()];
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("server.trusted_proxies") && e.contains("\"nope\""),
            "{e}"
        );
    }

    #[test]
    fn only_shutdown_grace_may_be_zero() {
        let s = ServerConfig {
            header_timeout: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
            ..ServerConfig::default()
        };
        let refused: Vec<&str> = s
            .durations()
            .iter()
            .filter(|d| d.check().is_err())
            .map(|d| d.key)
            .collect();
        assert_eq!(refused, ["server.header_timeout"]);
    }
}
