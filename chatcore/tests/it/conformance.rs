//! The storage conformance suite: every backend must pass every test here,
//! run once with `MemoryStore` and once with `SqliteStore` (see
//! `each_backend!`).

use std::sync::Arc;

use chatcore::{ErrorKind, Feedback, PurgeReport, Rating, Role, Session, SessionId, Store, Turn};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::support::{assistant, at, pairs, t0, user};

each_backend! {
    "current_thread" => session_round_trip,
    "current_thread" => missing_ids_read_as_nothing,
    "current_thread" => recent_messages_are_oldest_first_and_keep_the_latest,
    "current_thread" => append_turn_sets_last_active,
    "current_thread" => append_turn_to_missing_session_stores_nothing,
    "multi_thread" => concurrent_append_turns_are_atomic,
    "current_thread" => load_turn_context_returns_session_and_latest_messages,
    "current_thread" => feedback_round_trip_in_order,
    "current_thread" => feedback_for_missing_session_is_rejected,
    "current_thread" => purge_deletes_only_old_sessions_with_their_data,
    "current_thread" => ping_succeeds,
}

fn session(created: DateTime<Utc>) -> Session {
    Session {
        id: SessionId::new_v4(),
        created_at: created,
        last_active: created,
        system_prompt: None,
        metadata: None,
    }
}

fn turn<'a>(u: &'a str, r: &'a str, secs: i64) -> Turn<'a> {
    Turn {
        user: u,
        user_at: at(secs),
        reply: r,
        reply_at: at(secs + 1),
    }
}

async fn session_round_trip<S: Store + 'static>(store: S) {
    let mut full = session(t0());
    full.system_prompt = Some("You are terse.".into());
    full.metadata = Some(json!({"plan": "pro", "n": 3, "tags": ["a", "b"], "nested": {"x": null}}));
    let bare = session(at(5));
    store.insert_session(&full).await.unwrap();
    store.insert_session(&bare).await.unwrap();

    assert_eq!(store.get_session(full.id).await.unwrap(), Some(full));
    assert_eq!(store.get_session(bare.id).await.unwrap(), Some(bare));
}

async fn missing_ids_read_as_nothing<S: Store + 'static>(store: S) {
    store.insert_session(&session(t0())).await.unwrap();
    let missing = SessionId::new_v4();
    assert_eq!(store.get_session(missing).await.unwrap(), None);
    assert!(store
        .load_turn_context(missing, 10)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .recent_messages(missing, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert!(store.list_feedback(missing).await.unwrap().is_empty());
}

async fn recent_messages_are_oldest_first_and_keep_the_latest<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    for i in 0..3 {
        let (u, r) = (format!("u{i}"), format!("a{i}"));
        store
            .append_turn(s.id, turn(&u, &r, 10 * i64::from(i)))
            .await
            .unwrap();
    }
    let all = store.recent_messages(s.id, usize::MAX).await.unwrap();
    assert_eq!(
        pairs(&all),
        vec![
            user("u0"),
            assistant("a0"),
            user("u1"),
            assistant("a1"),
            user("u2"),
            assistant("a2"),
        ]
    );
    let times: Vec<_> = all.iter().map(|m| m.created_at).collect();
    assert_eq!(times, vec![at(0), at(1), at(10), at(11), at(20), at(21)]);

    let latest = store.recent_messages(s.id, 3).await.unwrap();
    assert_eq!(
        pairs(&latest),
        vec![assistant("a1"), user("u2"), assistant("a2")]
    );
    assert_eq!(store.recent_messages(s.id, 6).await.unwrap(), all);
    assert_eq!(store.recent_messages(s.id, 100).await.unwrap(), all);
    assert!(store.recent_messages(s.id, 0).await.unwrap().is_empty());
}

async fn append_turn_sets_last_active<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store
        .append_turn(s.id, turn("hello", "hi there", 90))
        .await
        .unwrap();
    let after = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!(after.last_active, at(91), "last_active is the reply time");
    assert_eq!(after.created_at, t0(), "created_at does not move");
    let messages = store.recent_messages(s.id, usize::MAX).await.unwrap();
    assert_eq!(pairs(&messages), vec![user("hello"), assistant("hi there")]);
}

async fn append_turn_to_missing_session_stores_nothing<S: Store + 'static>(store: S) {
    let other = session(t0());
    store.insert_session(&other).await.unwrap();
    let missing = SessionId::new_v4();
    let err = store
        .append_turn(missing, turn("lost", "never", 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionNotFound);
    assert_eq!(store.get_session(missing).await.unwrap(), None);
    assert!(store
        .recent_messages(missing, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .recent_messages(other.id, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.get_session(other.id).await.unwrap(), Some(other));
}

async fn concurrent_append_turns_are_atomic<S: Store + 'static>(store: S) {
    let store = Arc::new(store);
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let (u, r) = (format!("u{i}"), format!("a{i}"));
            store.append_turn(s.id, turn(&u, &r, i)).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let all = store.recent_messages(s.id, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 80);
    for pair in all.chunks(2) {
        assert_eq!(pair[0].role, Role::User, "{all:?}");
        assert_eq!(pair[1].role, Role::Assistant, "{all:?}");
        let n = pair[0].content.strip_prefix('u').unwrap();
        assert_eq!(pair[1].content, format!("a{n}"), "turns interleaved");
    }
}

async fn load_turn_context_returns_session_and_latest_messages<S: Store + 'static>(store: S) {
    let mut s = session(t0());
    s.system_prompt = Some("sys".into());
    store.insert_session(&s).await.unwrap();
    let (got, history) = store.load_turn_context(s.id, 10).await.unwrap().unwrap();
    assert_eq!(got, s);
    assert!(history.is_empty());

    store.append_turn(s.id, turn("one", "1", 10)).await.unwrap();
    store.append_turn(s.id, turn("two", "2", 20)).await.unwrap();
    let (got, history) = store.load_turn_context(s.id, 3).await.unwrap().unwrap();
    assert_eq!(got.last_active, at(21));
    assert_eq!(got.system_prompt.as_deref(), Some("sys"));
    assert_eq!(
        pairs(&history),
        vec![assistant("1"), user("two"), assistant("2")]
    );
    let (_, everything) = store
        .load_turn_context(s.id, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(everything.len(), 4);
}

fn feedback(id: SessionId, text: &str, rating: Option<i64>, secs: i64) -> Feedback {
    Feedback {
        session_id: id,
        text: text.into(),
        rating: rating.map(|r| Rating::new(r).unwrap()),
        created_at: at(secs),
    }
}

async fn feedback_round_trip_in_order<S: Store + 'static>(store: S) {
    let s = session(t0());
    let other = session(t0());
    store.insert_session(&s).await.unwrap();
    store.insert_session(&other).await.unwrap();
    let entries = [
        feedback(s.id, "great", Some(5), 1),
        feedback(s.id, "no rating", None, 2),
        feedback(s.id, "meh", Some(1), 3),
    ];
    for f in &entries {
        store.insert_feedback(f).await.unwrap();
    }
    store
        .insert_feedback(&feedback(other.id, "elsewhere", Some(3), 4))
        .await
        .unwrap();
    assert_eq!(store.list_feedback(s.id).await.unwrap(), entries.to_vec());
    let others = store.list_feedback(other.id).await.unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].rating.map(Rating::get), Some(3));
}

async fn feedback_for_missing_session_is_rejected<S: Store + 'static>(store: S) {
    let missing = SessionId::new_v4();
    let err = store
        .insert_feedback(&feedback(missing, "hello?", Some(2), 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionNotFound);
    assert!(store.list_feedback(missing).await.unwrap().is_empty());
    assert_eq!(store.get_session(missing).await.unwrap(), None);
}

async fn purge_deletes_only_old_sessions_with_their_data<S: Store + 'static>(store: S) {
    let day = 24 * 3600;
    // Old: active on day 0 and day 1. Edge: last active exactly at the
    // cutoff (kept: only *older* sessions go). Fresh: active on day 9.
    let old = session(t0());
    let edge = session(t0());
    let fresh = session(at(8 * day));
    for s in [&old, &edge, &fresh] {
        store.insert_session(s).await.unwrap();
    }
    store
        .append_turn(old.id, turn("o1", "r1", 0))
        .await
        .unwrap();
    store
        .append_turn(old.id, turn("o2", "r2", day))
        .await
        .unwrap();
    store
        .insert_feedback(&feedback(old.id, "bye", Some(4), day + 5))
        .await
        .unwrap();
    store
        .append_turn(edge.id, turn("e1", "r1", 5 * day - 1))
        .await
        .unwrap();
    store
        .append_turn(fresh.id, turn("f1", "r1", 9 * day))
        .await
        .unwrap();
    store
        .insert_feedback(&feedback(fresh.id, "hi", None, 9 * day + 5))
        .await
        .unwrap();

    let report = store.purge_inactive_before(at(5 * day)).await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            sessions: 1,
            messages: 4,
            feedback: 1
        }
    );
    assert_eq!(store.get_session(old.id).await.unwrap(), None);
    assert!(store
        .recent_messages(old.id, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert!(store.list_feedback(old.id).await.unwrap().is_empty());

    assert!(store.get_session(edge.id).await.unwrap().is_some());
    assert_eq!(store.recent_messages(edge.id, 10).await.unwrap().len(), 2);
    assert!(store.get_session(fresh.id).await.unwrap().is_some());
    assert_eq!(store.recent_messages(fresh.id, 10).await.unwrap().len(), 2);
    assert_eq!(store.list_feedback(fresh.id).await.unwrap().len(), 1);

    let again = store.purge_inactive_before(at(5 * day)).await.unwrap();
    assert_eq!(again, PurgeReport::default());
}

async fn ping_succeeds<S: Store + 'static>(store: S) {
    store.ping().await.unwrap();
    store.insert_session(&session(t0())).await.unwrap();
    store.ping().await.unwrap();
}
