//! What a SQLite file keeps: everything written survives dropping the store
//! and reopening the file; an acknowledged turn is already committed; the
//! schema is versioned by `PRAGMA user_version`.

use std::path::Path;
use std::sync::Arc;

use chatcore::{ChatCore, ErrorKind, ManualClock, NewSession, SqliteStore};
use rusqlite::Connection;
use serde_json::json;

use crate::support::{assistant, new_session, pairs, t0, user, ScriptedModel, MINUTE};

fn core_on(path: &Path, model: &Arc<ScriptedModel>, clock: &Arc<ManualClock>) -> ChatCore {
    ChatCore::builder()
        .store(SqliteStore::open(path).unwrap())
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
        .clock(Arc::clone(clock) as Arc<dyn chatcore::Clock>)
        .build()
        .unwrap()
}

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn everything_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));

    let (first, second) = {
        let core = core_on(&path, &model, &clock);
        let first = core
            .anyone()
            .initialize(NewSession {
                system_prompt: Some("Be kind.".into()),
                metadata: Some(json!({"plan": "free", "tags": ["x"]})),
            })
            .await
            .unwrap()
            .session;
        let second = core
            .anyone()
            .initialize(NewSession::default())
            .await
            .unwrap()
            .session;
        clock.advance(MINUTE);
        core.anyone().chat(first.id, "hello").await.unwrap();
        core.anyone().chat(first.id, "how are you?").await.unwrap();
        core.anyone().chat(second.id, "other").await.unwrap();
        core.anyone()
            .submit_feedback(first.id, "Helpful", Some(5))
            .await
            .unwrap();
        core.anyone()
            .submit_feedback(first.id, "Slow", None)
            .await
            .unwrap();
        let first = core.anyone().get(first.id).await.unwrap().session;
        (first, second)
    }; // the facade and its store are dropped here

    let core = core_on(&path, &model, &clock);
    let reread = core.anyone().get(first.id).await.unwrap();
    assert_eq!(reread.session, first);
    assert_eq!(reread.session.last_active, t0() + MINUTE);
    assert_eq!(reread.session.system_prompt.as_deref(), Some("Be kind."));
    assert_eq!(
        pairs(&core.anyone().messages(first.id).await.unwrap()),
        vec![
            user("hello"),
            assistant("reply to hello"),
            user("how are you?"),
            assistant("reply to how are you?"),
        ]
    );
    assert_eq!(core.anyone().messages(second.id).await.unwrap().len(), 2);
    let feedback = core.anyone().feedback(first.id).await.unwrap();
    assert_eq!(feedback.len(), 2);
    assert_eq!(feedback[0].text, "Helpful");
    assert_eq!(feedback[0].rating.map(|r| r.get()), Some(5));
    assert_eq!(
        (feedback[1].text.as_str(), feedback[1].rating),
        ("Slow", None)
    );
    assert_eq!(feedback[0].created_at, t0() + MINUTE);

    // The reopened session carries on with its history and prompt.
    core.anyone().chat(first.id, "still me").await.unwrap();
    let last = model.seen().pop().unwrap();
    assert_eq!(last.system.as_deref(), Some("Be kind."));
    assert_eq!(last.history.len(), 4);
    assert!(user_version(&path) >= 1);
}

#[tokio::test]
async fn an_acknowledged_turn_is_already_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = core_on(&path, &model, &clock);
    let id = new_session(&core).await;
    core.anyone().chat(id, "do not lose me").await.unwrap();

    // Another connection, while the store is still open, sees the turn.
    let conn = Connection::open(&path).unwrap();
    let (n, content): (i64, String) = conn
        .query_row(
            "SELECT 2 * COUNT(*), MIN(user_content) FROM turns WHERE session_id = ?1",
            [id.as_bytes().as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, content.as_str()), (2, "do not lose me"));
}

#[tokio::test]
async fn the_schema_is_versioned_and_reopening_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    drop(SqliteStore::open(&path).unwrap());
    let version = user_version(&path);
    assert!(version >= 1, "user_version is {version}");
    let conn = Connection::open(&path).unwrap();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.retain(|t| !t.starts_with("sqlite_"));
    assert_eq!(tables, ["api_keys", "feedback", "sessions", "turns"]);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    drop(conn);

    // Opening again migrates nothing and loses nothing.
    let store = SqliteStore::open(&path).unwrap();
    chatcore::SessionStore::ping(&store).await.unwrap();
    drop(store);
    assert_eq!(user_version(&path), version);
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    assert!(err.chain().contains("999"), "{}", err.chain());
}

/// The schema as the release before messages of every kind wrote it
/// (version 3): a file from then opens, its turns read as text messages,
/// and turns of any kind follow them in order.
#[tokio::test]
async fn a_version_3_file_migrates_and_its_turns_read_as_text() {
    use chatcore::{Message, MessageStore, Role, SessionStore, Turn};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let id = chatcore::SessionId::new_v4();
    let t = t0().timestamp_millis();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sessions (id BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
                 created_at INTEGER NOT NULL, active_hour INTEGER NOT NULL,
                 system_prompt TEXT, metadata TEXT, owner TEXT);
             CREATE INDEX sessions_by_active_hour ON sessions (active_hour);
             CREATE TABLE turns (seq INTEGER PRIMARY KEY,
                 session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                 user_content TEXT NOT NULL, user_at INTEGER NOT NULL,
                 reply_content TEXT NOT NULL, reply_at INTEGER NOT NULL,
                 prompt_tokens INTEGER, completion_tokens INTEGER);
             CREATE INDEX turns_by_session ON turns (session_id, seq);
             CREATE TABLE feedback (seq INTEGER PRIMARY KEY,
                 session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                 text TEXT NOT NULL, rating INTEGER CHECK (rating BETWEEN 1 AND 5),
                 created_at INTEGER NOT NULL);
             CREATE INDEX feedback_by_session ON feedback (session_id, seq);
             CREATE INDEX sessions_by_owner ON sessions (owner) WHERE owner IS NOT NULL;
             CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                 hash BLOB NOT NULL CHECK (length(hash) = 32), admin INTEGER NOT NULL,
                 created_at INTEGER NOT NULL, revoked_at INTEGER);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sessions (id, created_at, active_hour) VALUES (?1, ?2, 0)",
            rusqlite::params![&id.as_bytes()[..], t],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO turns (session_id, user_content, user_at, reply_content, reply_at, prompt_tokens, completion_tokens) VALUES (?1, 'old question', ?2, 'old answer', ?3, 10, 2)",
            rusqlite::params![&id.as_bytes()[..], t, t + 1000],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert!(user_version(&path) >= 4);
    assert_eq!(
        pairs(&store.recent_messages(id, usize::MAX).await.unwrap()),
        vec![user("old question"), assistant("old answer")]
    );
    let at = t0() + chrono::Duration::seconds(5);
    let call = Message::from_json(
        r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        at,
    )
    .unwrap();
    let turn = [Message::text(Role::User, "new question", at), call.clone()];
    let refs: Vec<_> = turn.iter().map(Message::view).collect();
    store
        .append_turn(
            id,
            Turn {
                messages: &refs,
                usage: None,
                target: None,
                response: None,
            },
        )
        .await
        .unwrap();
    let all = store.recent_messages(id, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3], call);
    assert_eq!(store.session_usage(id).await.unwrap().prompt_tokens, 10);
    assert_eq!(
        store.get_session(id).await.unwrap().unwrap().last_active,
        at
    );
}
