//! The hot-session cache must never change what a turn sees or stores:
//! the same conversation with the cache on and off sends the model the same
//! history; a turn cancelled mid-flight leaves the next turn a history that
//! matches the store; a fresh facade on the same file picks up where the
//! old one stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatcore::{
    ApiKey, ChatCore, Feedback, FeedbackFilter, FeedbackStore, KeyStore, Message, MessageCursor,
    MessageStore, PurgeReport, ResponseStore, Result, Session, SessionCursor, SessionId,
    SessionStore, SqliteStore, Store, StoredResponse, Turn, Usage,
};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::support::{assistant, new_session, pairs, user, ScriptedModel};

fn core(store: Arc<dyn Store>, model: &Arc<ScriptedModel>, hot: usize) -> ChatCore {
    ChatCore::builder()
        .shared_store(store)
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
        .messages_per_minute(1000)
        .context_tokens(60)
        .hot_sessions(hot)
        .build()
        .unwrap()
}

async fn conversation(hot: usize) -> Vec<crate::support::Seen> {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("c.db")).unwrap());
    let model = ScriptedModel::new().shared();
    let core = core(store, &model, hot);
    let id = new_session(&core).await;
    for i in 0..12 {
        core.anyone()
            .chat(id, &format!("message number {i}"))
            .await
            .unwrap();
    }
    model.seen()
}

#[tokio::test]
async fn the_cache_on_or_off_sends_the_same_history() {
    let cached = conversation(10_000).await;
    let uncached = conversation(0).await;
    assert_eq!(cached.len(), 12);
    assert_eq!(cached, uncached);
    // context_tokens = 60 trims: the last turn does not see all 22 messages.
    let last = &cached.last().unwrap().history;
    assert!(!last.is_empty() && last.len() < 22, "{}", last.len());
}

#[tokio::test]
async fn a_cancelled_turn_leaves_a_consistent_history() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("c.db")).unwrap());
    let model = ScriptedModel::new()
        .with_delay(|user| {
            if user == "slow" {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            }
        })
        .shared();
    let core = core(store, &model, 10_000);
    let id = new_session(&core).await;
    core.anyone().chat(id, "first").await.unwrap();
    // The client goes away while the model is thinking: the turn is dropped.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), core.anyone().chat(id, "slow")).await;
    assert!(cancelled.is_err(), "the slow turn should have been cut off");
    core.anyone().chat(id, "third").await.unwrap();
    let stored = pairs(&core.anyone().messages(id).await.unwrap());
    let texts: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        ["first", "reply to first", "third", "reply to third"]
    );
    let last = model.seen().last().unwrap().history.clone();
    assert_eq!(
        last,
        stored[..2].to_vec(),
        "the model saw exactly what is stored"
    );
}

#[tokio::test]
async fn a_new_facade_on_the_same_file_continues_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let model = ScriptedModel::new().shared();
    let id = {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let core = core(store, &model, 10_000);
        let id = new_session(&core).await;
        core.anyone().chat(id, "before restart").await.unwrap();
        id
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let core = core(store, &model, 10_000);
    core.anyone().chat(id, "after restart").await.unwrap();
    let seen = model.seen().last().unwrap().history.clone();
    let texts: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["before restart", "reply to before restart"]);
}

/// Where a gated `append_turn` holds the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Before handing the turn to the inner store: nothing is written.
    BeforeStoring,
    /// After the inner store has committed the turn.
    AfterStoring,
}

/// A `SqliteStore` whose `append_turn` for one chosen user message stops
/// at a gate (before or after delegating) and signals `reached`; the test
/// drops the turn there. Every other call goes straight through.
#[derive(Debug)]
struct GatedStore {
    inner: SqliteStore,
    gated: &'static str,
    gate: Gate,
    reached: Notify,
    release: Notify,
    delegated: AtomicBool,
}

impl GatedStore {
    fn open(path: &std::path::Path, gated: &'static str, gate: Gate) -> GatedStore {
        GatedStore {
            inner: SqliteStore::open(path).unwrap(),
            gated,
            gate,
            reached: Notify::new(),
            release: Notify::new(),
            delegated: AtomicBool::new(false),
        }
    }

    async fn hold(&self, here: Gate) {
        if self.gate == here {
            self.reached.notify_one();
            self.release.notified().await;
        }
    }
}

#[async_trait]
impl SessionStore for GatedStore {
    async fn insert_session(&self, session: &Session) -> Result<()> {
        self.inner.insert_session(session).await
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        self.inner.get_session(id).await
    }

    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        self.inner.purge_inactive_before(cutoff).await
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        self.inner.delete_session(id).await
    }

    async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<&serde_json::Value>,
    ) -> Result<bool> {
        self.inner.set_metadata(id, metadata).await
    }

    async fn list_sessions(
        &self,
        owner: Option<&str>,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        self.inner.list_sessions(owner, after, limit).await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl MessageStore for GatedStore {
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>> {
        self.inner.recent_messages(id, limit).await
    }

    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()> {
        if turn.messages[0].content != self.gated {
            return self.inner.append_turn(id, turn).await;
        }
        self.hold(Gate::BeforeStoring).await;
        self.delegated.store(true, Ordering::SeqCst);
        self.inner.append_turn(id, turn).await?;
        self.hold(Gate::AfterStoring).await;
        Ok(())
    }

    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        self.inner.session_usage(id).await
    }

    async fn delete_message(&self, id: SessionId, position: MessageCursor) -> Result<bool> {
        self.inner.delete_message(id, position).await
    }

    async fn load_turn_context(
        &self,
        id: SessionId,
        limit: usize,
    ) -> Result<Option<(Session, Vec<Message>)>> {
        self.inner.load_turn_context(id, limit).await
    }
}

#[async_trait]
impl ResponseStore for GatedStore {
    async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>> {
        self.inner.get_response(id).await
    }

    async fn head_response(&self, id: SessionId) -> Result<Option<String>> {
        self.inner.head_response(id).await
    }

    async fn delete_response(&self, id: &str) -> Result<bool> {
        self.inner.delete_response(id).await
    }

    async fn history_through(&self, id: SessionId, through: MessageCursor) -> Result<Vec<Message>> {
        self.inner.history_through(id, through).await
    }

    async fn fork_session(
        &self,
        from: SessionId,
        through: MessageCursor,
        into: &Session,
    ) -> Result<()> {
        self.inner.fork_session(from, through, into).await
    }
}

#[async_trait]
impl FeedbackStore for GatedStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        self.inner.insert_feedback(feedback).await
    }

    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        self.inner.list_feedback(id).await
    }

    async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>> {
        self.inner.review_feedback(filter, after, limit).await
    }
}

#[async_trait]
impl KeyStore for GatedStore {
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()> {
        self.inner.insert_key(key, hash).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>> {
        self.inner.get_key(id).await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.inner.list_keys().await
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        self.inner.revoke_key(id, at).await
    }
}

/// Runs "first", then "cancel me" (dropped while its `append_turn` is held
/// at `gate`), then "third". Returns what is stored at the end and the
/// history the model was sent for "third".
async fn cancel_inside_append_turn(
    gate: Gate,
) -> (Vec<(chatcore::Role, String)>, Vec<(chatcore::Role, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedStore::open(
        &dir.path().join("c.db"),
        "cancel me",
        gate,
    ));
    let model = ScriptedModel::new().shared();
    let core = core(Arc::clone(&store) as Arc<dyn Store>, &model, 10_000);
    let id = new_session(&core).await;
    core.anyone().chat(id, "first").await.unwrap();

    // Drive the turn until it is held inside `append_turn`, then drop it,
    // as a client going away would (the timeout only guards against a hang).
    let me = core.anyone();
    let mut turn = Box::pin(me.chat(id, "cancel me"));
    let held = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = &mut turn => panic!("the gated turn finished: {r:?}"),
            () = store.reached.notified() => {}
        }
    })
    .await;
    assert!(held.is_ok(), "the turn never reached append_turn");
    assert_eq!(
        model.calls(),
        2,
        "the model answered before the gate: this cancels the write, not the call"
    );
    drop(turn);
    // Opening the gate now must not matter: the turn is gone.
    store.release.notify_waiters();
    assert_eq!(
        store.delegated.load(Ordering::SeqCst),
        gate == Gate::AfterStoring,
        "the turn was dropped on the wrong side of the inner append"
    );

    core.anyone().chat(id, "third").await.unwrap();
    let stored = pairs(&core.anyone().messages(id).await.unwrap());
    let seen = model.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].user, "third");
    (stored, seen[2].history.clone())
}

#[tokio::test]
async fn a_turn_cancelled_before_it_is_stored_leaves_no_trace() {
    let (stored, sent) = cancel_inside_append_turn(Gate::BeforeStoring).await;
    assert_eq!(
        stored,
        [
            user("first"),
            assistant("reply to first"),
            user("third"),
            assistant("reply to third"),
        ],
        "the cancelled turn was never written"
    );
    assert_eq!(sent, stored[..2], "the model saw exactly what is stored");
}

#[tokio::test]
async fn a_turn_cancelled_after_it_is_stored_is_in_the_next_history() {
    let (stored, sent) = cancel_inside_append_turn(Gate::AfterStoring).await;
    assert_eq!(
        stored,
        [
            user("first"),
            assistant("reply to first"),
            user("cancel me"),
            assistant("reply to cancel me"),
            user("third"),
            assistant("reply to third"),
        ],
        "the store committed the turn before it was dropped"
    );
    assert_eq!(
        sent,
        stored[..4],
        "the cache hid a stored turn from the model"
    );
}

/// Feedback on a session held hot is checked against the hot copy's owner:
/// its owner's feedback is stored, another principal's is refused as not
/// found, and a session deleted since is not found, with nothing stored.
#[tokio::test(flavor = "current_thread")]
async fn feedback_on_a_hot_session_keeps_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("f.db")).unwrap());
    let model = ScriptedModel::new().shared();
    let core = core(Arc::clone(&store), &model, 100);
    let as_ = |id: &str| {
        core.as_caller(chatcore::Caller::Principal(chatcore::Principal {
            id: id.to_owned(),
            admin: false,
        }))
    };
    let id = as_("alice")
        .initialize(chatcore::NewSession::default())
        .await
        .unwrap()
        .session
        .id;
    as_("alice").chat(id, "hi").await.unwrap();
    let err = as_("bob")
        .submit_feedback(id, "not mine", Some(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), chatcore::ErrorKind::SessionNotFound);
    as_("alice")
        .submit_feedback(id, "mine", Some(5))
        .await
        .unwrap();
    let kept = store.list_feedback(id).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].text, "mine");
    // Deleted behind this facade's back (as another gateway would): the
    // hot copy stays, the store refuses.
    assert!(store.delete_session(id).await.unwrap());
    let err = as_("alice")
        .submit_feedback(id, "too late", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), chatcore::ErrorKind::SessionNotFound);
    assert!(store.list_feedback(id).await.unwrap().is_empty());
}
