//! Shared fakes and helpers: the per-backend test macro, a scripted model
//! that records what it was asked, a limiter that reports each check, and
//! fixed times.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatcore::{
    ChatModel, ChatRequest, Completion, Decision, Error, ErrorKind, RateLimiter, Result, Role,
    SessionId,
};
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{Barrier, Notify};

/// Runs each listed `async fn name<S: Store + 'static>(store: S)` once per
/// storage backend: `memory::name` with a `MemoryStore` and `sqlite::name`
/// with a `SqliteStore` on a fresh temporary file. Each entry names the
/// tokio flavor it runs on.
macro_rules! each_backend {
    ($($flavor:tt => $name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = $flavor)]
                async fn $name() {
                    super::$name(chatcore::MemoryStore::new()).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = $flavor)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = chatcore::SqliteStore::open(dir.path().join("chat.db"))
                        .expect("open sqlite store");
                    super::$name(store).await;
                    drop(dir);
                }
            )*
        }
    };
}

/// A fixed start time, on a whole second (SQLite keeps milliseconds).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 10, 10, 12, 0, 0).unwrap()
}

/// `t0()` plus `secs` seconds.
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

pub const MINUTE: Duration = Duration::from_secs(60);
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// What the scripted model was asked, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub system: Option<String>,
    pub history: Vec<(Role, String)>,
    pub user: String,
}

type DelayFn = Box<dyn Fn(&str) -> Duration + Send + Sync>;
type ReplyFn = Box<dyn Fn(&str) -> String + Send + Sync>;

/// A model that answers `reply to <user>` (or what `reply` makes of it),
/// records every request, and can be told to fail, wait or meet at a
/// barrier first.
#[derive(Default)]
pub struct ScriptedModel {
    seen: Mutex<Vec<Seen>>,
    failures: Mutex<VecDeque<ErrorKind>>,
    delay: Option<DelayFn>,
    reply: Option<ReplyFn>,
    barrier: Option<Arc<Barrier>>,
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl ScriptedModel {
    pub fn new() -> Self {
        ScriptedModel::default()
    }

    /// Waits `delay(user)` before answering.
    pub fn with_delay(mut self, delay: impl Fn(&str) -> Duration + Send + Sync + 'static) -> Self {
        self.delay = Some(Box::new(delay));
        self
    }

    /// Answers `reply(user)` instead of `reply to <user>`.
    pub fn with_reply(mut self, reply: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.reply = Some(Box::new(reply));
        self
    }

    /// Waits at `barrier` before answering.
    pub fn with_barrier(mut self, barrier: Arc<Barrier>) -> Self {
        self.barrier = Some(barrier);
        self
    }

    /// The next calls fail with these kinds, in order.
    pub fn fail_next(&self, kinds: &[ErrorKind]) {
        self.failures.lock().unwrap().extend(kinds);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn shared(self) -> Arc<ScriptedModel> {
        Arc::new(self)
    }
}

#[async_trait]
impl ChatModel for ScriptedModel {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion> {
        self.seen.lock().unwrap().push(Seen {
            system: request.system.map(str::to_owned),
            history: request
                .history
                .iter()
                .map(|m| (m.role, m.content.to_owned()))
                .collect(),
            user: request.user.to_owned(),
        });
        let user = request.user.to_owned();
        if let Some(delay) = &self.delay {
            tokio::time::sleep(delay(&user)).await;
        }
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        let failure = self.failures.lock().unwrap().pop_front();
        if let Some(kind) = failure {
            return Err(Error::new(kind, "scripted failure"));
        }
        let content = match &self.reply {
            Some(reply) => reply(&user),
            None => format!("reply to {user}"),
        };
        Ok(Completion {
            content,
            usage: None,
            finish_reason: None,
        })
    }
}

/// A limiter that lets everything through and signals every check, so a
/// test knows when a turn has passed the limiter (and, on a current-thread
/// runtime, has queued for its session before the test runs again).
#[derive(Debug, Default)]
pub struct SignallingLimiter {
    pub checks: AtomicUsize,
    pub checked: Notify,
}

impl RateLimiter for SignallingLimiter {
    fn check(&self, _session: SessionId) -> chatcore::Check<'_> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.checked.notify_one();
        chatcore::Check::ready(Ok(Decision::Allowed { remaining: 1000 }))
    }

    fn limit(&self) -> u32 {
        1000
    }
}

/// The `(role, content)` pairs of a history, for compact comparisons.
pub fn pairs(messages: &[chatcore::Message]) -> Vec<(Role, String)> {
    messages
        .iter()
        .map(|m| (m.role, m.content.clone()))
        .collect()
}

/// `(Role::User, text)` and friends, shorter.
pub fn user(text: &str) -> (Role, String) {
    (Role::User, text.to_owned())
}

pub fn assistant(text: &str) -> (Role, String) {
    (Role::Assistant, text.to_owned())
}
