//! Storage at its bounds, on real SQLite files: a database that is full
//! (and then is not), pages of a history read back exactly once in order,
//! a retention sweep larger than one purge batch, reads on the reading
//! connection that see every committed turn, and database files readable
//! by their owner only.

use std::path::Path;
use std::sync::Arc;

use chatcore::{
    ChatCore, Clock, ErrorKind, ManualClock, Message, MessageCursor, MessageRef, NewSession,
    PurgeReport, Role, SessionId, SqliteStore, Store, Turn,
};

use crate::support::{
    assistant, at, new_session, pair, pairs, t0, user, ScriptedModel, DAY, MINUTE,
};

each_backend! {
    "current_thread" => pages_cover_every_message_once_in_order,
    "current_thread" => a_cursor_after_a_user_message_continues_with_its_reply,
    "current_thread" => pages_of_unknown_and_empty_sessions,
    "current_thread" => one_sweep_purges_more_sessions_than_a_batch,
    "multi_thread" => reads_see_every_committed_turn,
}

/// A facade on `store` with a scripted model, `clock`, and limits far
/// from the way.
fn core_with<S: Store + 'static>(
    store: S,
    model: &Arc<ScriptedModel>,
    clock: &Arc<ManualClock>,
) -> ChatCore {
    ChatCore::builder()
        .store(store)
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
        .clock(Arc::clone(clock) as Arc<dyn chatcore::Clock>)
        .messages_per_minute(1_000_000)
        .context_tokens(1_000_000)
        .retention(DAY)
        .build()
        .expect("build the facade")
}

/// A facade on `store` (sessions are made through it, so these tests do
/// not depend on the fields of `Session`) and a new session of its.
async fn core_and_session<S: Store + 'static>(store: S) -> (ChatCore, SessionId) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = core_with(store, &model, &clock);
    let id = new_session(&core).await;
    (core, id)
}

/// Every page of `limit` messages, following `next` from the start.
async fn walk(store: &dyn Store, id: SessionId, limit: usize) -> Vec<Vec<Message>> {
    let mut pages = Vec::new();
    let mut after: Option<MessageCursor> = None;
    loop {
        let page = store
            .messages_page(id, after, limit)
            .await
            .expect("read a page")
            .expect("the session exists");
        assert!(page.messages.len() <= limit, "limit {limit}: {page:?}");
        pages.push(page.messages);
        assert!(
            pages.len() <= 1000,
            "limit {limit}: pagination does not end"
        );
        match page.next {
            Some(next) => {
                assert!(
                    after.is_none_or(|a| next > a),
                    "limit {limit}: the cursor went backwards ({after:?} then {next:?})"
                );
                after = Some(next);
            }
            None => return pages,
        }
    }
}

/// Seven turns for `a` interleaved with turns for `b` (so a backend's own
/// turn keys are not contiguous within a session); returns `a`'s history.
async fn seven_interleaved_turns(store: &dyn Store, a: SessionId, b: SessionId) -> Vec<Message> {
    for i in 0..7i64 {
        let (u, r) = (format!("u{i}"), format!("a{i}"));
        store
            .append_turn(
                a,
                Turn {
                    messages: &[
                        MessageRef {
                            role: Role::User,
                            content: &u,
                            wire: None,
                            created_at: at(10 * i),
                        },
                        MessageRef {
                            role: Role::Assistant,
                            content: &r,
                            wire: None,
                            created_at: at(10 * i + 1),
                        },
                    ],
                    usage: None,
                    target: None,
                    response: None,
                },
            )
            .await
            .expect("append to a");
        let other = format!("other {i}");
        store
            .append_turn(
                b,
                Turn {
                    messages: &[
                        MessageRef {
                            role: Role::User,
                            content: &other,
                            wire: None,
                            created_at: at(10 * i + 2),
                        },
                        MessageRef {
                            role: Role::Assistant,
                            content: &other,
                            wire: None,
                            created_at: at(10 * i + 3),
                        },
                    ],
                    usage: None,
                    target: None,
                    response: None,
                },
            )
            .await
            .expect("append to b");
    }
    let all = store
        .recent_messages(a, usize::MAX)
        .await
        .expect("whole history");
    assert_eq!(all.len(), 14);
    all
}

async fn pages_cover_every_message_once_in_order<S: Store + 'static>(store: S) {
    let (core, a) = core_and_session(store).await;
    let b = new_session(&core).await;
    let store = core.store();
    let all = seven_interleaved_turns(store, a, b).await;
    let expected: Vec<(Role, String)> = (0..7)
        .flat_map(|i| [user(&format!("u{i}")), assistant(&format!("a{i}"))])
        .collect();
    assert_eq!(pairs(&all), expected);

    for limit in [1, 2, 3, 5, 7, 13, 14, 15, 1000] {
        let pages = walk(store, a, limit).await;
        assert_eq!(
            pages.concat(),
            all,
            "limit {limit}: pages are not the history, exactly once, in order"
        );
        assert_eq!(pages.len(), 14usize.div_ceil(limit), "limit {limit}");
        for p in &pages[..pages.len() - 1] {
            assert_eq!(
                p.len(),
                limit,
                "limit {limit}: a short page before the last"
            );
        }
    }
    // The other session's pages hold only its own messages.
    let other = walk(store, b, 4).await.concat();
    assert_eq!(other.len(), 14);
    assert!(other.iter().all(|m| m.content.starts_with("other ")));
}

async fn a_cursor_after_a_user_message_continues_with_its_reply<S: Store + 'static>(store: S) {
    let (core, a) = core_and_session(store).await;
    let b = new_session(&core).await;
    let store = core.store();
    seven_interleaved_turns(store, a, b).await;

    // Three messages end on turn 1's user message.
    let first = store.messages_page(a, None, 3).await.unwrap().unwrap();
    assert_eq!(
        pairs(&first.messages),
        vec![user("u0"), assistant("a0"), user("u1")]
    );
    let cursor = first.next.expect("more to come");
    let second = store
        .messages_page(a, Some(cursor), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pairs(&second.messages),
        vec![assistant("a1"), user("u2"), assistant("a2")]
    );
    assert_eq!(second.messages[0].created_at, at(11));
    // The same cursor read again gives the same page (cursors are stable).
    let again = store
        .messages_page(a, Some(cursor), 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, second);
    // Its text form survives a round trip, as a client hands it back.
    assert_eq!(MessageCursor::parse(&cursor.to_string()), Some(cursor));
    // One message at a time across that boundary.
    let one = store
        .messages_page(a, Some(cursor), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pairs(&one.messages), vec![assistant("a1")]);
    let next = store.messages_page(a, one.next, 1).await.unwrap().unwrap();
    assert_eq!(pairs(&next.messages), vec![user("u2")]);
}

async fn pages_of_unknown_and_empty_sessions<S: Store + 'static>(store: S) {
    let (core, empty) = core_and_session(store).await;
    let store = core.store();
    assert_eq!(
        store
            .messages_page(SessionId::new_v4(), None, 10)
            .await
            .unwrap(),
        None,
        "an unknown session has no page"
    );
    let page = store
        .messages_page(empty, None, 10)
        .await
        .unwrap()
        .expect("a session without messages has an empty page");
    assert!(page.messages.is_empty() && page.next.is_none(), "{page:?}");

    // A cursor past the end reads an empty last page, not an error.
    let s = new_session(&core).await;
    store
        .append_turn(
            s,
            Turn {
                messages: &pair("only", "turn", 1),
                usage: None,
                target: None,
                response: None,
            },
        )
        .await
        .unwrap();
    let whole = store.messages_page(s, None, 2).await.unwrap().unwrap();
    assert_eq!(whole.messages.len(), 2);
    assert_eq!(
        whole.next, None,
        "a page ending at the newest message is the last"
    );
    let first = store.messages_page(s, None, 1).await.unwrap().unwrap();
    let last = store
        .messages_page(s, first.next, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pairs(&last.messages), vec![assistant("turn")]);
    assert_eq!(last.next, None);
    let beyond = store
        .messages_page(s, Some(MessageCursor::after(1 << 40)), 5)
        .await
        .unwrap()
        .expect("the session exists");
    assert!(beyond.messages.is_empty() && beyond.next.is_none());
}

/// Creates `n` sessions now, each with one turn and one piece of feedback.
async fn sessions_with_data(core: &ChatCore, n: usize, tag: &str) -> Vec<SessionId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = new_session(core).await;
        core.anyone().chat(id, &format!("{tag} {i}")).await.unwrap();
        core.anyone()
            .submit_feedback(id, "fine", Some(4))
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn assert_gone(core: &ChatCore, ids: &[SessionId]) {
    let store = core.store();
    for id in ids {
        assert_eq!(store.get_session(*id).await.unwrap(), None);
        assert_eq!(store.messages_page(*id, None, 10).await.unwrap(), None);
        assert!(store.list_feedback(*id).await.unwrap().is_empty());
    }
}

async fn assert_kept(core: &ChatCore, ids: &[SessionId]) {
    let store = core.store();
    for id in ids {
        assert!(store.get_session(*id).await.unwrap().is_some());
        let page = store.messages_page(*id, None, 10).await.unwrap().unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(store.list_feedback(*id).await.unwrap().len(), 1);
    }
}

async fn one_sweep_purges_more_sessions_than_a_batch<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = core_with(store, &model, &clock);
    // 600: two whole batches of 256 and part of a third.
    let old = sessions_with_data(&core, 600, "old").await;
    clock.advance(2 * DAY);
    let recent = sessions_with_data(&core, 10, "recent").await;

    let report = core.sweep().await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            sessions: 600,
            messages: 1200,
            feedback: 600,
            skipped: false
        }
    );
    assert_gone(&core, &old).await;
    assert_kept(&core, &recent).await;
    // A purged session is gone for chat too, not served from memory.
    let err = core.anyone().chat(old[0], "anyone?").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionNotFound);
    assert_eq!(core.sweep().await.unwrap(), PurgeReport::default());

    // Exactly two batches' worth (512): the sweep must not stop after a
    // full batch, nor fail on the empty one after it.
    let more = sessions_with_data(&core, 502, "more").await;
    clock.advance(2 * DAY);
    let fresh = sessions_with_data(&core, 3, "fresh").await;
    let report = core.sweep().await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            sessions: 512,
            messages: 1024,
            feedback: 512,
            skipped: false
        }
    );
    assert_gone(&core, &recent).await;
    assert_gone(&core, &more).await;
    assert_kept(&core, &fresh).await;
}

async fn reads_see_every_committed_turn<S: Store + 'static>(store: S) {
    const SESSIONS: usize = 32;
    const TURNS: usize = 4;
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = core_with(store, &model, &clock);
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        ids.push(
            core.anyone()
                .initialize(NewSession::default())
                .await
                .unwrap()
                .session
                .id,
        );
    }
    // Every turn of this test replies at t0 + 1 min: a session read that
    // shows `last_active` there has seen a committed turn.
    clock.advance(MINUTE);

    let mut tasks = tokio::task::JoinSet::new();
    for (s, id) in ids.iter().copied().enumerate() {
        let core = core.clone();
        tasks.spawn(async move {
            for t in 0..TURNS {
                let text = format!("s{s} t{t}");
                core.anyone().chat(id, &text).await.unwrap();
                // Read straight from the store (not the facade's memory),
                // right after the acknowledgement.
                let page = core
                    .store()
                    .messages_page(id, None, 1000)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    page.messages.len(),
                    2 * (t + 1),
                    "session {s} after turn {t}: {page:?}"
                );
                assert_eq!(page.messages[2 * t].content, text);
                let session = core.store().get_session(id).await.unwrap().unwrap();
                assert_eq!(session.last_active, t0() + MINUTE, "session {s} turn {t}");
            }
        });
    }
    // And turns racing on one session.
    let racing = new_session(&core).await;
    for r in 0..8 {
        let core = core.clone();
        tasks.spawn(async move {
            core.anyone()
                .chat(racing, &format!("race {r}"))
                .await
                .unwrap();
            let page = core
                .store()
                .messages_page(racing, None, 1000)
                .await
                .unwrap()
                .unwrap();
            assert!(
                page.messages
                    .iter()
                    .any(|m| m.content == format!("race {r}")),
                "race {r} acknowledged but not read back"
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    for (s, id) in ids.iter().enumerate() {
        let page = core
            .store()
            .messages_page(*id, None, 1000)
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<(Role, String)> = (0..TURNS)
            .flat_map(|t| {
                let text = format!("s{s} t{t}");
                [user(&text), assistant(&format!("reply to {text}"))]
            })
            .collect();
        assert_eq!(pairs(&page.messages), expected, "session {s}");
    }
    let race = core
        .store()
        .messages_page(racing, None, 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(race.messages.len(), 16);
    for pair in race.messages.chunks(2) {
        assert_eq!(pair[0].role, Role::User);
        assert_eq!(pair[1].content, format!("reply to {}", pair[0].content));
    }
}

/// The file's permission bits.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

#[tokio::test]
async fn a_full_database_fails_turns_as_storage_unavailable_until_room_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path).unwrap();
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = core_with(store.clone(), &model, &clock);
    let id = new_session(&core).await;

    // Each acknowledged turn: its text and when it was stored.
    let mut acked: Vec<(String, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for i in 0..3 {
        clock.advance(MINUTE);
        let text = format!("before the cap {i}");
        core.anyone().chat(id, &text).await.unwrap();
        acked.push((text, clock.now()));
    }

    // No room beyond the pages the file has now.
    store.set_max_size(Some(1)).await.unwrap();
    let mut failure = None;
    for i in 0..10_000 {
        clock.advance(MINUTE);
        let text = format!("while full {i} {}", "x".repeat(200));
        match core.anyone().chat(id, &text).await {
            Ok(_) => acked.push((text, clock.now())),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("no turn failed although the database could not grow");
    assert_eq!(err.kind(), ErrorKind::StorageUnavailable, "{}", err.chain());
    // It stays full: the next turn fails the same way, and reads still work.
    clock.advance(MINUTE);
    let again = core
        .anyone()
        .chat(id, &format!("still full {}", "y".repeat(200)))
        .await
        .unwrap_err();
    assert_eq!(
        again.kind(),
        ErrorKind::StorageUnavailable,
        "{}",
        again.chain()
    );

    // Nothing partial: exactly the acknowledged turns, whole, in order.
    let assert_stored = |stored: &[Message], acked: &[(String, chrono::DateTime<chrono::Utc>)]| {
        assert_eq!(stored.len(), 2 * acked.len(), "{stored:?}");
        for (pair, (text, at)) in stored.chunks(2).zip(acked) {
            assert_eq!(pair[0].role, Role::User);
            assert_eq!(&pair[0].content, text);
            assert_eq!(pair[1].role, Role::Assistant);
            assert_eq!(pair[1].content, format!("reply to {text}"));
            assert_eq!(pair[1].created_at, *at);
        }
    };
    let stored = chatcore::MessageStore::messages_page(&store, id, None, 1000)
        .await
        .unwrap()
        .unwrap()
        .messages;
    assert_stored(&stored, &acked);
    let session = chatcore::SessionStore::get_session(&store, id)
        .await
        .unwrap()
        .unwrap();
    let last_acked = acked.last().unwrap().1;
    assert_eq!(
        session.last_active, last_acked,
        "a failed turn moved last_active"
    );

    // Room again, without reopening: the next turn is stored, and the
    // model saw exactly the acknowledged turns as history.
    store.set_max_size(None).await.unwrap();
    clock.advance(MINUTE);
    core.anyone().chat(id, "room again").await.unwrap();
    acked.push(("room again".to_owned(), clock.now()));
    let seen = model.seen().pop().unwrap();
    let history: Vec<(Role, String)> = acked[..acked.len() - 1]
        .iter()
        .flat_map(|(text, _)| [user(text), assistant(&format!("reply to {text}"))])
        .collect();
    assert_eq!(
        seen.history, history,
        "a failed turn leaked into the history"
    );
    let stored = core.anyone().messages(id).await.unwrap();
    assert_stored(&stored, &acked);

    // And the file holds every acknowledged turn.
    drop(core);
    drop(store);
    let reopened = SqliteStore::open(&path).unwrap();
    let stored = chatcore::MessageStore::messages_page(&reopened, id, None, 1000)
        .await
        .unwrap()
        .unwrap()
        .messages;
    assert_stored(&stored, &acked);
}

#[tokio::test]
async fn a_new_database_and_its_journal_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (_core, _) = core_and_session(SqliteStore::open(&path).unwrap()).await;
    assert_eq!(mode(&path), 0o600, "the database");
    for suffix in ["-wal", "-shm"] {
        let journal = with_suffix(&path, suffix);
        assert!(
            journal.exists(),
            "{} (WAL mode, store open)",
            journal.display()
        );
        assert_eq!(mode(&journal), 0o600, "{}", journal.display());
    }
}

#[tokio::test]
async fn an_existing_world_readable_database_is_made_owner_only_on_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let (core, first) = core_and_session(SqliteStore::open(&path).unwrap()).await;
    drop(core);
    // Another process holds the file open in WAL mode, with a write not
    // yet checkpointed, so the journal files exist too; all are 0644.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE IF NOT EXISTS scratch (x)")
        .unwrap();
    other.execute("INSERT INTO scratch VALUES (1)", []).unwrap();
    let files: Vec<_> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| with_suffix(&path, s))
        .collect();
    for f in &files {
        assert!(f.exists(), "{}", f.display());
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(f), 0o644);
    }

    let store = SqliteStore::open(&path).unwrap();
    for f in &files {
        assert_eq!(
            mode(f),
            0o600,
            "{} was left readable by others",
            f.display()
        );
    }
    // Tightened, not recreated: the data is still there.
    let kept = chatcore::SessionStore::get_session(&store, first)
        .await
        .unwrap()
        .expect("the session survived");
    assert_eq!(kept.id, first);
    drop(other);

    // An empty file someone created with the usual umask, too.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = SqliteStore::open(&empty).unwrap();
    assert_eq!(mode(&empty), 0o600);
}
