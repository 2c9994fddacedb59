//! The storage conformance suite: every backend must pass every test here,
//! run with `MemoryStore`, `SqliteStore` and (with the `postgres` feature
//! and a server) `PostgresStore` (see `each_backend!`).

use std::sync::Arc;

use chatcore::{
    ErrorKind, Feedback, Message, PurgeReport, Rating, Role, SessionId, Store, Turn, Usage,
};
use serde_json::json;

use crate::support::{assistant, at, pairs, session, t0, user};

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
    "current_thread" => feedback_ids_are_never_reused,
    "current_thread" => purge_deletes_only_old_sessions_with_their_data,
    "current_thread" => purge_within_the_cutoffs_hour_goes_by_the_exact_time,
    "current_thread" => ping_succeeds,
    "current_thread" => a_tool_loop_is_stored_whole_and_in_order,
    "current_thread" => pages_step_through_turns_of_every_size,
    "current_thread" => usage_sums_cached_tokens,
    "current_thread" => a_sessions_target_is_kept_until_it_changes,
    "current_thread" => listings_page_through_sessions_by_last_activity,
}

const CALL: &str = r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}"#;
const RESULT: &str = r#"{"role":"tool","tool_call_id":"call_1","content":"sunny, 21 C"}"#;
const PARTS: &str = r#"{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}"#;

fn wire(json: &str, secs: i64) -> Message {
    Message::from_json(json, at(secs)).unwrap()
}

/// Stores `messages` as one turn.
async fn store_turn(store: &dyn Store, id: SessionId, messages: &[Message], usage: Option<Usage>) {
    let refs: Vec<_> = messages.iter().map(Message::view).collect();
    store
        .append_turn(
            id,
            Turn {
                messages: &refs,
                usage,
                target: None,
                response: None,
            },
        )
        .await
        .unwrap();
}

/// A user message with an image, a reply that calls a tool, its result
/// with a final answer: each message comes back exactly as stored, in
/// order, whatever its kind, and text messages stay text.
async fn a_tool_loop_is_stored_whole_and_in_order<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let first = [wire(PARTS, 1), wire(CALL, 2)];
    let second = [
        wire(RESULT, 3),
        Message::text(Role::Assistant, "It is sunny in Paris.", at(4)),
    ];
    store_turn(&store, s.id, &first, None).await;
    store_turn(&store, s.id, &second, None).await;
    store
        .append_turn(s.id, turn!("thanks", "you're welcome", 5))
        .await
        .unwrap();

    let all = store.recent_messages(s.id, usize::MAX).await.unwrap();
    let expected: Vec<Message> = first
        .iter()
        .chain(&second)
        .cloned()
        .chain([
            Message::text(Role::User, "thanks", at(5)),
            Message::text(Role::Assistant, "you're welcome", at(6)),
        ])
        .collect();
    assert_eq!(all, expected);
    assert_eq!(all[0].wire.as_ref().unwrap().as_str(), PARTS);
    assert_eq!(all[1].view().calls(), ["call_1"]);
    assert_eq!(all[2].role, Role::Tool);
    assert!(all[3].wire.is_none(), "a text reply stays text");
    // The latest few, and the turn context, cut through a turn correctly.
    let recent = store.recent_messages(s.id, 3).await.unwrap();
    assert_eq!(recent, expected[3..]);
    let (_, history) = store.load_turn_context(s.id, 5).await.unwrap().unwrap();
    assert_eq!(history, expected[1..]);
    assert_eq!(
        store.get_session(s.id).await.unwrap().unwrap().last_active,
        at(6)
    );
}

/// Paging walks every message once, in order, page sizes from 1 up,
/// over turns of two, three and one-plus-reply messages.
async fn pages_step_through_turns_of_every_size<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store.append_turn(s.id, turn!("a", "b", 1)).await.unwrap();
    store_turn(&store, s.id, &[wire(PARTS, 3), wire(CALL, 4)], None).await;
    store_turn(
        &store,
        s.id,
        &[
            wire(RESULT, 5),
            Message::text(Role::User, "and tomorrow?", at(5)),
            Message::text(Role::Assistant, "also sunny", at(6)),
        ],
        None,
    )
    .await;
    store.append_turn(s.id, turn!("c", "d", 7)).await.unwrap();
    let all = store.recent_messages(s.id, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 9);
    for size in 1..=10 {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .messages_page(s.id, after, size)
                .await
                .unwrap()
                .unwrap();
            assert!(page.messages.len() <= size);
            seen.extend(page.messages);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, all, "page size {size}");
    }
}

async fn usage_sums_cached_tokens<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let usage = |p, c, cached| {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
        })
    };
    let text = [
        Message::text(Role::User, "q", at(1)),
        Message::text(Role::Assistant, "a", at(2)),
    ];
    store_turn(&store, s.id, &text, usage(100, 10, 0)).await;
    store_turn(
        &store,
        s.id,
        &[wire(RESULT, 3), wire(CALL, 4)],
        usage(120, 5, 96),
    )
    .await;
    assert_eq!(
        store.session_usage(s.id).await.unwrap(),
        Usage {
            prompt_tokens: 220,
            completion_tokens: 15,
            cached_tokens: 96
        }
    );
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
            .append_turn(s.id, turn!(&u, &r, 10 * i64::from(i)))
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
        .append_turn(s.id, turn!("hello", "hi there", 90))
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
        .append_turn(missing, turn!("lost", "never", 1))
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
            store.append_turn(s.id, turn!(&u, &r, i)).await
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

    store
        .append_turn(s.id, turn!("one", "1", 10))
        .await
        .unwrap();
    store
        .append_turn(s.id, turn!("two", "2", 20))
        .await
        .unwrap();
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

/// The admin page's cursor is a feedback id: one handed out twice would
/// skip or repeat rows. Deleting the newest row (with its session) must not
/// free its id.
async fn feedback_ids_are_never_reused<S: Store + 'static>(store: S) {
    let keep = session(t0());
    let doomed = session(t0());
    store.insert_session(&keep).await.unwrap();
    store.insert_session(&doomed).await.unwrap();
    store
        .insert_feedback(&feedback(keep.id, "first", None, 1))
        .await
        .unwrap();
    store
        .insert_feedback(&feedback(doomed.id, "newest", None, 2))
        .await
        .unwrap();
    let all = chatcore::FeedbackFilter::default();
    let ids = |page: Vec<(i64, Feedback)>| page.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    let before = ids(store.review_feedback(&all, None, 10).await.unwrap());
    assert_eq!(before.len(), 2);
    assert!(store.delete_session(doomed.id).await.unwrap());
    store
        .insert_feedback(&feedback(keep.id, "after", None, 3))
        .await
        .unwrap();
    let after = ids(store.review_feedback(&all, None, 10).await.unwrap());
    assert_eq!(after.len(), 2);
    assert!(
        after[1] > before[1],
        "the newest id {} was handed out again ({after:?})",
        before[1]
    );
    // A reader paging from the deleted row's id sees the new row.
    let page = store
        .review_feedback(&all, Some(before[1]), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].1.text, "after");
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
        .append_turn(old.id, turn!("o1", "r1", 0))
        .await
        .unwrap();
    store
        .append_turn(old.id, turn!("o2", "r2", day))
        .await
        .unwrap();
    store
        .insert_feedback(&feedback(old.id, "bye", Some(4), day + 5))
        .await
        .unwrap();
    store
        .append_turn(edge.id, turn!("e1", "r1", 5 * day - 1))
        .await
        .unwrap();
    store
        .append_turn(fresh.id, turn!("f1", "r1", 9 * day))
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
            feedback: 1,
            skipped: false
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

/// The cutoff falls mid-hour; what decides is each session's last reply
/// (or creation), not the hour it falls in nor an earlier turn.
async fn purge_within_the_cutoffs_hour_goes_by_the_exact_time<S: Store + 'static>(store: S) {
    let (minute, day) = (60, 24 * 3600);
    // t0() is on the hour: the cutoff is 12:30:00 on day 5.
    let cutoff = 5 * day + 30 * minute;
    // An early turn on day 0, the last one at 12:40 on the cutoff's day.
    let late = session(t0());
    // A turn at 12:10 and one at 12:45, both in the cutoff's hour.
    let straddles = session(t0());
    // Its last reply at 12:10 on the cutoff's day, after an early turn.
    let early = session(t0());
    // Its last reply one second before the cutoff.
    let just_before = session(t0());
    // Its last reply exactly at the cutoff: kept (only older ones go).
    let at_cutoff = session(t0());
    // Sessions without turns in the cutoff's hour, created before / after it.
    let created_before = session(at(cutoff - 5 * minute));
    let created_after = session(at(cutoff + 5 * minute));
    for s in [
        &late,
        &straddles,
        &early,
        &just_before,
        &at_cutoff,
        &created_before,
        &created_after,
    ] {
        store.insert_session(s).await.unwrap();
    }
    let append = |id: SessionId, text: &'static str, user_secs: i64| {
        let store = &store;
        async move {
            store
                .append_turn(id, turn!(text, "ok", user_secs))
                .await
                .unwrap();
        }
    };
    append(late.id, "old", 0).await;
    append(late.id, "new", cutoff + 10 * minute - 1).await;
    append(straddles.id, "before", cutoff - 20 * minute - 1).await;
    append(straddles.id, "after", cutoff + 15 * minute - 1).await;
    append(early.id, "old", 0).await;
    append(early.id, "in the hour", cutoff - 20 * minute - 1).await;
    append(just_before.id, "close", cutoff - 2).await;
    append(at_cutoff.id, "edge", cutoff - 1).await;
    store
        .insert_feedback(&feedback(early.id, "gone", None, cutoff - 19 * minute))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_session(late.id)
            .await
            .unwrap()
            .unwrap()
            .last_active,
        at(cutoff + 10 * minute)
    );
    assert_eq!(
        store
            .get_session(just_before.id)
            .await
            .unwrap()
            .unwrap()
            .last_active,
        at(cutoff - 1)
    );

    let report = store.purge_inactive_before(at(cutoff)).await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            sessions: 3,
            messages: 6,
            feedback: 1,
            skipped: false
        },
        "early, just_before and created_before go"
    );
    for gone in [&early, &just_before, &created_before] {
        assert_eq!(store.get_session(gone.id).await.unwrap(), None);
        assert!(store
            .recent_messages(gone.id, usize::MAX)
            .await
            .unwrap()
            .is_empty());
    }
    assert!(store.list_feedback(early.id).await.unwrap().is_empty());
    for (kept, messages) in [
        (&late, 4),
        (&straddles, 4),
        (&at_cutoff, 2),
        (&created_after, 0),
    ] {
        assert!(
            store.get_session(kept.id).await.unwrap().is_some(),
            "purged a session active at or after the cutoff"
        );
        assert_eq!(
            store
                .recent_messages(kept.id, usize::MAX)
                .await
                .unwrap()
                .len(),
            messages
        );
    }
    // The same cutoff again finds nothing. A later cutoff, still in the
    // same hour (12:40:01), takes exactly those now older than it.
    let again = store.purge_inactive_before(at(cutoff)).await.unwrap();
    assert_eq!(again, PurgeReport::default());
    let later = store
        .purge_inactive_before(at(cutoff + 10 * minute + 1))
        .await
        .unwrap();
    assert_eq!(
        (later.sessions, later.messages),
        (3, 6),
        "late, at_cutoff and created_after go"
    );
    for gone in [&late, &at_cutoff, &created_after] {
        assert_eq!(store.get_session(gone.id).await.unwrap(), None);
    }
    assert_eq!(
        store
            .recent_messages(straddles.id, usize::MAX)
            .await
            .unwrap()
            .len(),
        4,
        "straddles' last reply (12:45) is after the later cutoff"
    );
}

async fn ping_succeeds<S: Store + 'static>(store: S) {
    store.ping().await.unwrap();
    store.insert_session(&session(t0())).await.unwrap();
    store.ping().await.unwrap();
}

/// The target a router chose for a session (its affinity) is kept with the
/// session, read back with it on every path a turn loads it by, and moved
/// only by a turn that changes it.
async fn a_sessions_target_is_kept_until_it_changes<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    assert_eq!(store.get_session(s.id).await.unwrap().unwrap().target, None);
    let turn = |u: &'static str, a: &'static str, secs: i64| {
        vec![
            Message::text(Role::User, u, at(secs)),
            Message::text(Role::Assistant, a, at(secs + 1)),
        ]
    };
    let append = |messages: Vec<Message>, target: Option<&'static str>| {
        let store = &store;
        async move {
            let refs: Vec<_> = messages.iter().map(Message::view).collect();
            store
                .append_turn(
                    s.id,
                    Turn {
                        messages: &refs,
                        usage: None,
                        target,
                        response: None,
                    },
                )
                .await
                .unwrap();
        }
    };
    append(turn("one", "1", 10), Some("openai:gpt-4o-mini")).await;
    let target = |session: chatcore::Session| session.target;
    assert_eq!(
        target(store.get_session(s.id).await.unwrap().unwrap()).as_deref(),
        Some("openai:gpt-4o-mini")
    );
    // A turn that leaves it alone (the same target) changes nothing.
    append(turn("two", "2", 20), None).await;
    let (loaded, history) = store.load_turn_context(s.id, 10).await.unwrap().unwrap();
    assert_eq!(loaded.target.as_deref(), Some("openai:gpt-4o-mini"));
    assert_eq!(history.len(), 4);
    // A failover moves it.
    append(turn("three", "3", 30), Some("local:qwen2.5-7b")).await;
    assert_eq!(
        target(store.get_session(s.id).await.unwrap().unwrap()).as_deref(),
        Some("local:qwen2.5-7b")
    );
    let listed = store.list_sessions(None, None, 10).await.unwrap();
    assert_eq!(listed[0].target.as_deref(), Some("local:qwen2.5-7b"));
}

/// Sessions created over many hours, some active later (a turn's reply is
/// their last activity), several in one hour and two at the same instant:
/// every page size steps through all of them once, most recently active
/// first (ties by id, descending), for an owner and for everyone.
async fn listings_page_through_sessions_by_last_activity<S: Store + 'static>(store: S) {
    const HOUR: i64 = 3600;
    let mut expected = Vec::new();
    for i in 0..24_i64 {
        let mut s = session(at(i * 37 * 60));
        s.owner = Some(if i % 3 == 0 { "bob" } else { "alice" }.to_owned());
        if i == 5 {
            // The same instant as session 4's creation.
            s.created_at = at(4 * 37 * 60);
            s.last_active = s.created_at;
        }
        store.insert_session(&s).await.unwrap();
        let mut last = s.created_at;
        if i % 4 == 1 {
            // Active again hours later: it moves up the list.
            let secs = 30 * HOUR - i * 600;
            store
                .append_turn(s.id, turn!("u", "r", secs))
                .await
                .unwrap();
            last = at(secs + 1);
        }
        expected.push((last, s.id, s.owner.clone()));
    }
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    for owner in [None, Some("alice")] {
        let want: Vec<SessionId> = expected
            .iter()
            .filter(|(_, _, o)| owner.is_none() || o.as_deref() == owner)
            .map(|(_, id, _)| *id)
            .collect();
        for limit in [1, 2, 3, 5, 7, 30] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_sessions(owner, after, limit).await.unwrap();
                assert!(page.len() <= limit);
                got.extend(page.iter().map(|s| s.id));
                match page.last() {
                    Some(last) if page.len() == limit => {
                        after = Some(chatcore::SessionCursor::after(last));
                    }
                    _ => break,
                }
            }
            assert_eq!(got, want, "owner {owner:?}, pages of {limit}");
        }
    }
}
