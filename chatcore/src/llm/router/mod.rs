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

use async_trait::async_trait;
use tokio::time::Instant;

use super::openai::Attempt;
use super::{ChatModel, ChatRequest, Completion, CompletionStream, OpenAiChat, OpenAiConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::types::SessionId;

mod health;

pub use health::UpstreamHealth;
use health::{millis, Admit, Health, Rules};

/// One upstream a [`Router`] may call: a name and the adapter's settings
/// (its base URL, key, headers, timeout). Its `model` setting is unused:
/// each target names the model.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The name routes refer to it by.
    pub name: String,
    /// How to reach it.
    pub openai: OpenAiConfig,
}

/// An upstream and the model name it knows, with a weight among a route's
/// targets (ignored for fallbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// The upstream's name.
    pub upstream: String,
    /// The model name sent to it.
    pub model: String,
    /// Its share of a route's calls, relative to the other targets'.
    pub weight: u32,
}

/// A model name clients use, and where its calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The name clients send.
    pub name: String,
    /// Chosen among by weight.
    pub targets: Vec<TargetConfig>,
    /// Tried in order once every target has failed.
    pub fallbacks: Vec<TargetConfig>,
}

/// A [`Router`]'s settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The upstreams.
    pub upstreams: Vec<UpstreamConfig>,
    /// The model names clients may use.
    pub routes: Vec<RouteConfig>,
    /// The route a request that names no model takes.
    pub default_route: String,
    /// The one deadline of a call, every target and retry included.
    pub timeout: Duration,
    /// The first wait between passes; each doubles it (before jitter).
    pub backoff: Duration,
    /// Consecutive failures that eject an upstream.
    pub upstream_failures: u32,
    /// The first cool-down of an ejected upstream.
    pub cooldown: Duration,
    /// The longest cool-down (it doubles while the trials fail).
    pub max_cooldown: Duration,
    /// Keep a session on the target that answered its last turn.
    pub affinity: bool,
    /// Send `prompt_cache_key` (derived from the session) with a
    /// session's requests.
    pub prompt_cache_key: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            upstreams: Vec::new(),
            routes: Vec::new(),
            default_route: String::new(),
            timeout: Duration::from_secs(60),
            backoff: Duration::from_millis(200),
            upstream_failures: 5,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(300),
            affinity: true,
            prompt_cache_key: true,
        }
    }
}

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

/// One [`ChatModel`] over several upstreams (see the module docs).
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
    /// [`ErrorKind::InvalidInput`] for a route that names an unknown
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
    /// upstream behind `target` ([`Completion::target`]) for a streamed
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

    /// Tries the request's route's candidates until one answers, a
    /// failure is the request's own, or the deadline passes.
    async fn run(&self, request: ChatRequest<'_>, stream: bool) -> Result<(Outcome, &Target)> {
        let route = self.route(&request)?;
        let deadline = Instant::now() + self.config.timeout;
        let key = self.cache_key(request.session);
        let key = key.as_ref().map(CacheKey::as_str);
        let order = self.order(route, request.pinned);
        let first = order.get(0).map(|t| t.upstream);
        let mut last: Option<Error> = None;
        // Once every candidate failed, the call tries again (after a
        // backoff) those with retries left: each upstream's `max_retries`.
        let passes = order
            .iter()
            .map(|t| self.upstreams[t.upstream].adapter.config().max_retries)
            .max()
            .unwrap_or(0);
        for pass in 0..=passes {
            if pass > 0 {
                let wait = self.wait_before(pass, &order);
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            // No candidate takes calls: the ejected ones are tried anyway
            // (refusing every call helps no one); a rest is still honoured.
            let now = self.now();
            let force = order.iter().all(|t| {
                matches!(
                    self.upstreams[t.upstream].health.admit_peek(now),
                    Admit::No { .. }
                )
            });
            for target in order.iter() {
                let up = &self.upstreams[target.upstream];
                if pass > up.adapter.config().max_retries {
                    continue;
                }
                let admitted = up.health.admit(self.now(), force);
                if matches!(admitted, Admit::No { .. }) {
                    continue;
                }
                // A trial whose caller goes away before its verdict must
                // not keep the upstream out for good.
                let trial = TrialGuard {
                    health: (admitted == Admit::Trial).then_some(&up.health),
                };
                let started = Instant::now();
                // The call's deadline cuts this attempt shorter than the
                // upstream's own timeout: a timeout then is the call's, not
                // the upstream's fault.
                let cut_short = deadline < started + up.adapter.config().timeout;
                let attempt = Attempt {
                    model: &target.model,
                    cache_key: key,
                    deadline,
                };
                let out = if stream {
                    up.adapter
                        .stream_attempt(request, attempt)
                        .await
                        .map(Outcome::Stream)
                } else {
                    up.adapter
                        .complete_attempt(request, attempt)
                        .await
                        .map(Outcome::Whole)
                };
                trial.settled();
                match out {
                    Ok(out) => {
                        up.health.success(admitted, &self.rules);
                        let c = &up.counters;
                        c.answered.fetch_add(1, Ordering::Relaxed);
                        c.latency_us.fetch_add(
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        if let Outcome::Whole(Completion {
                            usage: Some(usage), ..
                        }) = &out
                        {
                            c.cached_tokens
                                .fetch_add(u64::from(usage.cached_tokens), Ordering::Relaxed);
                        }
                        if first != Some(target.upstream) || pass > 0 {
                            c.fallbacks.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok((out, target));
                    }
                    Err(e) if !switches(&e) => {
                        let ejected = if e.kind() == ErrorKind::UpstreamRejected {
                            // The upstream is up: it judged the request.
                            up.health.success(admitted, &self.rules);
                            false
                        } else {
                            up.health.failure(self.now(), admitted, &self.rules)
                        };
                        self.log_failure(up, &target.model, &e, ejected);
                        return Err(e);
                    }
                    Err(e) => {
                        let now = self.now();
                        if let Some(wait) = e.retry_after() {
                            up.health.rest(now.saturating_add(millis(wait)));
                        }
                        let ejected = if cut_short && e.kind() == ErrorKind::UpstreamTimeout {
                            if admitted == Admit::Trial {
                                up.health.abandon_trial();
                            }
                            false
                        } else {
                            up.health.failure(now, admitted, &self.rules)
                        };
                        self.log_failure(up, &target.model, &e, ejected);
                        last = Some(e);
                        if Instant::now() >= deadline {
                            return Err(last.unwrap_or_else(timed_out));
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(
                ErrorKind::UpstreamBusy,
                "No upstream can take the request now",
            )
        }))
    }

    /// The wait before pass `pass`: the backoff, or, when every
    /// candidate is resting after a `Retry-After`, until the first is
    /// back, whichever is longer.
    fn wait_before(&self, pass: u32, order: &Candidates<'_>) -> Duration {
        let ceiling = self
            .config
            .backoff
            .saturating_mul(1u32 << (pass - 1).min(16));
        let backoff = ceiling.mul_f64(0.5 + fastrand::f64() * 0.5);
        let now = self.now();
        let mut back = Some(u64::MAX);
        for t in order.iter() {
            back = match (back, self.upstreams[t.upstream].health.admit_peek(now)) {
                (
                    Some(b),
                    Admit::No {
                        until,
                        ejected: false,
                    },
                ) => Some(b.min(until)),
                _ => None,
            };
        }
        match back {
            // Spread over a little more than the rest, so the calls that
            // waited do not all come back at the same instant.
            Some(until) if until != u64::MAX => {
                let rest = Duration::from_millis(until.saturating_sub(now));
                backoff.max(rest + rest.mul_f64(fastrand::f64() * 0.1))
            }
            _ => backoff,
        }
    }

    /// Logs a failed attempt: the call moves on (or gives up), and the
    /// operator sees which upstream failed and how. A refusal of the
    /// request itself is the client's: info, not a warning.
    fn log_failure(&self, up: &Upstream, model: &str, e: &Error, ejected: bool) {
        if let Some(log) = &self.log {
            if e.kind() == ErrorKind::UpstreamRejected {
                slog::info!(log, "upstream refused the request";
                    "upstream" => &*up.name, "model" => model, "error" => e.chain());
            } else if ejected {
                slog::warn!(log, "upstream ejected";
                    "upstream" => &*up.name, "model" => model, "error" => e.chain(),
                    "failures" => up.health.failures());
            } else {
                slog::warn!(log, "upstream failed";
                    "upstream" => &*up.name, "model" => model, "error" => e.chain());
            }
        }
    }
}

/// Holds an upstream's trial while its call runs; dropped before the call
/// settled (its caller went away), it hands the trial to the next call.
struct TrialGuard<'a> {
    health: Option<&'a Health>,
}

impl TrialGuard<'_> {
    /// The call came back: success or failure decides the trial.
    fn settled(mut self) {
        self.health = None;
    }
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.health {
            h.abandon_trial();
        }
    }
}

/// What a call came back with.
enum Outcome {
    Whole(Completion),
    Stream(CompletionStream),
}

/// Whether a failure moves the call to the next candidate: a connection
/// error, a timeout before the first byte, 429 or 5xx. Not a request the
/// upstream judged itself, nor a reply that came and was wrong (bad JSON,
/// the gateway's own key refused): trying elsewhere would not mend those.
fn switches(e: &Error) -> bool {
    e.is_transient()
}

fn timed_out() -> Error {
    Error::new(ErrorKind::UpstreamTimeout, "Upstream timed out")
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

#[async_trait]
impl ChatModel for Router {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion> {
        match self.run(request, false).await? {
            (Outcome::Whole(mut c), target) => {
                c.target = Some(Arc::clone(&target.key));
                Ok(c)
            }
            (Outcome::Stream(s), target) => {
                let mut c = s.collect().await?;
                c.target = Some(Arc::clone(&target.key));
                Ok(c)
            }
        }
    }

    async fn stream(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        match self.run(request, true).await? {
            (Outcome::Stream(s), target) => Ok(s.with_target(Some(Arc::clone(&target.key)))),
            (Outcome::Whole(c), target) => {
                let target = Some(Arc::clone(&target.key));
                Ok(CompletionStream::from_completion(c).with_target(target))
            }
        }
    }
}
