//! `GET /admin/upstreams`, for admins: each upstream's state (healthy,
//! resting after a `Retry-After`, ejected, on probation), its failures and
//! cool-down, and what it answered.

use std::sync::atomic::Ordering;

use chatcore::{UpstreamHealth, UpstreamStatus};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::Response;
use serde::Serialize;

use crate::body::{json, Body};
use crate::App;

#[derive(Serialize)]
struct UpstreamsOut {
    upstreams: Vec<UpstreamOut>,
    /// Models none of whose targets can take a call now.
    unavailable_models: Vec<String>,
}

#[derive(Serialize)]
struct UpstreamOut {
    name: String,
    /// `healthy`, `resting`, `ejected` or `probation`.
    state: &'static str,
    /// Until it takes traffic again (resting or ejected), in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_ms: Option<u64>,
    consecutive_failures: u32,
    ejections: u64,
    calls: Calls,
    answered: u64,
    fallbacks: u64,
    mean_latency_ms: Option<f64>,
    cached_tokens: u64,
}

/// Its calls by outcome.
#[derive(Serialize)]
struct Calls {
    ok: u64,
    busy: u64,
    failed: u64,
    timeout: u64,
    rejected: u64,
}

impl From<&UpstreamStatus> for UpstreamOut {
    fn from(s: &UpstreamStatus) -> Self {
        let (state, wait) = match s.health {
            UpstreamHealth::Healthy => ("healthy", None),
            UpstreamHealth::Resting { remaining } => ("resting", Some(remaining)),
            UpstreamHealth::Ejected { remaining } => ("ejected", Some(remaining)),
            UpstreamHealth::Probation => ("probation", None),
        };
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        UpstreamOut {
            name: s.name.clone(),
            state,
            retry_in_ms: wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            consecutive_failures: s.failures,
            ejections: s.ejections,
            calls: Calls {
                ok: n(&s.stats.ok),
                busy: n(&s.stats.busy),
                failed: n(&s.stats.failed),
                timeout: n(&s.stats.timeout),
                rejected: n(&s.stats.rejected),
            },
            answered: s.answered,
            fallbacks: s.fallbacks,
            mean_latency_ms: (s.answered > 0)
                .then(|| s.latency.as_secs_f64() * 1000.0 / s.answered as f64),
            cached_tokens: s.cached_tokens,
        }
    }
}

/// `GET /admin/upstreams` (the admin scope was checked by the router).
pub fn list(app: &App) -> Response<Body> {
    let out = UpstreamsOut {
        upstreams: app.router.status().iter().map(UpstreamOut::from).collect(),
        unavailable_models: app
            .router
            .unavailable_models()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut resp = json(&out);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    resp
}
