//! One call through a [`Router`]: its candidates tried in order, pass
//! after pass within the call's deadline, each attempt booked against its
//! upstream's health; and the router as a [`ChatModel`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::health::{millis, Admit, Health};
use super::{CacheKey, Candidates, Router, Target, Upstream};
use crate::error::{Error, ErrorKind, Result};
use crate::llm::openai::Attempt;
use crate::llm::{ChatModel, ChatRequest, Completion, CompletionStream};

impl Router {
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
                        let moved = first != Some(target.upstream) || pass > 0;
                        self.answered(up, admitted, started, &out, moved);
                        return Ok((out, target));
                    }
                    Err(e) => {
                        if !self.failed(up, &target.model, admitted, cut_short, &e) {
                            return Err(e);
                        }
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

    /// Books an answer: the upstream's health and counters.
    fn answered(
        &self,
        up: &Upstream,
        admitted: Admit,
        started: Instant,
        out: &Outcome,
        moved: bool,
    ) {
        up.health.success(admitted, &self.rules);
        let c = &up.counters;
        c.answered.fetch_add(1, Ordering::Relaxed);
        c.latency_us.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Outcome::Whole(Completion {
            usage: Some(usage), ..
        }) = out
        {
            c.cached_tokens
                .fetch_add(u64::from(usage.cached_tokens), Ordering::Relaxed);
        }
        if moved {
            c.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Books a failed attempt (health, rest, log) and says whether the call
    /// moves on: not when the failure is the request's own. An attempt the
    /// call's deadline cut short (`cut_short`) that timed out is not held
    /// against its upstream.
    fn failed(
        &self,
        up: &Upstream,
        model: &str,
        admitted: Admit,
        cut_short: bool,
        e: &Error,
    ) -> bool {
        if !switches(e) {
            let ejected = if e.kind() == ErrorKind::UpstreamRejected {
                // The upstream is up: it judged the request.
                up.health.success(admitted, &self.rules);
                false
            } else {
                up.health.failure(self.now(), admitted, &self.rules)
            };
            self.log_failure(up, model, e, ejected);
            return false;
        }
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
        self.log_failure(up, model, e, ejected);
        true
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
