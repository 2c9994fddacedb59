//! The `ChatCore` facade end to end, once per storage backend: what a turn
//! stores, what the model is sent, and what a failed turn leaves behind.
//! Concurrency and the session lifecycle have their own files.

use std::sync::Arc;

use chatcore::{
    estimate_tokens, trim_history, ChatCore, ChatCoreBuilder, ErrorKind, ManualClock, MemoryStore,
    MessageStore, NewSession, OpenAiChat, OpenAiConfig, Store,
};
use chatmock::MockOpenAi;
use serde_json::json;

use crate::support::{assistant, new_session, pairs, t0, user, ScriptedModel, MINUTE};

mod concurrency;
mod hot;
mod lifecycle;

each_backend! {
    "current_thread" => three_turns_store_six_messages_and_send_history_oldest_first,
    "current_thread" => a_sessions_system_prompt_replaces_the_default,
    "current_thread" => a_failed_upstream_turn_stores_nothing_but_uses_its_token,
    "current_thread" => history_is_trimmed_from_the_oldest_end_to_fit,
}

/// A builder with `store` and `model`; tests add what they need.
fn builder<S: Store + 'static>(store: S, model: &Arc<ScriptedModel>) -> ChatCoreBuilder {
    ChatCore::builder()
        .store(store)
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
}

async fn three_turns_store_six_messages_and_send_history_oldest_first<S: Store + 'static>(
    store: S,
) {
    let mock = MockOpenAi::start().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let core = ChatCore::builder()
        .store(store)
        .model(
            OpenAiChat::new(OpenAiConfig {
                base_url: mock.base_url(),
                ..OpenAiConfig::default()
            })
            .unwrap(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let created = core
        .anyone()
        .initialize(NewSession::default())
        .await
        .unwrap();
    assert!(created.is_active);
    let id = created.session.id;

    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        clock.advance(MINUTE);
        let reply = core.anyone().chat(id, text).await.unwrap();
        assert_eq!(reply.content, format!("Echo: {text}"));
        assert_eq!(reply.session_id, id);
        assert_eq!((reply.limit, reply.remaining), (5, 4 - n as u32));
        let info = core.anyone().get(id).await.unwrap();
        assert_eq!(info.session.last_active, t0() + MINUTE * (n as u32 + 1));
        assert_eq!(info.session.created_at, t0());
    }

    let stored = core.anyone().messages(id).await.unwrap();
    assert_eq!(
        pairs(&stored),
        vec![
            user("one"),
            assistant("Echo: one"),
            user("two"),
            assistant("Echo: two"),
            user("three"),
            assistant("Echo: three"),
        ]
    );
    let sent = mock.recorded();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[2].body["messages"],
        json!([
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "Echo: one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "Echo: two"},
            {"role": "user", "content": "three"},
        ])
    );
}

async fn a_sessions_system_prompt_replaces_the_default<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let core = builder(store, &model)
        .system_prompt("You are the default.")
        .build()
        .unwrap();
    let own = core
        .anyone()
        .initialize(NewSession {
            system_prompt: Some("You are a pirate.".into()),
            metadata: Some(json!({"user": 42})),
        })
        .await
        .unwrap()
        .session;
    let plain = core
        .anyone()
        .initialize(NewSession::default())
        .await
        .unwrap()
        .session;
    assert_eq!(
        core.anyone().get(own.id).await.unwrap().session.metadata,
        Some(json!({"user": 42}))
    );

    core.anyone().chat(own.id, "ahoy").await.unwrap();
    core.anyone().chat(plain.id, "hello").await.unwrap();
    let seen = model.seen();
    assert_eq!(seen[0].system.as_deref(), Some("You are a pirate."));
    assert_eq!(seen[1].system.as_deref(), Some("You are the default."));
    // The system prompt is sent, never stored as history.
    let stored = core.anyone().messages(own.id).await.unwrap();
    assert_eq!(
        pairs(&stored),
        vec![user("ahoy"), assistant("reply to ahoy")]
    );
}

async fn a_failed_upstream_turn_stores_nothing_but_uses_its_token<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = builder(store, &model)
        .messages_per_minute(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    let id = new_session(&core).await;
    clock.advance(MINUTE);

    model.fail_next(&[ErrorKind::UpstreamFailed]);
    let err = core.anyone().chat(id, "first").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert!(core.anyone().messages(id).await.unwrap().is_empty());
    let info = core.anyone().get(id).await.unwrap();
    assert_eq!(
        info.session.last_active,
        t0(),
        "a failed turn is no activity"
    );

    core.anyone().chat(id, "second").await.unwrap();
    assert!(
        model.seen()[1].history.is_empty(),
        "the failed turn is not history"
    );
    let err = core.anyone().chat(id, "third").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::RateLimited,
        "the failed turn used a token"
    );
    assert_eq!(model.calls(), 2, "a limited message is not forwarded");
    let stored = core.anyone().messages(id).await.unwrap();
    assert_eq!(
        pairs(&stored),
        vec![user("second"), assistant("reply to second")]
    );
}

async fn history_is_trimmed_from_the_oldest_end_to_fit<S: Store + 'static>(store: S) {
    let budget = 60;
    let model = ScriptedModel::new().shared();
    let core = builder(store, &model)
        .context_tokens(budget)
        .build()
        .unwrap();
    let id = new_session(&core).await;
    // 40-character questions (14 tokens) and 49-character replies (17).
    let question = |i: usize| format!("{i}{}", "x".repeat(39));
    for i in 0..4 {
        core.anyone().chat(id, &question(i)).await.unwrap();
    }
    let stored = core.anyone().messages(id).await.unwrap();
    assert_eq!(stored.len(), 8);
    let stored = pairs(&stored);
    let seen = model.seen();

    // Turn 2 fits all earlier history (31 of 46); turns 3 and 4 only their
    // latest pair (a second pair would need 62).
    assert_eq!(seen[0].history, vec![]);
    assert_eq!(seen[1].history, stored[0..2]);
    assert_eq!(seen[2].history, stored[2..4]);
    assert_eq!(seen[3].history, stored[4..6]);

    // The general rule: what is sent is the longest suffix that fits.
    let cost = |h: &[(chatcore::Role, String)]| -> usize {
        h.iter().map(|(_, c)| estimate_tokens(c)).sum::<usize>()
    };
    let last = &seen[3];
    let before = &stored[..6];
    assert!(cost(&last.history) + estimate_tokens(&last.user) <= budget);
    let one_more = &before[before.len() - last.history.len() - 1..];
    assert!(cost(one_more) + estimate_tokens(&last.user) > budget);
}

/// A reply that says nothing (no text, tool calls or refusal) is the
/// upstream's failure: the turn stores nothing and the history is intact.
#[tokio::test]
async fn an_empty_reply_fails_the_turn_and_stores_nothing() {
    let model = ScriptedModel::new().with_reply(|_| String::new()).shared();
    let core = builder(MemoryStore::new(), &model).build().unwrap();
    let id = new_session(&core).await;
    let err = core.anyone().chat(id, "hello?").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert!(err.to_string().contains("empty reply"), "{err}");
    assert!(core.anyone().messages(id).await.unwrap().is_empty());
    assert_eq!(model.calls(), 1);
}

/// `history_read_limit` (chat.rs) assumes every message costs at least
/// five tokens, but an empty message costs four, so when replies are empty
/// fewer messages are read than would fit the budget. (A turn no longer
/// stores an empty reply, but a store may hold them from before.)
#[tokio::test]
async fn empty_replies_do_not_shrink_the_history_that_fits() {
    let model = ScriptedModel::new().shared();
    let budget = 300;
    let store = Arc::new(MemoryStore::new());
    let core = ChatCore::builder()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .shared_model(Arc::clone(&model) as Arc<dyn chatcore::ChatModel>)
        .context_tokens(budget)
        .messages_per_minute(1000)
        // The turns below are written behind the facade's back, at t0.
        .hot_sessions(0)
        .clock(Arc::new(ManualClock::new(t0())))
        .build()
        .unwrap();
    let id = new_session(&core).await;
    for i in 0..33 {
        store.append_turn(id, turn!("a", "", i)).await.unwrap();
    }
    let before = core.anyone().messages(id).await.unwrap();
    assert_eq!(before.len(), 66);
    core.anyone().chat(id, "a").await.unwrap();

    let fits = trim_history(&before, None, "a", budget).len();
    assert_eq!(fits, 65, "32 pairs and one reply fit 295 tokens");
    assert_eq!(model.seen()[0].history.len(), fits);
}
