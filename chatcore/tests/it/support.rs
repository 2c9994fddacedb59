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
    ChatModel, ChatRequest, Check, Completion, Decision, Error, ErrorKind, RateLimiter, Result,
    Role, SessionId,
};
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{Barrier, Notify};

/// Runs each listed `async fn name<S: Store + 'static>(store: S)` once per
/// storage backend: `memory::name` with a `MemoryStore`, `sqlite::name`
/// with a `SqliteStore` on a fresh temporary file and, with the `postgres`
/// feature, `postgres::name` with a `PostgresStore` on a fresh schema (see
/// [`pg::TestSchema`]). Each entry names the tokio flavor it runs on.
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
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = $flavor)]
                async fn $name() {
                    let Some(schema) = crate::support::pg::TestSchema::new() else {
                        return;
                    };
                    super::$name(schema.store().await).await;
                }
            )*
        }
    };
}

/// PostgreSQL for tests: a schema of their own per test on the server
/// named by `CHATGATE_TEST_POSTGRES_URL`, so tests run in parallel on one
/// database. Without the variable the tests pass, saying they skipped;
/// with it, a server out of reach fails them.
#[cfg(feature = "postgres")]
pub mod pg {
    use chatcore::{PostgresOptions, PostgresStore};

    /// The variable naming the test server.
    pub const URL_VAR: &str = "CHATGATE_TEST_POSTGRES_URL";

    /// A fresh schema name, dropped (with everything in it) when this goes.
    #[derive(Debug)]
    pub struct TestSchema {
        pub url: String,
        pub name: String,
    }

    impl TestSchema {
        /// A new schema name, or `None` (with a line on stderr) when no
        /// test server is configured. The schema itself is created by the
        /// first store connected to it.
        pub fn new() -> Option<TestSchema> {
            let Ok(url) = std::env::var(URL_VAR) else {
                crate::support::note_skip(&format!(
                    "skipped: {URL_VAR} not set (PostgreSQL storage tests)"
                ));
                return None;
            };
            Some(TestSchema {
                url,
                name: format!("t_{}", uuid::Uuid::new_v4().simple()),
            })
        }

        /// The options of a store on this schema.
        pub fn options(&self) -> PostgresOptions {
            PostgresOptions {
                url: self.url.clone(),
                schema: Some(self.name.clone()),
                pool_size: 4,
                ..PostgresOptions::default()
            }
        }

        /// A new store (a pool of its own) on this schema.
        pub async fn store(&self) -> PostgresStore {
            PostgresStore::connect(self.options())
                .await
                .unwrap_or_else(|e| panic!("connect to {URL_VAR}: {}", e.chain()))
        }

        /// A plain connection with this schema first on its search path,
        /// for what tests do behind the store's back.
        pub async fn raw(&self) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("SET search_path TO {}", self.name))
                .await
                .expect("set search_path");
            client
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            // On a thread and runtime of its own: the test's runtime may be
            // a current-thread one, blocked here, or already unwinding.
            let (url, name) = (self.url.clone(), self.name.clone());
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let (client, connection) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await
                })
            })
            .join();
            if let Ok(Err(e)) = dropped {
                eprintln!("could not drop test schema {}: {e}", self.name);
            }
        }
    }
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
            user: request.user_text().into_owned(),
        });
        let user = request.user_text().into_owned();
        if let Some(delay) = &self.delay {
            // A scripted model delay: the slowness is what the test sets
            // up (turns that overlap, a claim that must outlive its TTL).
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
            ..Completion::default()
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
    fn check(&self, _session: SessionId) -> Check<'_> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.checked.notify_one();
        Check::ready(Ok(Decision::Allowed { remaining: 1000 }))
    }

    fn limit(&self) -> u32 {
        1000
    }
}

/// How often [`wait_for`] and [`wait_until`] look again.
const POLL: Duration = Duration::from_millis(5);

/// Polls `check` every few milliseconds until it yields a value, and
/// returns that value; panics naming `what` once `limit` has passed. The
/// limit only guards against a hang (make it generous, so a slow machine
/// does not fail): it is never an assertion on speed.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        // The one poll interval of these tests: waits on a condition, not
        // a guess at how long something takes.
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` every few milliseconds until it holds, for at most
/// `limit` (see [`wait_for`]).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(limit, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
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

/// Says once per test binary, on the real stderr (libtest captures
/// `eprintln!` of passing tests), that a group of tests did not run.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub fn note_skip(what: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.iter().any(|s| s == what) {
        said.push(what.to_owned());
        let _ = writeln!(std::io::stderr(), "{what}");
    }
}

/// A fresh session created (and last active) at `created`.
pub fn session(created: DateTime<Utc>) -> chatcore::Session {
    chatcore::Session {
        owner: None,
        id: SessionId::new_v4(),
        created_at: created,
        last_active: created,
        system_prompt: None,
        metadata: None,
        target: None,
    }
}

/// A text turn's two messages: user message `u` at `secs`, reply `r` a
/// second later.
pub fn pair<'a>(u: &'a str, r: &'a str, secs: i64) -> [chatcore::MessageRef<'a>; 2] {
    let m = |role, content, at| chatcore::MessageRef {
        role,
        content,
        wire: None,
        created_at: at,
    };
    [
        m(Role::User, u, at(secs)),
        m(Role::Assistant, r, at(secs + 1)),
    ]
}

/// A text turn (see [`pair`]), for the statement it is written in.
macro_rules! turn {
    ($u:expr, $r:expr, $secs:expr) => {
        chatcore::Turn {
            messages: &$crate::support::pair($u, $r, $secs),
            usage: None,
            target: None,
            response: None,
        }
    };
}

/// A new session with default options, made as anyone: its id.
pub async fn new_session(core: &chatcore::ChatCore) -> SessionId {
    core.anyone()
        .initialize(chatcore::NewSession::default())
        .await
        .unwrap()
        .session
        .id
}

/// A certificate authority and a server certificate for 127.0.0.1 it
/// signed, made by `openssl` in `dir`: (ca.pem, server.pem, server.key).
pub fn certificates(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian's package) makes the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    [dir.join(ca), dir.join("server.pem"), dir.join("server.key")]
}
