//! `[auth]`: who may call the gateway (docs/access-control.md), and the trusted proxies
//! whose `X-Forwarded-For` names a client's address.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secrets};

/// How callers are identified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone who reaches the port may call.
    #[default]
    None,
    /// `initialize_session` is open and hands out a session token; every
    /// other call on that session must carry it.
    SessionToken,
    /// Every call needs an API key or a JWT.
    Required,
}

/// `[auth]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `session_token` or `required`.
    pub mode: AuthMode,
}

impl AuthConfig {
    /// What the types cannot say: any mode but `none` signs and verifies
    /// with `SECRET_KEY` (HS256), which needs a key at least as long as
    /// its 256-bit hash (RFC 7518 §3.2).
    pub(super) fn validate(&self, secrets: &Secrets) -> Result<(), ConfigError> {
        if self.mode != AuthMode::None {
            let long_enough = secrets
                .secret_key
                .as_ref()
                .is_some_and(|k| k.expose().len() >= 32);
            if !long_enough {
                return Err(ConfigError::Invalid {
                    key: "auth.mode",
                    expected:
                        "SECRET_KEY (environment or .env) of at least 32 bytes: it signs and \
                               verifies session tokens and JWTs"
                            .into(),
                });
            }
        }
        Ok(())
    }
}

/// Parsed `server.trusted_proxies`: addresses and networks (`10.0.0.0/8`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses each entry as an address or a CIDR network.
    ///
    /// # Errors
    /// The first entry that is neither.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                e.parse::<ipnet::IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| e.clone())
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy,
    /// in which case the right-most `X-Forwarded-For` entry that is not a
    /// trusted proxy (entries to its left could be forged by the client).
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer: its own address, whatever it claims.
        assert_eq!(
            t.client(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Through trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            t.client(ip("10.1.1.1"), Some("6.6.6.6, 198.51.100.7, 10.2.2.2")),
            ip("198.51.100.7")
        );
        assert_eq!(t.client(ip("192.0.2.1"), None), ip("192.0.2.1"));
        assert!(TrustedProxies::parse(&["not-an-ip".into()]).is_err());
    }

    #[test]
    fn access_control_needs_a_long_secret_key() {
        let none = AuthConfig::default();
        assert!(none.validate(&Secrets::default()).is_ok());
        let required = AuthConfig {
            mode: AuthMode::Required,
        };
        let with_key = |k: &str| Secrets {
            secret_key: Some(Secret::new(k)),
            ..Secrets::default()
        };
        for secrets in [Secrets::default(), with_key(&"k".repeat(31))] {
            let e = required.validate(&secrets).unwrap_err().to_string();
            assert!(e.contains("auth.mode") && e.contains("SECRET_KEY"), "{e}");
        }
        assert!(required.validate(&with_key(&"k".repeat(32))).is_ok());
    }
}
