//! The hot-session cache must never change what a turn sees or stores:
//! the same conversation with the cache on and off sends the model the same
//! history; a turn cancelled mid-flight leaves the next turn a history that
//! matches the store; a fresh facade on the same file picks up where the
//! old one stopped.

use std::sync::Arc;
use std::time::Duration;

use chatcore::{ChatCore, SqliteStore, Store};

use crate::support::{pairs, ScriptedModel};

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
    let id = core.sessions().initialize().await.unwrap().session.id;
    for i in 0..12 {
        core.chat(id, &format!("message number {i}")).await.unwrap();
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
    let id = core.sessions().initialize().await.unwrap().session.id;
    core.chat(id, "first").await.unwrap();
    // The client goes away while the model is thinking: the turn is dropped.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), core.chat(id, "slow")).await;
    assert!(cancelled.is_err(), "the slow turn should have been cut off");
    core.chat(id, "third").await.unwrap();
    let stored = pairs(&core.sessions().messages(id).await.unwrap());
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
        let id = core.sessions().initialize().await.unwrap().session.id;
        core.chat(id, "before restart").await.unwrap();
        id
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let core = core(store, &model, 10_000);
    core.chat(id, "after restart").await.unwrap();
    let seen = model.seen().last().unwrap().history.clone();
    let texts: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["before restart", "reply to before restart"]);
}
