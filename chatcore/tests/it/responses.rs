//! The response store's conformance suite (`ResponseStore`), on every
//! backend: a response is stored with its turn and found by id with the
//! position of its reply and its turn's messages; the head is the response of the session's newest
//! turn only; a fork copies the messages through a response and nothing
//! after; deleting forgets the response, not its turn; responses go with
//! their session (deleted, purged). Conversations' needs too: a message
//! deleted leaves the others at their positions, turns of one message
//! page like any other, metadata replaced.

use chatcore::{Message, MessageCursor, ResponseRecord, SessionId, Store, Turn, Usage};

use chatcore::{new_response_id, Role};

use crate::support::{at, session, t0};

fn user(text: &str, secs: i64) -> Message {
    Message::text(Role::User, text, at(secs))
}

fn assistant(text: &str, secs: i64) -> Message {
    Message::text(Role::Assistant, text, at(secs))
}

each_backend! {
    "current_thread" => a_response_is_stored_with_its_turn,
    "current_thread" => the_head_is_the_newest_turns_response_only,
    "current_thread" => a_fork_copies_through_the_response_and_nothing_after,
    "current_thread" => deleting_a_response_keeps_its_turn,
    "current_thread" => responses_go_with_their_session,
    "current_thread" => a_deleted_message_leaves_the_others_in_place,
    "current_thread" => metadata_is_replaced_or_cleared,
}

const CALL: &str = r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}"#;
const RESULT: &str = r#"{"role":"tool","tool_call_id":"call_1","content":"done"}"#;

async fn turn(
    store: &dyn Store,
    id: SessionId,
    messages: &[Message],
    response: Option<(&str, &str)>,
) {
    let refs: Vec<_> = messages.iter().map(Message::view).collect();
    store
        .append_turn(
            id,
            Turn {
                messages: &refs,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    cached_tokens: 0,
                }),
                target: None,
                response: response.map(|(id, document)| ResponseRecord { id, document }),
            },
        )
        .await
        .unwrap();
}

async fn a_response_is_stored_with_its_turn<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let (r1, r2) = (new_response_id(s.id), new_response_id(s.id));
    turn(
        &store,
        s.id,
        &[user("one", 1), assistant("first", 2)],
        Some((r1.as_str(), "{\"a\":1}")),
    )
    .await;
    let got = store
        .get_response(r1.as_str())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(got.id, r1.as_str());
    assert_eq!(got.session_id, s.id);
    assert_eq!(got.document, "{\"a\":1}");
    // It comes with its turn's messages, the reply last, at `through`.
    assert_eq!(got.messages, [user("one", 1), assistant("first", 2)]);
    assert_eq!(got.positions.len(), 2);
    assert_eq!(got.positions.last(), Some(&got.through.position()));
    assert_eq!(
        got.usage,
        Some(Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 0
        })
    );
    // Its position is its reply's: the history through it ends there.
    let history = store.history_through(s.id, got.through).await.unwrap();
    assert_eq!(history, [user("one", 1), assistant("first", 2)]);
    // A later turn of three messages: its own three, none of the first's;
    // a message deleted since is not among them, the others keep their
    // positions.
    let call = Message::from_json(CALL, at(4)).unwrap();
    let result = Message::from_json(RESULT, at(5)).unwrap();
    turn(
        &store,
        s.id,
        &[call.clone(), result.clone(), assistant("second", 6)],
        Some((r2.as_str(), "{}")),
    )
    .await;
    let second = store.get_response(r2.as_str()).await.unwrap().unwrap();
    assert_eq!(
        second.messages,
        [call.clone(), result.clone(), assistant("second", 6)]
    );
    assert_eq!(second.positions.last(), Some(&second.through.position()));
    assert!(second.positions.windows(2).all(|w| w[0] < w[1]));
    assert!(store
        .delete_message(s.id, MessageCursor::after(second.positions[1]))
        .await
        .unwrap());
    let after = store.get_response(r2.as_str()).await.unwrap().unwrap();
    assert_eq!(after.messages, [call, assistant("second", 6)]);
    assert_eq!(after.positions, [second.positions[0], second.positions[2]]);
    let first = store.get_response(r1.as_str()).await.unwrap().unwrap();
    assert_eq!(first.messages, [user("one", 1), assistant("first", 2)]);
    assert!(store
        .get_response(&new_response_id(s.id))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_response("resp_not_one_of_ours")
        .await
        .unwrap()
        .is_none());
    let other = new_response_id(SessionId::new_v4());
    assert!(store.get_response(&other).await.unwrap().is_none());
}

async fn the_head_is_the_newest_turns_response_only<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let (r1, r2) = (new_response_id(s.id), new_response_id(s.id));
    assert_eq!(store.head_response(s.id).await.unwrap(), None);
    turn(
        &store,
        s.id,
        &[user("one", 1), assistant("first", 2)],
        Some((r1.as_str(), "{}")),
    )
    .await;
    assert_eq!(
        store.head_response(s.id).await.unwrap().as_deref(),
        Some(r1.as_str())
    );
    // A turn of many messages with a response of its own.
    let call = Message::from_json(CALL, at(4)).unwrap();
    turn(
        &store,
        s.id,
        &[user("two", 3), call],
        Some((r2.as_str(), "{}")),
    )
    .await;
    assert_eq!(
        store.head_response(s.id).await.unwrap().as_deref(),
        Some(r2.as_str())
    );
    // A turn with no response (a /chat/ turn) moves the session past it.
    let result = Message::from_json(RESULT, at(5)).unwrap();
    turn(&store, s.id, &[result, assistant("ok", 6)], None).await;
    assert_eq!(store.head_response(s.id).await.unwrap(), None);
    assert_eq!(
        store.head_response(SessionId::new_v4()).await.unwrap(),
        None
    );
}

async fn a_fork_copies_through_the_response_and_nothing_after<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let (r1, r2, r3) = (
        new_response_id(s.id),
        new_response_id(s.id),
        new_response_id(s.id),
    );
    let call = Message::from_json(CALL, at(4)).unwrap();
    let result = Message::from_json(RESULT, at(5)).unwrap();
    turn(
        &store,
        s.id,
        &[user("one", 1), assistant("first", 2)],
        Some((r1.as_str(), "{}")),
    )
    .await;
    turn(
        &store,
        s.id,
        &[user("two", 3), call.clone()],
        Some((r2.as_str(), "{}")),
    )
    .await;
    turn(
        &store,
        s.id,
        &[result, assistant("after", 6)],
        Some((r3.as_str(), "{}")),
    )
    .await;

    let through = store
        .get_response(r2.as_str())
        .await
        .unwrap()
        .unwrap()
        .through;
    let fork = session(at(10));
    let rf = new_response_id(fork.id);
    store.fork_session(s.id, through, &fork).await.unwrap();
    let copied = store.recent_messages(fork.id, usize::MAX).await.unwrap();
    assert_eq!(
        copied,
        [user("one", 1), assistant("first", 2), user("two", 3), call]
    );
    // The copy is a session of its own: active from its creation, holding
    // no response and no tokens (they were spent by the original).
    let got = store.get_session(fork.id).await.unwrap().expect("forked");
    assert!(got.last_active >= at(10), "{:?}", got.last_active);
    assert_eq!(store.head_response(fork.id).await.unwrap(), None);
    assert_eq!(
        store.session_usage(fork.id).await.unwrap(),
        Usage::default()
    );
    // The original is unchanged, and its responses still point into it.
    assert_eq!(
        store.recent_messages(s.id, usize::MAX).await.unwrap().len(),
        6
    );
    assert_eq!(
        store
            .get_response(r2.as_str())
            .await
            .unwrap()
            .unwrap()
            .session_id,
        s.id
    );
    // A fork's own turn appends after the copy.
    turn(
        &store,
        fork.id,
        &[user("other", 11), assistant("x", 12)],
        Some((rf.as_str(), "{}")),
    )
    .await;
    assert_eq!(
        store.head_response(fork.id).await.unwrap().as_deref(),
        Some(rf.as_str())
    );
    assert_eq!(
        store
            .recent_messages(fork.id, usize::MAX)
            .await
            .unwrap()
            .len(),
        6
    );
    // A fork through a response after a deleted message: its positions
    // keep the gap, and its next turn appends after them.
    assert!(store
        .delete_message(
            s.id,
            MessageCursor::after(all_positions(&store, s.id).await[0])
        )
        .await
        .unwrap());
    let through = store
        .get_response(r2.as_str())
        .await
        .unwrap()
        .unwrap()
        .through;
    let gap = session(at(30));
    store.fork_session(s.id, through, &gap).await.unwrap();
    turn(
        &store,
        gap.id,
        &[user("after the gap", 31), assistant("ok", 32)],
        None,
    )
    .await;
    let after = store.recent_messages(gap.id, usize::MAX).await.unwrap();
    assert_eq!(after.len(), 5, "{after:?}");
    assert_eq!(after[4], assistant("ok", 32));
    // Forking a session that is gone stores nothing.
    let orphan = session(at(20));
    let e = store
        .fork_session(SessionId::new_v4(), MessageCursor::after(0), &orphan)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), chatcore::ErrorKind::SessionNotFound);
    assert!(store.get_session(orphan.id).await.unwrap().is_none());
}

async fn deleting_a_response_keeps_its_turn<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let r1 = new_response_id(s.id);
    turn(
        &store,
        s.id,
        &[user("one", 1), assistant("first", 2)],
        Some((r1.as_str(), "{}")),
    )
    .await;
    assert!(store.delete_response(r1.as_str()).await.unwrap());
    assert!(!store.delete_response(r1.as_str()).await.unwrap());
    assert!(store.get_response(r1.as_str()).await.unwrap().is_none());
    assert_eq!(store.head_response(s.id).await.unwrap(), None);
    assert_eq!(
        store.recent_messages(s.id, usize::MAX).await.unwrap().len(),
        2
    );
}

async fn responses_go_with_their_session<S: Store + 'static>(store: S) {
    let (old, kept, deleted) = (session(t0()), session(t0()), session(t0()));
    for s in [&old, &kept, &deleted] {
        store.insert_session(s).await.unwrap();
    }
    let (rold, rkept, rdel) = (
        new_response_id(old.id),
        new_response_id(kept.id),
        new_response_id(deleted.id),
    );
    turn(
        &store,
        old.id,
        &[user("a", 1), assistant("b", 2)],
        Some((rold.as_str(), "{}")),
    )
    .await;
    turn(
        &store,
        kept.id,
        &[user("a", 1_000), assistant("b", 1_001)],
        Some((rkept.as_str(), "{}")),
    )
    .await;
    turn(
        &store,
        deleted.id,
        &[user("a", 1_000), assistant("b", 1_001)],
        Some((rdel.as_str(), "{}")),
    )
    .await;
    assert!(store.delete_session(deleted.id).await.unwrap());
    store.purge_inactive_before(at(500)).await.unwrap();
    assert!(store.get_response(rold.as_str()).await.unwrap().is_none());
    assert!(store.get_response(rdel.as_str()).await.unwrap().is_none());
    assert!(store.get_response(rkept.as_str()).await.unwrap().is_some());
}

async fn a_deleted_message_leaves_the_others_in_place<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    // Items added one by one (turns of one message), then a text turn.
    turn(&store, s.id, &[user("a", 1)], None).await;
    turn(&store, s.id, &[user("b", 2)], None).await;
    turn(&store, s.id, &[user("c", 3), assistant("d", 4)], None).await;
    let all = store
        .messages_page(s.id, None, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.messages.len(), 4);
    let positions = all.positions.clone();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Pages of one step through every message.
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store.messages_page(s.id, after, 1).await.unwrap().unwrap();
        seen.extend(page.positions.iter().copied());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, positions);

    // Deleting `c` (in a text turn) and `a`: the rest keep their places.
    assert!(store
        .delete_message(s.id, MessageCursor::after(positions[2]))
        .await
        .unwrap());
    assert!(store
        .delete_message(s.id, MessageCursor::after(positions[0]))
        .await
        .unwrap());
    assert!(!store
        .delete_message(s.id, MessageCursor::after(positions[0]))
        .await
        .unwrap());
    let left = store
        .messages_page(s.id, None, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.messages, [user("b", 2), assistant("d", 4)]);
    assert_eq!(left.positions, [positions[1], positions[3]]);
    assert_eq!(
        store.recent_messages(s.id, usize::MAX).await.unwrap(),
        [user("b", 2), assistant("d", 4)]
    );
    // The history a turn loads holds what is left, newest last.
    let (_, history) = store.load_turn_context(s.id, 10).await.unwrap().unwrap();
    assert_eq!(history, [user("b", 2), assistant("d", 4)]);
}

async fn metadata_is_replaced_or_cleared<S: Store + 'static>(store: S) {
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let m = serde_json::json!({"topic": "x"});
    assert!(store.set_metadata(s.id, Some(&m)).await.unwrap());
    assert_eq!(
        store.get_session(s.id).await.unwrap().unwrap().metadata,
        Some(m)
    );
    assert!(store.set_metadata(s.id, None).await.unwrap());
    assert_eq!(
        store.get_session(s.id).await.unwrap().unwrap().metadata,
        None
    );
    assert!(!store.set_metadata(SessionId::new_v4(), None).await.unwrap());
}

async fn all_positions(store: &dyn Store, id: SessionId) -> Vec<i64> {
    store
        .messages_page(id, None, usize::MAX)
        .await
        .unwrap()
        .unwrap()
        .positions
}
