//! The rate limiters, through the trait a chat turn uses: the in-process
//! governor limiter always, and `RedisLimiter` against a real Redis when
//! `CHATGATE_TEST_REDIS_URL` is set (each test under its own key prefix).
//! Outages are made with a relay the test cuts and restores
//! (`chatmock::TcpProxy`), never by stopping the shared Redis.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chatcore::{Decision, GovernorLimiter, Joint, RateLimiter, SessionId};

/// 20 parallel checks of one fresh key with a quota of 5, spread over
/// `limiters` (one per gateway): exactly 5 pass.
async fn exactly_five_of_twenty(limiters: Vec<Arc<dyn RateLimiter>>) {
    let key = SessionId::new_v4();
    let checks: Vec<_> = (0..20)
        .map(|i| {
            let l = Arc::clone(&limiters[i % limiters.len()]);
            tokio::spawn(async move { l.check(key).await })
        })
        .collect();
    let mut passed = 0;
    for c in checks {
        match c.await.expect("check task") {
            Ok(Decision::Allowed { .. }) => passed += 1,
            Ok(Decision::Limited { retry_after }) => {
                assert!(retry_after > Duration::ZERO, "{retry_after:?}");
            }
            Err(e) => panic!("a check failed: {e}"),
        }
    }
    assert_eq!(passed, 5);
}

/// A burst of 5, counting down, then a wait of about 12 s (a minute over
/// 5), and another key untouched.
async fn burst_then_limited(l: &dyn RateLimiter) {
    let s = SessionId::new_v4();
    for expected in (0..5).rev() {
        assert_eq!(
            l.check(s).await.expect("check"),
            Decision::Allowed {
                remaining: expected
            }
        );
    }
    match l.check(s).await.expect("check") {
        Decision::Limited { retry_after } => {
            assert!(retry_after > Duration::from_secs(10), "{retry_after:?}");
            assert!(retry_after <= Duration::from_secs(12), "{retry_after:?}");
        }
        other => panic!("expected limited, got {other:?}"),
    }
    assert!(matches!(
        l.check(SessionId::new_v4()).await,
        Ok(Decision::Allowed { remaining: 4 })
    ));
}

fn five() -> NonZeroU32 {
    NonZeroU32::new(5).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governor_is_exact_under_concurrency() {
    exactly_five_of_twenty(vec![Arc::new(GovernorLimiter::new(five()))]).await;
}

#[tokio::test]
async fn governor_bursts_then_limits() {
    burst_then_limited(&GovernorLimiter::new(five())).await;
}

/// A payer's quota of 2 and a session quota of 1, checked together
/// (`check_both`): the second message of session A is refused by the
/// session's quota. `spends_on_refusal` says whether that refusal took
/// the payer's token (the provided two-step check does; a limiter that
/// decides both at once does not), which the third and fourth messages
/// (sessions B and C) show.
async fn payer_and_session(
    payer: &dyn RateLimiter,
    session: &dyn RateLimiter,
    spends_on_refusal: bool,
) {
    let who = SessionId::new_v4();
    let (a, b, c) = (
        SessionId::new_v4(),
        SessionId::new_v4(),
        SessionId::new_v4(),
    );
    let both = |s| session.check_both(s, payer, who);
    assert_eq!(both(a).await.unwrap(), Joint::Allowed { remaining: 0 });
    assert!(matches!(both(a).await.unwrap(), Joint::Limited { .. }));
    let third = both(b).await.unwrap();
    if spends_on_refusal {
        assert!(matches!(third, Joint::AlsoLimited { .. }), "{third:?}");
        return;
    }
    assert_eq!(third, Joint::Allowed { remaining: 0 });
    // The payer's quota is spent now: it refuses, and session C keeps its
    // token.
    let fourth = both(c).await.unwrap();
    match fourth {
        Joint::AlsoLimited { retry_after } => {
            assert!(retry_after > Duration::from_secs(20), "{retry_after:?}");
        }
        other => panic!("expected the payer's refusal, got {other:?}"),
    }
    assert_eq!(
        session.check(c).await.unwrap(),
        Decision::Allowed { remaining: 0 }
    );
}

#[tokio::test]
async fn governor_checks_the_payer_then_the_session() {
    let payer = GovernorLimiter::new(NonZeroU32::new(2).unwrap());
    let session = GovernorLimiter::new(NonZeroU32::new(1).unwrap());
    payer_and_session(&payer, &session, true).await;
}

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use crate::support::{wait_for, wait_until};
    use chatcore::{ErrorKind, OnUnavailable, RedisLimiter, RedisLimiterConfig};
    use chatmock::TcpProxy;

    /// The test Redis, or `None` (with a note) when the variable is unset.
    fn redis_url() -> Option<String> {
        match std::env::var("CHATGATE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                crate::support::note_skip(
                    "skipped: CHATGATE_TEST_REDIS_URL not set (Redis limiter tests)",
                );
                None
            }
        }
    }

    fn config(prefix: &str, limit: u32, policy: OnUnavailable) -> RedisLimiterConfig {
        RedisLimiterConfig {
            prefix: prefix.to_owned(),
            limit: NonZeroU32::new(limit).unwrap(),
            period: Duration::from_secs(60),
            // Generous: a loaded machine may answer slowly; the outages
            // here are cuts, refused at once, not stalls.
            timeout: Duration::from_secs(10),
            on_unavailable: policy,
        }
    }

    /// A key prefix no other test (or run) uses.
    fn prefix() -> String {
        format!("chatgate-test:{}:", SessionId::new_v4())
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("CHATGATE_TEST_REDIS_URL is set but Redis cannot be reached")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_is_exact_under_concurrency_across_gateways() {
        let Some(url) = redis_url() else { return };
        let p = prefix();
        // Three limiters with their own connections: three gateways.
        let limiters: Vec<Arc<dyn RateLimiter>> = (0..3)
            .map(|_| {
                Arc::new(RedisLimiter::connect(&url, config(&p, 5, OnUnavailable::Deny)).unwrap())
                    as Arc<dyn RateLimiter>
            })
            .collect();
        exactly_five_of_twenty(limiters).await;
    }

    #[tokio::test]
    async fn one_script_decides_payer_and_session_and_a_refusal_spends_neither() {
        let Some(url) = redis_url() else { return };
        let p = prefix();
        let session =
            RedisLimiter::connect(&url, config(&format!("{p}msg:"), 1, OnUnavailable::Deny))
                .unwrap();
        let payer = session.sibling(config(&format!("{p}principal:"), 2, OnUnavailable::Deny));
        payer_and_session(&payer, &session, false).await;
        // A quota on another connection is checked in two steps.
        let other =
            RedisLimiter::connect(&url, config(&format!("{p}other:"), 2, OnUnavailable::Deny))
                .unwrap();
        payer_and_session(&other, &session, true).await;
    }

    #[tokio::test]
    async fn redis_bursts_then_limits() {
        let Some(url) = redis_url() else { return };
        let l = RedisLimiter::connect(&url, config(&prefix(), 5, OnUnavailable::Deny)).unwrap();
        burst_then_limited(&l).await;
        assert_eq!(l.unavailable_count(), 0);
        l.ping().await.expect("ping");
        assert_eq!(l.backend(), "redis");
    }

    #[tokio::test]
    async fn keys_expire_once_back_at_full_quota() {
        let Some(url) = redis_url() else { return };
        let p = prefix();
        let l = RedisLimiter::connect(&url, config(&p, 5, OnUnavailable::Deny)).unwrap();
        let s = SessionId::new_v4();
        let mut conn = raw(&url).await;
        let started = std::time::Instant::now();
        l.check(s).await.unwrap();
        l.check(s).await.unwrap();
        let key = format!("{p}{s}");
        // Two messages of 12 s each: back at full quota 24 s after the
        // first, when the key goes (less the time since, however long a
        // loaded machine took).
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let since = i64::try_from(started.elapsed().as_millis()).unwrap();
        assert!(
            (24_000 - since - 50..=24_000).contains(&ttl),
            "{ttl} ms, {since} ms after the first check"
        );
        // 60,000 a minute: a key is back at full quota within a millisecond.
        let fast = RedisLimiter::connect(&url, config(&p, 60_000, OnUnavailable::Deny)).unwrap();
        let t = SessionId::new_v4();
        fast.check(t).await.unwrap();
        let key = format!("{p}{t}");
        // Set to go within a millisecond (or gone already: -2); never
        // without a TTL (-1).
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl == -2 || (0..=1).contains(&ttl), "{ttl}");
        // And Redis does let it go.
        wait_until(Duration::from_secs(10), "the idle key to expire", || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                exists == 0
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_flushed_script_is_loaded_again() {
        let Some(url) = redis_url() else { return };
        let l = RedisLimiter::connect(&url, config(&prefix(), 5, OnUnavailable::Deny)).unwrap();
        let s = SessionId::new_v4();
        assert!(matches!(
            l.check(s).await,
            Ok(Decision::Allowed { remaining: 4 })
        ));
        let mut conn = raw(&url).await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(matches!(
            l.check(s).await,
            Ok(Decision::Allowed { remaining: 3 })
        ));
    }

    /// A port nothing listens on: bound, then closed.
    async fn dead_url() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("redis://{addr}")
    }

    #[tokio::test]
    async fn unreachable_redis_refuses_by_default_and_counts() {
        let l =
            RedisLimiter::connect(&dead_url().await, config("x:", 5, OnUnavailable::Deny)).unwrap();
        let e = l.check(SessionId::new_v4()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimiterUnavailable);
        assert_eq!(e.to_string(), "Rate limiter unavailable");
        assert_eq!(l.unavailable_count(), 1);
        assert_eq!(
            l.ping().await.unwrap_err().kind(),
            ErrorKind::LimiterUnavailable
        );
    }

    /// A turn's two quotas in one script while Redis is down: one outage
    /// event, decided by the policy they share.
    #[tokio::test]
    async fn unreachable_redis_decides_both_quotas_once_by_their_policy() {
        let url = dead_url().await;
        for (policy, allowed) in [(OnUnavailable::Deny, false), (OnUnavailable::Allow, true)] {
            let session = RedisLimiter::connect(&url, config("s:", 5, policy)).unwrap();
            let payer = session.sibling(config("p:", 7, policy));
            let both = session.check_both(SessionId::new_v4(), &payer, SessionId::new_v4());
            match both.await {
                Ok(joint) => {
                    assert!(allowed, "{policy:?}");
                    assert_eq!(joint, Joint::Allowed { remaining: 4 });
                }
                Err(e) => {
                    assert!(!allowed, "{policy:?}: {e}");
                    assert_eq!(e.kind(), ErrorKind::LimiterUnavailable);
                }
            }
            assert_eq!(session.unavailable_count(), 1, "{policy:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_redis_lets_through_when_told_to_and_counts() {
        let l = RedisLimiter::connect(&dead_url().await, config("x:", 5, OnUnavailable::Allow))
            .unwrap();
        for _ in 0..3 {
            assert!(matches!(
                l.check(SessionId::new_v4()).await,
                Ok(Decision::Allowed { .. })
            ));
        }
        assert_eq!(l.unavailable_count(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_without_a_restart_when_redis_returns() {
        let Some(url) = redis_url() else { return };
        let target: std::net::SocketAddr = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .expect("CHATGATE_TEST_REDIS_URL as redis://IP:PORT");
        let proxy = TcpProxy::start(target).await;
        let l = RedisLimiter::connect(
            &format!("redis://{}", proxy.addr()),
            config(&prefix(), 5, OnUnavailable::Deny),
        )
        .unwrap();
        let s = SessionId::new_v4();
        assert!(matches!(
            l.check(s).await,
            Ok(Decision::Allowed { remaining: 4 })
        ));
        proxy.cut();
        let e = l.check(s).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimiterUnavailable);
        proxy.restore();
        // It reconnects on its own; the quota kept in Redis is intact.
        let answer = wait_for(
            Duration::from_secs(20),
            "the limiter to reach Redis again",
            || async { l.check(s).await.ok() },
        )
        .await;
        assert!(
            matches!(answer, Decision::Allowed { remaining: 3 }),
            "{answer:?}"
        );
    }

    /// A Redis server of the test's own, serving TLS only, killed on drop.
    struct TlsRedis {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn tls_redis(
        dir: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> TlsRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .args(["--tls-auth-clients", "no"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the machine's) for the TLS test");
        let server = TlsRedis { child, port };
        wait_until(
            Duration::from_secs(10),
            "the TLS Redis to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        server
    }

    /// `rediss://` with a private CA: the limiter works over TLS against a
    /// server whose certificate that CA signed, and refuses (as Redis out
    /// of reach) one signed by another CA, or a plain connection's URL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_over_tls_with_a_private_ca() {
        if redis_url().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = crate::support::certificates(dir.path(), "good");
        let server = tls_redis(dir.path(), &cert, &key, &ca).await;
        let url = format!("rediss://127.0.0.1:{}", server.port);
        let ca_pem = std::fs::read(&ca).unwrap();
        let l = RedisLimiter::connect_with_ca(
            &url,
            Some(ca_pem),
            config(&prefix(), 5, OnUnavailable::Deny),
        )
        .unwrap();
        let s = SessionId::new_v4();
        let first = wait_for(Duration::from_secs(20), "a check over TLS", || async {
            l.check(s).await.ok()
        })
        .await;
        assert!(
            matches!(first, Decision::Allowed { remaining: 4 }),
            "{first:?}"
        );
        l.ping().await.expect("ping over TLS");

        // Another CA does not vouch for this server.
        let other = tempfile::tempdir().unwrap();
        let [wrong_ca, ..] = crate::support::certificates(other.path(), "other");
        let wrong = RedisLimiter::connect_with_ca(
            &url,
            Some(std::fs::read(&wrong_ca).unwrap()),
            config(&prefix(), 5, OnUnavailable::Deny),
        )
        .unwrap();
        let e = wrong.check(s).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimiterUnavailable, "{e}");
        // A CA file is for rediss:// only.
        let e = RedisLimiter::connect_with_ca(
            &format!("redis://127.0.0.1:{}", server.port),
            Some(Vec::new()),
            config(&prefix(), 5, OnUnavailable::Deny),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
}
