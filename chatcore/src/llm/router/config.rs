//! What a [`Router`](super::Router) is built from: the upstreams, the
//! routes (a client's model name, its weighted targets and ordered
//! fallbacks) and the health rules.

use std::time::Duration;

use crate::llm::OpenAiConfig;

/// One upstream a [`Router`](super::Router) may call: a name and the adapter's settings
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

/// A [`Router`](super::Router)'s settings.
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
