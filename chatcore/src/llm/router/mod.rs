//! [`Router`]: one [`ChatModel`] over several upstreams. Each model name a
//! client may use is a route: weighted targets (an upstream and the model
//! name it knows) and ordered fallbacks. A call goes to a healthy target
//! chosen by weight; a connection error, a timeout before the first byte,
//! 429 or 5xx moves it to the next target, then to the fallbacks, all
//! inside one deadline. An upstream's `Retry-After` rests it until then;
//! consecutive failures eject it for a cool-down (`health.rs`). A request
//! the upstream refused as its own fault (400, 404, 413, 422) is never
//! tried elsewhere: it would be refused there too.
//!
//! A session stays on the target that answered its last turn while that
//! target's upstream is healthy ([`ChatRequest::pinned`]), and its
//! requests carry a `prompt_cache_key` derived from the session, so a
//! provider's prompt cache keeps serving its growing prompt. A stream is
//! handed over once its upstream has answered with its status (the first
//! byte): a failure before that moves the call on like any other, one
//! after it ends the stream, which never switches upstream midway.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ChatRequest, OpenAiChat, OpenAiConfig};
use crate::error::{Error, Result};
use crate::types::SessionId;

mod call;
mod config;
mod health;

pub use config::{RouteConfig, RouterConfig, TargetConfig, UpstreamConfig};
pub use health::UpstreamHealth;
use health::{millis, Health, Rules};

/// One upstream as the router keeps it.
struct Upstream {
    name: Arc<str>,
    adapter: OpenAiChat,
    health: Health,
    counters: Counters,
}

/// What a router counts per upstream, beside its adapter's outcomes.
#[derive(Debug, Default)]
struct Counters {
    /// Calls it answered that another candidate was to answer first.
    fallbacks: AtomicU64,
    /// Prompt tokens it served from its prompt cache.
    cached_tokens: AtomicU64,
    /// Answered calls, and their summed latency in microseconds.
    answered: AtomicU64,
    latency_us: AtomicU64,
}

/// A target as routed: the upstream's index, its model, its weight, and
/// the key a session is pinned by.
#[derive(Debug)]
struct Target {
    upstream: usize,
    model: String,
    weight: u32,
    key: Arc<str>,
}

#[derive(Debug)]
struct Route {
    targets: Vec<Target>,
    fallbacks: Vec<Target>,
    total_weight: u64,
}

/// One [`ChatModel`](crate::ChatModel) over several upstreams (see the module docs).
pub struct Router {
    upstreams: Vec<Upstream>,
    routes: HashMap<String, Route>,
    default_route: String,
    config: RouterConfig,
    rules: Rules,
    epoch: Instant,
    log: Option<slog::Logger>,
    /// Passes over a route's candidates after the first.
    retries: AtomicU64,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "upstreams",
                &self.upstreams.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("default_route", &self.default_route)
            .finish_non_exhaustive()
    }
}

/// An upstream's state and counts, for operators.
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Taking traffic, resting, ejected, or on probation.
    pub health: UpstreamHealth,
    /// Consecutive failures so far.
    pub failures: u32,
    /// Times it was ejected.
    pub ejections: u64,
    /// Calls it answered for another candidate.
    pub fallbacks: u64,
    /// Prompt tokens it served from its cache.
    pub cached_tokens: u64,
    /// Calls it answered, and their summed latency.
    pub answered: u64,
    /// Summed latency of the calls it answered.
    pub latency: Duration,
    /// Its adapter's outcome counts.
    pub stats: Arc<super::UpstreamStats>,
}

impl Router {
    /// A router with `config`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a route that names an unknown
    /// upstream, has no target, a zero weight, or when the default route
    /// is not a route; otherwise as [`OpenAiChat::new`].
    pub fn new(config: RouterConfig) -> Result<Router> {
        let rules = Rules {
            failures: config.upstream_failures.max(1),
            cooldown: config.cooldown,
            max_cooldown: config.max_cooldown.max(config.cooldown),
        };
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            // A target is keyed `upstream:model`, so a name holds no `:`.
            if u.name.is_empty() || u.name.contains(':') {
                return Err(Error::invalid(
                    "upstreams",
                    format!(
                        "an upstream name must be non-empty and hold no ':', got {:?}",
                        u.name
                    ),
                ));
            }
            upstreams.push(Upstream {
                name: Arc::from(u.name.as_str()),
                adapter: OpenAiChat::new(u.openai.clone())?,
                health: Health::new(&rules),
                counters: Counters::default(),
            });
        }
        let index = |name: &str| {
            upstreams
                .iter()
                .position(|u| &*u.name == name)
                .ok_or_else(|| {
                    Error::invalid(
                        "routes",
                        format!("a route names upstream {name:?}, which is not configured"),
                    )
                })
        };
        let mut routes = HashMap::with_capacity(config.routes.len());
        for r in &config.routes {
            if r.targets.len() + r.fallbacks.len() > MAX_CANDIDATES {
                return Err(Error::invalid(
                    "routes",
                    format!(
                        "model {:?} has more than {MAX_CANDIDATES} targets and fallbacks",
                        r.name
                    ),
                ));
            }
            if r.targets.is_empty() {
                return Err(Error::invalid(
                    "routes",
                    format!("model {:?} has no targets", r.name),
                ));
            }
            let target = |t: &TargetConfig| -> Result<Target> {
                Ok(Target {
                    upstream: index(&t.upstream)?,
                    model: t.model.clone(),
                    weight: t.weight,
                    key: Arc::from(format!("{}:{}", t.upstream, t.model)),
                })
            };
            let targets = r.targets.iter().map(target).collect::<Result<Vec<_>>>()?;
            if targets.iter().any(|t| t.weight == 0) {
                return Err(Error::invalid(
                    "routes",
                    format!("model {:?} has a target of weight 0", r.name),
                ));
            }
            let fallbacks = r.fallbacks.iter().map(target).collect::<Result<Vec<_>>>()?;
            let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
            routes.insert(
                r.name.clone(),
                Route {
                    targets,
                    fallbacks,
                    total_weight,
                },
            );
        }
        if !routes.contains_key(&config.default_route) {
            return Err(Error::invalid(
                "default_route",
                format!(
                    "the default model {:?} is not a route",
                    config.default_route
                ),
            ));
        }
        Ok(Router {
            upstreams,
            routes,
            default_route: config.default_route.clone(),
            config,
            rules,
            epoch: Instant::now(),
            log: None,
            retries: AtomicU64::new(0),
        })
    }

    /// A router over the one upstream `config` describes, with one route
    /// named like its model: what a gateway with a single upstream runs.
    ///
    /// # Errors
    /// As [`Router::new`].
    pub fn single(name: &str, config: OpenAiConfig) -> Result<Router> {
        let model = config.model.clone();
        Router::new(RouterConfig {
            timeout: config.timeout,
            backoff: config.backoff,
            routes: vec![RouteConfig {
                name: model.clone(),
                targets: vec![TargetConfig {
                    upstream: name.to_owned(),
                    model: model.clone(),
                    weight: 1,
                }],
                fallbacks: Vec::new(),
            }],
            default_route: model,
            upstreams: vec![UpstreamConfig {
                name: name.to_owned(),
                openai: config,
            }],
            ..RouterConfig::default()
        })
    }

    /// Reports retries and failovers to `log`.
    #[must_use]
    pub fn with_logger(mut self, log: slog::Logger) -> Self {
        self.log = Some(log.clone());
        self.upstreams = self
            .upstreams
            .into_iter()
            .map(|mut u| {
                u.adapter = u
                    .adapter
                    .with_logger(log.new(slog::o!("upstream" => u.name.to_string())));
                u
            })
            .collect();
        self
    }

    /// Counts `tokens` prompt tokens served from the prompt cache of the
    /// upstream behind `target` ([`Completion::target`](crate::Completion::target)) for a streamed
    /// call: a whole call's are counted here already, but a stream's usage
    /// arrives after the router has handed it over.
    pub fn count_cached(&self, target: &str, tokens: u32) {
        let up = self.upstreams.iter().find(|u| {
            target
                .strip_prefix(&*u.name)
                .is_some_and(|rest| rest.starts_with(':'))
        });
        if let Some(up) = up {
            up.counters
                .cached_tokens
                .fetch_add(u64::from(tokens), Ordering::Relaxed);
        }
    }

    /// Passes over a route's candidates after every one failed, so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The model names clients may use, sorted.
    pub fn models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether `name` is a model clients may use.
    pub fn has_model(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The route a request that names no model takes.
    pub fn default_model(&self) -> &str {
        &self.default_route
    }

    /// Each upstream's state and counts, in configuration order.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        let now = self.now();
        self.upstreams
            .iter()
            .map(|u| UpstreamStatus {
                name: u.name.to_string(),
                health: u.health.state(now),
                failures: u.health.failures(),
                ejections: u.health.ejections.load(Ordering::Relaxed),
                fallbacks: u.counters.fallbacks.load(Ordering::Relaxed),
                cached_tokens: u.counters.cached_tokens.load(Ordering::Relaxed),
                answered: u.counters.answered.load(Ordering::Relaxed),
                latency: Duration::from_micros(u.counters.latency_us.load(Ordering::Relaxed)),
                stats: u.adapter.stats(),
            })
            .collect()
    }

    /// Models none of whose targets can take a call now (every target's
    /// upstream ejected): what a readiness probe reports.
    pub fn unavailable_models(&self) -> Vec<&str> {
        let now = self.now();
        let mut out: Vec<&str> = self
            .routes
            .iter()
            .filter(|(_, r)| {
                r.targets.iter().chain(&r.fallbacks).all(|t| {
                    matches!(
                        self.upstreams[t.upstream].health.state(now),
                        UpstreamHealth::Ejected { .. }
                    )
                })
            })
            .map(|(name, _)| name.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// Milliseconds since the router was made: health's clock.
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn route(&self, request: &ChatRequest<'_>) -> Result<&Route> {
        let name = request
            .options
            .model
            .as_deref()
            .unwrap_or(&self.default_route);
        self.routes.get(name).ok_or_else(|| {
            Error::invalid(
                "model",
                format!("The model `{name}` does not exist or you do not have access to it."),
            )
        })
    }

    /// The order a call tries a route's candidates in: the session's
    /// pinned target first, then the targets from one drawn by weight
    /// (the rest in their order, wrapping round), then the fallbacks.
    fn order<'r>(&self, route: &'r Route, pinned: Option<&str>) -> Candidates<'r> {
        let mut out = Candidates::default();
        let n = route.targets.len();
        let start = if n == 1 {
            0
        } else {
            let mut draw = fastrand::u64(0..route.total_weight);
            route
                .targets
                .iter()
                .position(|t| {
                    let w = u64::from(t.weight);
                    if draw < w {
                        true
                    } else {
                        draw -= w;
                        false
                    }
                })
                .unwrap_or(0)
        };
        // A session stays on one of the model's targets; a fallback holds
        // it only for as long as it takes a target to be back.
        let pinned = pinned
            .filter(|_| self.config.affinity)
            .and_then(|p| route.targets.iter().find(|t| &*t.key == p));
        if let Some(t) = pinned {
            out.push(t);
        }
        for i in 0..n {
            out.push(&route.targets[(start + i) % n]);
        }
        for t in &route.fallbacks {
            out.push(t);
        }
        out
    }

    /// The `prompt_cache_key` of a session's requests: a digest of its id,
    /// so the provider can group them without learning the id.
    fn cache_key(&self, session: Option<SessionId>) -> Option<CacheKey> {
        let id = session.filter(|_| self.config.prompt_cache_key)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
        let mut key = CacheKey([0; 32]);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest.as_ref()[..16].iter().enumerate() {
            key.0[2 * i] = HEX[usize::from(b >> 4)];
            key.0[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        Some(key)
    }
}

/// The most candidates a call tries (targets and fallbacks of a route).
const MAX_CANDIDATES: usize = 16;

/// A route's candidates in the order a call tries them, on the stack.
#[derive(Default)]
struct Candidates<'r> {
    items: [Option<&'r Target>; MAX_CANDIDATES],
    len: usize,
}

impl<'r> Candidates<'r> {
    fn push(&mut self, t: &'r Target) {
        if self.len < MAX_CANDIDATES && !self.iter().any(|x| std::ptr::eq(x, t)) {
            self.items[self.len] = Some(t);
            self.len += 1;
        }
    }

    fn get(&self, i: usize) -> Option<&'r Target> {
        self.items.get(i).copied().flatten()
    }

    fn iter(&self) -> impl Iterator<Item = &'r Target> + '_ {
        self.items[..self.len].iter().filter_map(|t| *t)
    }
}

/// A `prompt_cache_key`: 32 hex digits.
struct CacheKey([u8; 32]);

impl CacheKey {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}
