//! `GET /metrics`: Prometheus (OpenMetrics text) for operators, built with
//! prometheus-client. Labels are route templates, methods, statuses,
//! models and fixed words, never ids, so series stay few whatever traffic
//! brings.
//!
//! Per-request metrics are recorded as requests end (for a stream, when
//! its body ends). Figures that other parts keep (each upstream's
//! outcomes, health and counts in the router, the SQLite writer's queue and commits,
//! dropped log records, cached sessions) are read when Prometheus scrapes,
//! so the request path pays nothing for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatcore::{ChatCore, Router, SqliteStore, UpstreamHealth, Usage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckpointLabels {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s: a gateway's overhead at the low end, a long
    // model reply at the high end.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// What is read at scrape time.
#[derive(Default)]
struct Sources {
    router: Option<Arc<Router>>,
    sqlite: Option<SqliteStore>,
    postgres: Option<chatcore::PostgresStore>,
    log_drops: Option<Arc<AtomicU64>>,
    redis: Option<chatcore::RedisLimiter>,
}

/// Every metric, and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    overhead: Family<RouteLabels, Histogram, fn() -> Histogram>,
    first_token: Histogram,
    upstream: Family<OutcomeLabels, Counter>,
    retries: Counter,
    fallbacks: Family<UpstreamLabels, Counter>,
    ejections: Family<UpstreamLabels, Counter>,
    upstream_cached: Family<UpstreamLabels, Counter>,
    answered: Family<UpstreamLabels, Counter>,
    answer_seconds: Family<UpstreamLabels, Counter<f64, AtomicU64>>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    rate_limited: Family<ScopeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    sessions_created: Counter,
    sessions_cached: Gauge,
    queue_depth: Gauge,
    commits: Counter,
    committed_jobs: Counter,
    checkpoints: Family<CheckpointLabels, Counter>,
    checkpoint_failures: Counter,
    log_dropped: Counter,
    limiter_unavailable: Counter,
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under `chatgate_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("chatgate");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            overhead: Family::new_with_constructor(latency_histogram),
            first_token: latency_histogram(),
            upstream: Family::default(),
            retries: Counter::default(),
            fallbacks: Family::default(),
            ejections: Family::default(),
            upstream_cached: Family::default(),
            answered: Family::default(),
            answer_seconds: Family::default(),
            upstream_up: Family::default(),
            rate_limited: Family::default(),
            tokens: Family::default(),
            sessions_created: Counter::default(),
            sessions_cached: Gauge::default(),
            queue_depth: Gauge::default(),
            commits: Counter::default(),
            committed_jobs: Counter::default(),
            checkpoints: Family::default(),
            checkpoint_failures: Counter::default(),
            limiter_unavailable: Counter::default(),
            log_dropped: Counter::default(),
            sources: Mutex::default(),
            registry: Registry::default(),
        };
        m.register_requests(&mut registry);
        m.register_upstreams(&mut registry);
        m.register_state(&mut registry);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running build", build);
        Metrics { registry, ..m }
    }

    /// Requests: counts, durations, the gateway's overhead, time to first token.
    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "HTTP requests answered, by route template, method and status",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last byte)",
            self.duration.clone(),
        );
        registry.register(
            "gateway_overhead_seconds",
            "A chat request's time not spent waiting on the model (total minus upstream)",
            self.overhead.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Streamed turns: time from the turn's start to its first piece of reply",
            self.first_token.clone(),
        );
    }

    /// The upstreams: calls, retries, fallbacks, ejections, cached tokens, answers, state.
    fn register_upstreams(&self, registry: &mut Registry) {
        registry.register(
            "upstream_calls",
            "Model call attempts by upstream and outcome (ok, busy, failed, timeout, rejected: the upstream refused the request itself)",
            self.upstream.clone(),
        );
        registry.register(
            "upstream_retries",
            "Passes over a route's upstreams after every one failed",
            self.retries.clone(),
        );
        registry.register(
            "upstream_fallbacks",
            "Calls an upstream answered after another candidate failed (or was out), by upstream",
            self.fallbacks.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Times an upstream was ejected after consecutive failures",
            self.ejections.clone(),
        );
        registry.register(
            "upstream_cached_tokens",
            "Prompt tokens an upstream served from its prompt cache (whole replies and streams)",
            self.upstream_cached.clone(),
        );
        registry.register(
            "upstream_answered",
            "Calls an upstream answered",
            self.answered.clone(),
        );
        registry.register(
            "upstream_answer_seconds",
            "Time the calls an upstream answered took, summed (divide by upstream_answered for the mean)",
            self.answer_seconds.clone(),
        );
        registry.register(
            "upstream_up",
            "1 while an upstream takes traffic (healthy, resting after a Retry-After, or on its trial), 0 while it is ejected",
            self.upstream_up.clone(),
        );
    }

    /// Quotas, tokens, sessions, storage, logging and the rate limiter's Redis.
    fn register_state(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Requests refused by a quota, by scope (session, principal, address, sessions_per_hour, feedback_per_hour)",
            self.rate_limited.clone(),
        );
        registry.register(
            "tokens",
            "Tokens the model reported, by model and kind (prompt, completion, and cached: the prompt tokens a provider served from its prompt cache)",
            self.tokens.clone(),
        );
        registry.register(
            "sessions_created",
            "Sessions created",
            self.sessions_created.clone(),
        );
        registry.register(
            "sessions_cached",
            "Sessions held in the hot-session cache",
            self.sessions_cached.clone(),
        );
        registry.register(
            "storage_queue_depth",
            "Storage calls waiting: SQLite writer jobs not yet answered, or calls waiting for a PostgreSQL connection",
            self.queue_depth.clone(),
        );
        registry.register(
            "storage_commits",
            "SQLite transactions committed (group commit)",
            self.commits.clone(),
        );
        registry.register(
            "storage_committed_jobs",
            "Jobs in the committed transactions (divide by storage_commits for the batch size)",
            self.committed_jobs.clone(),
        );
        registry.register(
            "storage_checkpoints",
            "SQLite WAL checkpoints: passes of the background thread (by=background), and the short ones the writer runs to finish them (by=writer)",
            self.checkpoints.clone(),
        );
        registry.register(
            "storage_checkpoint_failures",
            "SQLite WAL checkpoints that failed (each is also logged as a warning)",
            self.checkpoint_failures.clone(),
        );
        registry.register(
            "log_records_dropped",
            "Log records lost (queue full, write errors), per output",
            self.log_dropped.clone(),
        );
        registry.register(
            "rate_limit_unavailable",
            "Rate-limit checks that found Redis out of reach (refused or let through, as rate_limit.on_unavailable says; a turn's quotas are one check)",
            self.limiter_unavailable.clone(),
        );
    }

    /// Reads the router's per-upstream states and counts at each scrape.
    pub fn watch_router(&self, router: Arc<Router>) {
        self.lock().router = Some(router);
    }

    /// Reads the SQLite writer's state at each scrape.
    pub fn watch_sqlite(&self, store: SqliteStore) {
        self.lock().sqlite = Some(store);
    }

    /// Reads the PostgreSQL pool's waiting calls (as the storage queue
    /// depth) at each scrape.
    pub fn watch_postgres(&self, store: chatcore::PostgresStore) {
        self.lock().postgres = Some(store);
    }

    /// Reads the logger's dropped-record count at each scrape.
    pub fn watch_log_drops(&self, drops: Arc<AtomicU64>) {
        self.lock().log_drops = Some(drops);
    }

    /// Reads the Redis limiter's count of checks that found it out of
    /// reach at each scrape.
    pub fn watch_redis(&self, limiter: chatcore::RedisLimiter) {
        self.lock().redis = Some(limiter);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request; `upstream` is the time its model call took,
    /// when it made one (whole chat turns); `limited` the quota that
    /// refused it, if one did.
    pub fn request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
        limited: Option<&'static str>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        let labels = RouteLabels { route };
        self.duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
        if let Some(up) = upstream {
            self.overhead
                .get_or_create(&labels)
                .observe(total.saturating_sub(up).as_secs_f64());
        }
        if let Some(scope) = limited {
            self.rate_limited
                .get_or_create(&ScopeLabels { scope })
                .inc();
        }
    }

    /// A streamed turn's first piece, `elapsed` after it started.
    pub fn first_token(&self, elapsed: Duration) {
        self.first_token.observe(elapsed.as_secs_f64());
    }

    /// Tokens a reply cost.
    pub fn tokens(&self, model: &str, usage: Option<Usage>) {
        let Some(u) = usage else { return };
        for (kind, n) in [
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
            ("cached", u.cached_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: model.to_owned(),
                    kind,
                })
                .inc_by(u64::from(n));
        }
    }

    /// A session created.
    pub fn session_created(&self) {
        self.sessions_created.inc();
    }

    /// The text exposition, with the scrape-time figures read now.
    pub fn render(&self, core: &ChatCore) -> String {
        {
            let sources = self.lock();
            if let Some(router) = &sources.router {
                self.read_router(router);
            }
            if let Some(store) = &sources.sqlite {
                let s = store.stats();
                self.queue_depth
                    .set(i64::try_from(s.queue_depth).unwrap_or(i64::MAX));
                catch_up(&self.commits, s.commits);
                catch_up(&self.committed_jobs, s.jobs);
                for (by, n) in [
                    ("background", s.checkpoint_passes),
                    ("writer", s.checkpoint_tails),
                ] {
                    catch_up(&self.checkpoints.get_or_create(&CheckpointLabels { by }), n);
                }
                catch_up(&self.checkpoint_failures, s.checkpoint_failures);
            }
            if let Some(redis) = &sources.redis {
                catch_up(&self.limiter_unavailable, redis.unavailable_count());
            }
            if let Some(store) = &sources.postgres {
                let waiting = store.pool_status().waiting;
                self.queue_depth
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
            if let Some(drops) = &sources.log_drops {
                catch_up(&self.log_dropped, drops.load(Ordering::Relaxed));
            }
            self.sessions_cached
                .set(i64::try_from(core.cached_sessions()).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Metrics {
    fn read_router(&self, router: &Router) {
        for s in router.status() {
            let up = |name: &str| UpstreamLabels {
                upstream: name.to_owned(),
            };
            let labels = up(&s.name);
            let st = &s.stats;
            for (outcome, n) in [
                ("ok", &st.ok),
                ("busy", &st.busy),
                ("rejected", &st.rejected),
                ("failed", &st.failed),
                ("timeout", &st.timeout),
            ] {
                catch_up(
                    &self.upstream.get_or_create(&OutcomeLabels {
                        upstream: s.name.clone(),
                        outcome,
                    }),
                    n.load(Ordering::Relaxed),
                );
            }
            catch_up(&self.fallbacks.get_or_create(&labels), s.fallbacks);
            catch_up(&self.ejections.get_or_create(&labels), s.ejections);
            catch_up(
                &self.upstream_cached.get_or_create(&labels),
                s.cached_tokens,
            );
            catch_up(&self.answered.get_or_create(&labels), s.answered);
            let seconds = self.answer_seconds.get_or_create(&labels);
            let total = s.latency.as_secs_f64();
            if total > seconds.get() {
                seconds.inc_by(total - seconds.get());
            }
            let taking = !matches!(s.health, UpstreamHealth::Ejected { .. });
            self.upstream_up
                .get_or_create(&labels)
                .set(i64::from(taking));
        }
        catch_up(&self.retries, router.retries());
    }
}

/// Moves `counter` up to `total`, a count kept elsewhere (scrapes are
/// serialized by the sources lock, so two never race).
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
