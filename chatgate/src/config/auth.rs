//! `[auth]`: who may call the gateway (docs/access-control.md), and the trusted proxies
//! whose `X-Forwarded-For` names a client's address.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, ConfigError, Secrets};

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
    /// The `aud` a JWT must name (one of its audiences); empty: not checked.
    pub jwt_audience: String,
    /// The `iss` a JWT must have; empty: not checked.
    pub jwt_issuer: String,
    /// The longest a JWT may live, `exp` minus `iat` (or minus now when it
    /// has no `iat`); zero: no bound.
    #[serde(with = "human::duration")]
    pub jwt_max_lifetime: Duration,
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
    /// `lines` are the header's lines in the order received: a proxy that
    /// appends a line of its own (HAProxy's `option forwardfor`) puts it
    /// last, so the lines are read together, right to left. An entry that
    /// is not an address (`unknown`, garbage) ends the walk where it is.
    pub fn client<'a, I>(&self, peer: IpAddr, lines: I) -> IpAddr
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: DoubleEndedIterator,
    {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in lines.into_iter().rev().flat_map(|line| line.rsplit(',')) {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok
            .then(|| inside.parse::<std::net::Ipv6Addr>().ok())
            .flatten()
            .map(IpAddr::V6);
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = hop.split_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The key an anonymous client's quotas are counted under: its IPv4
/// address, or the /64 network of its IPv6 address (one subscriber is
/// handed a whole /64, so a per-address key would give one client 2^64
/// buckets). An IPv4 address mapped into IPv6 counts as the IPv4 one.
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(net))
            }
        },
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
            t.client(ip("10.1.1.1"), ["6.6.6.6, 198.51.100.7, 10.2.2.2"]),
            ip("198.51.100.7")
        );
        assert_eq!(t.client(ip("192.0.2.1"), []), ip("192.0.2.1"));
        // Lines are read together, the last line last: a client's forged
        // first line does not win over the line the proxy appended.
        assert_eq!(
            t.client(ip("10.1.1.1"), ["6.6.6.6", "198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client(ip("10.1.1.1"), ["6.6.6.6, 10.3.3.3", "10.2.2.2"]),
            ip("6.6.6.6")
        );
        // Ports and brackets, as some proxies write them.
        for (entry, want) in [
            ("198.51.100.7:4711", "198.51.100.7"),
            ("[2001:db8::7]:4711", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
        ] {
            assert_eq!(t.client(ip("10.1.1.1"), [entry]), ip(want), "{entry}");
        }
        // Not an address: the walk stops there, at the proxy's word.
        for bad in ["unknown", "[2001:db8::7]:port", "1.2.3.4:99999", "[::1"] {
            assert_eq!(t.client(ip("10.1.1.1"), [bad]), ip("10.1.1.1"), "{bad}");
        }
        assert!(TrustedProxies::parse(&["not-an-ip".into()]).is_err());
    }

    #[test]
    fn clients_are_keyed_per_ipv4_address_and_per_ipv6_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("198.51.100.7"), "198.51.100.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:198.51.100.7"), "198.51.100.7");
    }

    #[test]
    fn access_control_needs_a_long_secret_key() {
        let none = AuthConfig::default();
        assert!(none.validate(&Secrets::default()).is_ok());
        let required = AuthConfig {
            mode: AuthMode::Required,
            ..AuthConfig::default()
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
