//! Stores shared by several gateways (PostgreSQL, with the `postgres`
//! feature and `CHATGATE_TEST_POSTGRES_URL`): turn claims, the sweep
//! lease, concurrent migrations, and two facades on one database behaving
//! as one. Each test gets a schema of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{
    ChatCore, Claim, ErrorKind, HistoryVersion, MessageCursor, MessageStore, NewSession,
    PostgresOptions, PostgresStore, PurgeReport, Role, Session, SessionId, SessionStore,
    TurnClaims, TurnToken,
};

use crate::support::pg::TestSchema;
use crate::support::{
    assistant, at, new_session, pairs, session, t0, user, wait_until, ScriptedModel,
};

/// Runs each listed `async fn name(schema: TestSchema)` on a fresh schema,
/// or skips it (passing) when no test server is configured.
macro_rules! on_postgres {
    ($($flavor:tt => $name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = $flavor)]
                async fn $name() {
                    let Some(schema) = crate::support::pg::TestSchema::new() else {
                        return;
                    };
                    super::$name(schema).await;
                }
            )*
        }
    };
}

on_postgres! {
    "current_thread" => a_version_1_schema_migrates_and_its_messages_read_as_text,
    "current_thread" => a_postgres_store_says_it_is_shared,
    "current_thread" => a_claim_excludes_other_turns_until_released,
    "current_thread" => a_claim_lapses_after_its_ttl_and_fences_its_old_holder,
    "current_thread" => a_lapsed_claim_nobody_took_still_stores,
    "current_thread" => claims_on_a_missing_session,
    "current_thread" => a_statement_past_its_timeout_is_unavailable,
    "current_thread" => every_statement_is_logged,
    "multi_thread" => the_sweep_runs_on_one_store_at_a_time,
    "multi_thread" => concurrent_migrations_migrate_once,
    "multi_thread" => two_facades_store_one_sessions_turns_one_after_another,
    "multi_thread" => a_turn_waits_out_a_dead_gateways_claim,
    "multi_thread" => a_claim_that_waited_on_an_append_sees_its_messages,
    "multi_thread" => a_turn_longer_than_the_claim_ttl_keeps_its_claim,
    "multi_thread" => a_refused_message_does_not_wait_for_the_claim,
    "current_thread" => a_claim_reads_no_messages_while_the_history_is_at_the_version_named,
    "current_thread" => a_history_restored_and_moved_on_differently_is_read_again,
    "current_thread" => claims_run_on_connections_of_their_own,
    "multi_thread" => a_claim_that_waited_on_a_deletion_reads_the_messages_again,
    "multi_thread" => a_gateway_keeps_a_history_until_another_moves_it_on,
    "current_thread" => appends_waiting_together_commit_in_one_statement_and_fail_alone,
    "current_thread" => claims_waiting_together_go_as_one_statement,
    "multi_thread" => a_batch_held_up_on_a_row_lock_holds_up_no_other_session,
    "multi_thread" => the_store_vacuums_sessions_once_enough_turns_are_stored,
}

const TTL: Duration = Duration::from_secs(10);

/// The claim's history, or a panic saying what came instead.
fn held(claim: Claim) -> (Session, Vec<chatcore::Message>) {
    match claim {
        Claim::Held(session, history, _) => (session, history),
        other => panic!("expected the claim to be held, got {other:?}"),
    }
}

async fn a_postgres_store_says_it_is_shared(schema: TestSchema) {
    let store = schema.store().await;
    assert_eq!(store.backend(), "postgres");
    assert!(store.claims().is_some());
    store.ping().await.unwrap();

    // A server out of reach is unavailable (503), not a storage bug.
    let nowhere = PostgresStore::connect(PostgresOptions {
        url: "postgres://postgres@127.0.0.1:1/none".into(),
        connect_timeout: Duration::from_secs(1),
        ..PostgresOptions::default()
    })
    .await
    .unwrap_err();
    assert_eq!(nowhere.kind(), ErrorKind::StorageUnavailable, "{nowhere:?}");
    let bad_schema = PostgresStore::connect(PostgresOptions {
        schema: Some("x; DROP TABLE sessions".into()),
        ..schema.options()
    })
    .await
    .unwrap_err();
    assert_eq!(bad_schema.kind(), ErrorKind::InvalidInput);
}

async fn a_claim_excludes_other_turns_until_released(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store.append_turn(s.id, turn!("u0", "a0", 0)).await.unwrap();
    let (a, b) = (TurnToken::new(), TurnToken::new());

    let (got, history) = held(store.claim_turn(s.id, a, TTL, 10).await.unwrap());
    assert_eq!(got.id, s.id);
    assert_eq!(got.last_active, at(1));
    assert_eq!(pairs(&history), vec![user("u0"), assistant("a0")]);
    assert!(matches!(
        store.claim_turn(s.id, b, TTL, 10).await.unwrap(),
        Claim::Busy(_)
    ));
    // The holder may claim again (a retry of its own request).
    held(store.claim_turn(s.id, a, TTL, 1).await.unwrap());

    assert!(store.renew_claim(s.id, a, TTL).await.unwrap());
    assert!(!store.renew_claim(s.id, b, TTL).await.unwrap());
    // Releasing a claim one does not hold changes nothing.
    store.release_claim(s.id, b).await.unwrap();
    assert!(matches!(
        store.claim_turn(s.id, b, TTL, 10).await.unwrap(),
        Claim::Busy(_)
    ));

    store.release_claim(s.id, a).await.unwrap();
    held(store.claim_turn(s.id, b, TTL, 10).await.unwrap());
    assert!(!store.renew_claim(s.id, a, TTL).await.unwrap());

    // A claimed append stores the turn and frees the session at once.
    store
        .append_claimed_turn(s.id, b, turn!("u1", "a1", 10))
        .await
        .unwrap();
    let (got, history) = held(store.claim_turn(s.id, a, TTL, 3).await.unwrap());
    assert_eq!(got.last_active, at(11));
    assert_eq!(
        pairs(&history),
        vec![assistant("a0"), user("u1"), assistant("a1")]
    );
}

async fn a_claim_lapses_after_its_ttl_and_fences_its_old_holder(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let (dead, next) = (TurnToken::new(), TurnToken::new());
    // Long enough for the next statement to find it held on a slow
    // machine, short enough to wait out.
    held(
        store
            .claim_turn(s.id, dead, Duration::from_secs(2), 10)
            .await
            .unwrap(),
    );
    assert!(matches!(
        store.claim_turn(s.id, next, TTL, 10).await.unwrap(),
        Claim::Busy(_)
    ));
    // Busy until the claim lapses; then the next turn takes it.
    let (store_ref, id) = (&store, s.id);
    wait_until(
        Duration::from_secs(20),
        "the dead holder's claim to lapse",
        || async move {
            match store_ref.claim_turn(id, next, TTL, 10).await.unwrap() {
                Claim::Held(..) => true,
                Claim::Busy(_) => false,
                other => panic!("expected busy, then held; got {other:?}"),
            }
        },
    )
    .await;

    // The old holder comes back: its claim is gone, and so is its turn.
    assert!(!store.renew_claim(s.id, dead, TTL).await.unwrap());
    let err = store
        .append_claimed_turn(s.id, dead, turn!("late", "stale", 5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageUnavailable, "{err:?}");
    assert!(store
        .recent_messages(s.id, usize::MAX)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.get_session(s.id).await.unwrap().unwrap().last_active,
        t0()
    );

    store
        .append_claimed_turn(s.id, next, turn!("u", "a", 10))
        .await
        .unwrap();
    assert_eq!(store.recent_messages(s.id, 10).await.unwrap().len(), 2);
}

async fn a_lapsed_claim_nobody_took_still_stores(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let slow = TurnToken::new();
    held(
        store
            .claim_turn(s.id, slow, Duration::from_millis(100), 10)
            .await
            .unwrap(),
    );
    // Wait (on the database's clock) until the claim has lapsed.
    let raw = schema.raw().await;
    let (raw, id) = (&raw, s.id);
    wait_until(
        Duration::from_secs(20),
        "the claim to lapse",
        || async move {
            raw.query_one(
                "SELECT claim_until < clock_timestamp() FROM sessions WHERE id = $1",
                &[id.as_uuid()],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        },
    )
    .await;
    // Nothing was stored since it read the history: the turn is still good.
    store
        .append_claimed_turn(s.id, slow, turn!("u", "a", 1))
        .await
        .unwrap();
    assert_eq!(store.recent_messages(s.id, 10).await.unwrap().len(), 2);
}

async fn claims_on_a_missing_session(schema: TestSchema) {
    let store = schema.store().await;
    let missing = SessionId::new_v4();
    let token = TurnToken::new();
    assert_eq!(
        store.claim_turn(missing, token, TTL, 10).await.unwrap(),
        Claim::Missing
    );
    assert!(!store.renew_claim(missing, token, TTL).await.unwrap());
    store.release_claim(missing, token).await.unwrap();
    let err = store
        .append_claimed_turn(missing, token, turn!("u", "a", 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionNotFound);
}

async fn a_statement_past_its_timeout_is_unavailable(schema: TestSchema) {
    let store = PostgresStore::connect(PostgresOptions {
        statement_timeout: Duration::from_millis(200),
        ..schema.options()
    })
    .await
    .unwrap();
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    // Another connection holds the session's row: the turn's statement
    // waits on it until the statement timeout ends it.
    let mut raw = schema.raw().await;
    let blocker = raw.transaction().await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    let err = store
        .append_turn(s.id, turn!("u", "a", 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageUnavailable, "{}", err.chain());
    blocker.rollback().await.unwrap();
    assert!(store.recent_messages(s.id, 10).await.unwrap().is_empty());
    store.append_turn(s.id, turn!("u", "a", 1)).await.unwrap();
}

/// Counts the records logged with the message `sql`.
#[derive(Debug, Default, Clone)]
struct SqlLines(Arc<std::sync::atomic::AtomicUsize>);

impl slog::Drain for SqlLines {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.msg().to_string() == "sql" {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

async fn every_statement_is_logged(schema: TestSchema) {
    let lines = SqlLines::default();
    let store = PostgresStore::connect(PostgresOptions {
        sql_logger: Some(slog::Logger::root(lines.clone(), slog::o!())),
        ..schema.options()
    })
    .await
    .unwrap();
    let count = || lines.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(count() > 0, "the migration's statements");
    let before = count();
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store.append_turn(s.id, turn!("u", "a", 1)).await.unwrap();
    store.get_session(s.id).await.unwrap();
    assert_eq!(count() - before, 3, "one line per statement");
}

async fn the_sweep_runs_on_one_store_at_a_time(schema: TestSchema) {
    let (a, b) = (schema.store().await, schema.store().await);
    let old = session(t0());
    a.insert_session(&old).await.unwrap();

    // Another gateway is sweeping: this one skips, and deletes nothing.
    let raw = schema.raw().await;
    raw.execute(
        "INSERT INTO chatgate_leases (name, holder, until) VALUES ('sweep', $1, clock_timestamp() + interval '1 minute')",
        &[&uuid::Uuid::new_v4()],
    )
    .await
    .unwrap();
    let report = a.purge_inactive_before(at(60)).await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            skipped: true,
            ..PurgeReport::default()
        }
    );
    assert!(a.get_session(old.id).await.unwrap().is_some());

    // Its lease lapses (that gateway died): the next sweep takes over.
    raw.execute(
        "UPDATE chatgate_leases SET until = clock_timestamp() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let report = b.purge_inactive_before(at(60)).await.unwrap();
    assert_eq!((report.sessions, report.skipped), (1, false));

    // Two gateways sweeping at once: one does all the work, the other
    // skips or (coming after) finds nothing left; the lease is released.
    for _ in 0..300 {
        a.insert_session(&session(t0())).await.unwrap();
    }
    let (ra, rb) = tokio::join!(
        a.purge_inactive_before(at(60)),
        b.purge_inactive_before(at(60))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.sessions + rb.sessions, 300, "{ra:?} {rb:?}");
    assert_eq!(ra.sessions.max(rb.sessions), 300, "{ra:?} {rb:?}");
    let leases: i64 = raw
        .query_one("SELECT count(*) FROM chatgate_leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 0, "a finished sweep releases its lease");
}

async fn concurrent_migrations_migrate_once(schema: TestSchema) {
    let schema = Arc::new(schema);
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let schema = Arc::clone(&schema);
        starting.spawn(async move { PostgresStore::connect(schema.options()).await });
    }
    let mut stores = Vec::new();
    while let Some(started) = starting.join_next().await {
        stores.push(started.unwrap().unwrap());
    }
    let raw = schema.raw().await;
    let row = raw
        .query_one("SELECT count(*), max(version) FROM chatgate_schema", &[])
        .await
        .unwrap();
    let (rows, version): (i64, i32) = (row.get(0), row.get(1));
    assert_eq!((rows, version), (1, PostgresStore::SCHEMA_VERSION));
    // Each of them works on the one schema.
    let s = session(t0());
    stores[0].insert_session(&s).await.unwrap();
    for store in &stores {
        assert!(store.get_session(s.id).await.unwrap().is_some());
    }
}

/// A facade on `store` sharing `model`, with limits out of the way.
fn facade(store: PostgresStore, model: &Arc<ScriptedModel>) -> ChatCore {
    ChatCore::builder()
        .store(store)
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
        .messages_per_minute(1_000)
        .context_tokens(1_000_000)
        .turn_claim_ttl(Duration::from_secs(5))
        .build()
        .expect("build the facade")
}

async fn two_facades_store_one_sessions_turns_one_after_another(schema: TestSchema) {
    // A slow model, so that turns sent to both gateways at once overlap.
    let model = ScriptedModel::new()
        .with_delay(|_| Duration::from_millis(20))
        .shared();
    let a = facade(schema.store().await, &model);
    let b = facade(schema.store().await, &model);
    let id = new_session(&a).await;

    let mut turns = tokio::task::JoinSet::new();
    for i in 0..10 {
        let core = if i % 2 == 0 { a.clone() } else { b.clone() };
        turns.spawn(async move { core.anyone().chat(id, &format!("m{i}")).await });
    }
    while let Some(done) = turns.join_next().await {
        done.unwrap().unwrap();
    }

    let stored = b.store().recent_messages(id, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), 20);
    let seen = model.seen();
    assert_eq!(seen.len(), 10);
    for (k, pair) in stored.chunks(2).enumerate() {
        assert_eq!(pair[0].role, Role::User, "{stored:?}");
        assert_eq!(pair[1].role, Role::Assistant, "{stored:?}");
        assert_eq!(pair[1].content, format!("reply to {}", pair[0].content));
        // The k-th turn stored saw every turn stored before it.
        let call = seen.iter().find(|s| s.user == pair[0].content).unwrap();
        assert_eq!(call.history.len(), 2 * k, "turn {k}: {call:?}");
        assert_eq!(call.history[..], pairs(&stored[..2 * k])[..]);
    }
}

async fn a_turn_waits_out_a_dead_gateways_claim(schema: TestSchema) {
    let dead = schema.store().await;
    let model = ScriptedModel::new().shared();
    let core = facade(schema.store().await, &model);
    let id = new_session(&core).await;
    // A gateway claimed the session and died: nobody renews its claim.
    let ttl = Duration::from_millis(300);
    // Taken before the claim: its lifetime counts from when the server ran
    // it, which a slow reply could put well before a later reading.
    let started = Instant::now();
    held(
        dead.claim_turn(id, TurnToken::new(), ttl, 10)
            .await
            .unwrap(),
    );

    let reply = core.anyone().chat(id, "anyone there?").await.unwrap();
    assert!(started.elapsed() >= ttl - Duration::from_millis(50));
    assert_eq!(reply.content, "reply to anyone there?");
    assert_eq!(
        pairs(&dead.recent_messages(id, usize::MAX).await.unwrap()),
        vec![user("anyone there?"), assistant("reply to anyone there?")]
    );
}

/// The claim reads the session's row as updated but its messages as of
/// the statement's start: when it waited on the previous turn's append,
/// that turn's messages must still be in the history it returns.
async fn a_claim_that_waited_on_an_append_sees_its_messages(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store
        .append_turn(s.id, turn!("first", "reply one", 1))
        .await
        .unwrap();
    // The previous turn's append, in flight: the row updated and the
    // messages inserted, not yet committed.
    let mut raw = schema.raw().await;
    let append = raw.transaction().await.unwrap();
    let appender: i32 = append
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    append
        .execute(
            "UPDATE sessions SET turns = turns + 1, messages = messages + 2, claim = NULL, claim_until = NULL WHERE id = $1",
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    append
        .execute(
            "INSERT INTO messages (session_id, position, role, content, created_at) VALUES \
             ($1, 2, 'user', 'second', now()), ($1, 3, 'assistant', 'reply two', now())",
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    let claimer = {
        let store = store.clone();
        tokio::spawn(async move { store.claim_turn(s.id, TurnToken::new(), TTL, 10).await })
    };
    // Wait until the claim waits on the append's row lock (as another
    // connection sees it), then commit the append.
    let watcher = schema.raw().await;
    wait_blocked_by(
        &watcher,
        appender,
        "the claim to wait on the append's row lock",
    )
    .await;
    assert!(
        !claimer.is_finished(),
        "the claim should wait on the row lock"
    );
    append.commit().await.unwrap();
    let (_, history) = held(claimer.await.unwrap().unwrap());
    assert_eq!(
        pairs(&history),
        vec![
            user("first"),
            assistant("reply one"),
            user("second"),
            assistant("reply two")
        ]
    );
}

/// A facade whose claims last `ttl` unless renewed.
fn facade_with_ttl(store: PostgresStore, model: &Arc<ScriptedModel>, ttl: Duration) -> ChatCore {
    ChatCore::builder()
        .store(store)
        .shared_model(Arc::clone(model) as Arc<dyn chatcore::ChatModel>)
        .messages_per_minute(1_000)
        .context_tokens(1_000_000)
        .turn_claim_ttl(ttl)
        .build()
        .expect("build the facade")
}

/// A turn whose model call outlasts several claim lifetimes keeps its
/// claim (renewed while it runs): a turn on another gateway waits for it,
/// and both are stored, the slow one first.
async fn a_turn_longer_than_the_claim_ttl_keeps_its_claim(schema: TestSchema) {
    // Renewed every third of its lifetime: a renewal may come a second
    // late on a slow machine and the claim still holds.
    let ttl = Duration::from_secs(2);
    let slow = ScriptedModel::new()
        .with_delay(|m| {
            if m == "slow" {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            }
        })
        .shared();
    let a = facade_with_ttl(schema.store().await, &slow, ttl);
    let b = facade_with_ttl(schema.store().await, &slow, ttl);
    let id = new_session(&a).await;
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.anyone().chat(id, "slow").await }
    });
    // The slow turn holds the claim once its model call has started.
    let model = &slow;
    wait_until(
        Duration::from_secs(20),
        "the slow turn's model call",
        || async move { model.calls() == 1 },
    )
    .await;
    b.anyone().chat(id, "after").await.unwrap();
    // Without renewal the claim would lapse at 2 s, "after" would be
    // stored first, and the slow turn's append would be refused.
    first.await.unwrap().unwrap();
    let store = schema.store().await;
    assert_eq!(
        pairs(&store.recent_messages(id, usize::MAX).await.unwrap()),
        vec![
            user("slow"),
            assistant("reply to slow"),
            user("after"),
            assistant("reply to after")
        ]
    );
}

/// While another gateway's turn holds the session, a message over quota
/// is refused at once rather than after that turn.
async fn a_refused_message_does_not_wait_for_the_claim(schema: TestSchema) {
    let model = ScriptedModel::new().shared();
    let limited = ChatCore::builder()
        .store(schema.store().await)
        .shared_model(Arc::clone(&model) as Arc<dyn chatcore::ChatModel>)
        .messages_per_minute(1)
        .build()
        .unwrap();
    let id = limited
        .anyone()
        .initialize(NewSession::default())
        .await
        .unwrap()
        .session
        .id;
    limited.anyone().chat(id, "one").await.unwrap();
    // Another gateway's turn holds the session for 10 s.
    let holder = schema.store().await;
    held(
        holder
            .claim_turn(id, TurnToken::new(), Duration::from_secs(10), 10)
            .await
            .unwrap(),
    );
    let started = Instant::now();
    let err = limited.anyone().chat(id, "two").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The schema as the release before messages of every kind wrote it
/// (version 1): its messages read as text, and a turn of any kind takes
/// the positions after them.
async fn a_version_1_schema_migrates_and_its_messages_read_as_text(schema: TestSchema) {
    use chatcore::{Message, Turn};
    let raw = schema.raw().await;
    raw.batch_execute(&format!(
        "CREATE SCHEMA {name}; SET search_path TO {name};
         CREATE TABLE sessions (id uuid PRIMARY KEY, created_at timestamptz NOT NULL,
             last_active timestamptz NOT NULL, system_prompt text, metadata jsonb, owner text,
             turns bigint NOT NULL DEFAULT 0, claim uuid, claim_until timestamptz);
         CREATE INDEX sessions_by_last_active ON sessions (last_active, id);
         CREATE INDEX sessions_by_owner ON sessions (owner, last_active, id) WHERE owner IS NOT NULL;
         CREATE TABLE messages (session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
             position bigint NOT NULL, role text NOT NULL CHECK (role IN ('user', 'assistant')),
             content text NOT NULL, created_at timestamptz NOT NULL,
             prompt_tokens bigint, completion_tokens bigint, PRIMARY KEY (session_id, position));
         CREATE TABLE feedback (id bigserial PRIMARY KEY,
             session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
             text text NOT NULL, rating smallint CHECK (rating BETWEEN 1 AND 5),
             created_at timestamptz NOT NULL);
         CREATE INDEX feedback_by_session ON feedback (session_id, id);
         CREATE TABLE api_keys (id text PRIMARY KEY, name text NOT NULL,
             hash bytea NOT NULL CHECK (octet_length(hash) = 32), admin boolean NOT NULL,
             created_at timestamptz NOT NULL, revoked_at timestamptz);
         CREATE TABLE chatgate_leases (name text PRIMARY KEY, holder uuid NOT NULL,
             until timestamptz NOT NULL);
         CREATE TABLE chatgate_schema (version integer NOT NULL);
         INSERT INTO chatgate_schema (version) VALUES (1);",
        name = schema.name
    ))
    .await
    .unwrap();
    let s = session(t0());
    raw.execute(
        "INSERT INTO sessions (id, created_at, last_active, turns) VALUES ($1, $2, $3, 1)",
        &[s.id.as_uuid(), &t0(), &at(1)],
    )
    .await
    .unwrap();
    raw.execute(
        "INSERT INTO messages (session_id, position, role, content, created_at, prompt_tokens, completion_tokens) \
         VALUES ($1, 0, 'user', 'old question', $2, NULL, NULL), ($1, 1, 'assistant', 'old answer', $3, 10, 2)",
        &[s.id.as_uuid(), &t0(), &at(1)],
    )
    .await
    .unwrap();
    let store = schema.store().await;
    assert_eq!(
        pairs(&store.recent_messages(s.id, usize::MAX).await.unwrap()),
        vec![user("old question"), assistant("old answer")]
    );
    let result = Message::from_json(
        r#"{"role":"tool","tool_call_id":"c","content":"42"}"#,
        at(5),
    )
    .unwrap();
    let turn = [
        result.clone(),
        Message::text(Role::User, "and?", at(5)),
        Message::text(Role::Assistant, "done", at(6)),
    ];
    let refs: Vec<_> = turn.iter().map(Message::view).collect();
    store
        .append_turn(
            s.id,
            Turn {
                messages: &refs,
                usage: None,
                target: None,
                response: None,
            },
        )
        .await
        .unwrap();
    let all = store.recent_messages(s.id, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[2], result);
    let positions: Vec<i64> = raw
        .query("SELECT position FROM messages ORDER BY position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(positions, [0, 1, 2, 3, 4]);
    let page = store.messages_page(s.id, None, 3).await.unwrap().unwrap();
    let rest = store
        .messages_page(s.id, page.next, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!([page.messages, rest.messages].concat(), all);
}

/// The claim's session and the history's version, the messages having
/// been read; or a panic saying what came instead.
fn held_at(claim: Claim) -> (Vec<chatcore::Message>, HistoryVersion) {
    match claim {
        Claim::Held(_, history, version) => (history, version),
        other => panic!("expected the claim to be held with its messages, got {other:?}"),
    }
}

async fn a_claim_reads_no_messages_while_the_history_is_at_the_version_named(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store.append_turn(s.id, turn!("u0", "a0", 0)).await.unwrap();
    let [a, b, c, d, e, f] = [(); 6].map(|_| TurnToken::new());

    let (history, first) = held_at(
        store
            .claim_turn_since(s.id, a, TTL, 10, None)
            .await
            .unwrap(),
    );
    assert_eq!(pairs(&history), vec![user("u0"), assistant("a0")]);
    assert_eq!(first.appended, 2);
    store
        .append_claimed_turn(s.id, a, turn!("u1", "a1", 10))
        .await
        .unwrap();
    let stored = first.then(a, 2);

    // Whoever stored that turn knows the history as it now is: it gets the
    // session, and no messages, with the session as updated.
    match store
        .claim_turn_since(s.id, b, TTL, 10, Some(stored))
        .await
        .unwrap()
    {
        Claim::Current(got) => assert_eq!(got.last_active, at(11)),
        other => panic!("expected the history current, got {other:?}"),
    }
    // Held all the same: no other turn gets in.
    assert!(matches!(
        store
            .claim_turn_since(s.id, c, TTL, 10, Some(stored))
            .await
            .unwrap(),
        Claim::Busy(_)
    ));
    store.release_claim(s.id, b).await.unwrap();

    // A gateway that knew it before that turn reads it again.
    let (history, v) = held_at(
        store
            .claim_turn_since(s.id, c, TTL, 10, Some(first))
            .await
            .unwrap(),
    );
    assert_eq!(history.len(), 4);
    assert_eq!(v, stored);
    store.release_claim(s.id, c).await.unwrap();

    // A deletion moves the version: the same count of messages appended
    // no longer means the same history.
    assert!(store
        .delete_message(s.id, MessageCursor::after(1))
        .await
        .unwrap());
    let (history, deleted) = held_at(
        store
            .claim_turn_since(s.id, d, TTL, 10, Some(stored))
            .await
            .unwrap(),
    );
    assert_eq!(
        pairs(&history),
        vec![user("u0"), user("u1"), assistant("a1")]
    );
    assert_eq!(deleted.appended, 4);
    assert_ne!(deleted, stored);
    store.release_claim(s.id, d).await.unwrap();

    // Deleting nothing changes nothing.
    assert!(!store
        .delete_message(s.id, MessageCursor::after(1))
        .await
        .unwrap());
    assert!(matches!(
        store
            .claim_turn_since(s.id, e, TTL, 10, Some(deleted))
            .await
            .unwrap(),
        Claim::Current(_)
    ));
    store.release_claim(s.id, e).await.unwrap();
    assert!(matches!(
        store
            .claim_turn_since(SessionId::new_v4(), f, TTL, 10, Some(deleted))
            .await
            .unwrap(),
        Claim::Missing
    ));
}

/// A database taken back in time (restored, or failed over to a standby
/// that missed commits) may move a session on again from an earlier
/// point: as many messages as a gateway knew, but others. Each change has
/// an id of its own, so that gateway's version no longer stands.
async fn a_history_restored_and_moved_on_differently_is_read_again(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let (a, b, c) = (TurnToken::new(), TurnToken::new(), TurnToken::new());
    let (_, before) = held_at(
        store
            .claim_turn_since(s.id, a, TTL, 10, None)
            .await
            .unwrap(),
    );
    store
        .append_claimed_turn(s.id, a, turn!("lost", "lost reply", 1))
        .await
        .unwrap();
    let known = before.then(a, 2);
    // The restore: the turn is gone, and the session is as it was.
    let raw = schema.raw().await;
    raw.execute(
        "DELETE FROM messages WHERE session_id = $1",
        &[s.id.as_uuid()],
    )
    .await
    .unwrap();
    raw.execute(
        "UPDATE sessions SET messages = 0, turns = 0, head = $2 WHERE id = $1",
        &[s.id.as_uuid(), &before.head],
    )
    .await
    .unwrap();
    // Another gateway's turn moves it on to as many messages.
    held_at(
        store
            .claim_turn_since(s.id, b, TTL, 10, None)
            .await
            .unwrap(),
    );
    store
        .append_claimed_turn(s.id, b, turn!("kept", "kept reply", 2))
        .await
        .unwrap();
    let (history, v) = held_at(
        store
            .claim_turn_since(s.id, c, TTL, 10, Some(known))
            .await
            .unwrap(),
    );
    assert_eq!(pairs(&history), vec![user("kept"), assistant("kept reply")]);
    assert_eq!(v.appended, known.appended);
    assert_ne!(v, known);
}

/// As an append, a deletion in flight when a claim begins is seen by the
/// claim's update and not by its read of the messages: the claim must not
/// name the new version with the old messages.
async fn a_claim_that_waited_on_a_deletion_reads_the_messages_again(schema: TestSchema) {
    let store = schema.store().await;
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    store
        .append_turn(s.id, turn!("first", "reply one", 1))
        .await
        .unwrap();
    let token = TurnToken::new();
    let (_, known) = held_at(
        store
            .claim_turn_since(s.id, token, TTL, 10, None)
            .await
            .unwrap(),
    );
    store.release_claim(s.id, token).await.unwrap();
    // A deletion, in flight, in the order the store's statement takes its
    // locks: the session's row (its new head), then the message.
    let mut raw = schema.raw().await;
    let deletion = raw.transaction().await.unwrap();
    let deleter: i32 = deletion
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    deletion
        .execute(
            "UPDATE sessions SET head = gen_random_uuid() WHERE id = $1",
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    deletion
        .execute(
            "DELETE FROM messages WHERE session_id = $1 AND position = 0",
            &[s.id.as_uuid()],
        )
        .await
        .unwrap();
    let claimer = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .claim_turn_since(s.id, TurnToken::new(), TTL, 10, Some(known))
                .await
        })
    };
    let watcher = schema.raw().await;
    wait_blocked_by(
        &watcher,
        deleter,
        "the claim to wait on the deletion's row lock",
    )
    .await;
    deletion.commit().await.unwrap();
    let (history, v) = held_at(claimer.await.unwrap().unwrap());
    assert_eq!(pairs(&history), vec![assistant("reply one")]);
    assert_eq!(v.appended, 2);
    assert_ne!(v, known);
}

/// A gateway keeps the history it stored and, while no other gateway moves
/// the session on, sends it as it knows it; a turn or a deletion made
/// through another gateway is read before its next turn.
async fn a_gateway_keeps_a_history_until_another_moves_it_on(schema: TestSchema) {
    let model = ScriptedModel::new().shared();
    let a = facade(schema.store().await, &model);
    let b = facade(schema.store().await, &model);
    let id = new_session(&a).await;
    a.anyone().chat(id, "one").await.unwrap();
    assert_eq!(a.cached_sessions(), 1);

    // Changed behind every gateway's back, not through the store: only a
    // turn that reads the messages sees it. Gateway A has kept them.
    let raw = schema.raw().await;
    raw.execute(
        "UPDATE messages SET content = 'ONE' WHERE session_id = $1 AND position = 0",
        &[id.as_uuid()],
    )
    .await
    .unwrap();
    a.anyone().chat(id, "two").await.unwrap();
    let last = |model: &ScriptedModel| model.seen().last().unwrap().history.clone();
    assert_eq!(
        last(&model),
        vec![user("one"), assistant("reply to one")],
        "A sends the history it kept"
    );

    // A turn through B (which reads the messages, having none kept) moves
    // the session on; A reads it before its next turn.
    b.anyone().chat(id, "three").await.unwrap();
    assert_eq!(last(&model)[0], user("ONE"));
    a.anyone().chat(id, "four").await.unwrap();
    assert_eq!(
        last(&model),
        vec![
            user("ONE"),
            assistant("reply to one"),
            user("two"),
            assistant("reply to two"),
            user("three"),
            assistant("reply to three"),
        ]
    );

    // So does an item deleted through B.
    assert!(b
        .anyone()
        .delete_item(id, MessageCursor::after(1))
        .await
        .unwrap());
    a.anyone().chat(id, "five").await.unwrap();
    let history = last(&model);
    assert_eq!(history.len(), 7, "{history:?}");
    assert_eq!(history[0], user("ONE"));
    assert_eq!(history[1], user("two"));
}

/// Claims, and only claims, run on the connections that commit without
/// waiting for the disk: named apart, so `pg_stat_activity` tells which
/// connection ran what.
async fn claims_run_on_connections_of_their_own(schema: TestSchema) {
    let name = format!("t{}", &SessionId::new_v4().to_string()[..8]);
    let url = format!(
        "{}{}application_name={name}",
        schema.options().url,
        if schema.options().url.contains('?') {
            '&'
        } else {
            '?'
        }
    );
    let store = PostgresStore::connect(PostgresOptions {
        url,
        ..schema.options()
    })
    .await
    .unwrap();
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    let token = TurnToken::new();
    held(store.claim_turn(s.id, token, TTL, 10).await.unwrap());
    store
        .append_claimed_turn(s.id, token, turn!("u", "a", 1))
        .await
        .unwrap();
    // What each of this store's connections ran last.
    let raw = schema.raw().await;
    let last: Vec<(String, String)> = raw
        .query(
            "SELECT application_name, query FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ran = |conn: &str, what: &str| last.iter().any(|(n, q)| n == conn && q.contains(what));
    let claims = format!("{name}-claims");
    assert!(ran(&claims, "SET claim = $2"), "{last:?}");
    assert!(!ran(&name, "SET claim = $2"), "{last:?}");
    assert!(ran(&name, "INSERT INTO messages"), "{last:?}");
    assert!(!ran(&claims, "INSERT INTO messages"), "{last:?}");
}

/// The statements logged (their text), in order.
#[derive(Debug, Default, Clone)]
struct Statements(Arc<std::sync::Mutex<Vec<String>>>);

impl slog::Drain for Statements {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Text<'a>(&'a mut Vec<String>);
        impl slog::Serializer for Text<'_> {
            fn emit_arguments(
                &mut self,
                key: slog::Key,
                value: &std::fmt::Arguments,
            ) -> slog::Result {
                if key == "statement" {
                    self.0.push(value.to_string());
                }
                Ok(())
            }
        }
        let mut lines = self.0.lock().unwrap();
        let _ = slog::KV::serialize(&record.kv(), record, &mut Text(&mut lines));
        Ok(())
    }
}

impl Statements {
    /// How many of the statements logged contain `what`.
    fn count(&self, what: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.contains(what))
            .count()
    }
}

/// The usage every turn of [`spawn_appends`] reports.
const USAGE: chatcore::Usage = chatcore::Usage {
    prompt_tokens: 11,
    completion_tokens: 7,
    cached_tokens: 3,
};

/// Spawns the claimed appends of `turns` (session, token, reply), each
/// reporting [`USAGE`] and moving its session to target `route-b`; with
/// `queued`, waits until they all wait for a batch.
async fn spawn_appends(
    store: &PostgresStore,
    turns: &[(SessionId, TurnToken, &'static str)],
    queued: bool,
) -> Vec<tokio::task::JoinHandle<chatcore::Result<()>>> {
    let before = store.pool_status().waiting;
    let tasks = turns
        .iter()
        .map(|&(id, token, reply)| {
            let store = store.clone();
            tokio::spawn(async move {
                let messages = crate::support::pair("question", reply, 5);
                let turn = chatcore::Turn {
                    messages: &messages,
                    usage: Some(USAGE),
                    target: Some("route-b"),
                    response: None,
                };
                store.append_claimed_turn(id, token, turn).await
            })
        })
        .collect();
    if queued {
        wait_until(Duration::from_secs(20), "the appends to queue", || {
            let waiting = store.pool_status().waiting;
            async move { waiting >= before + turns.len() }
        })
        .await;
    }
    tasks
}

/// Holds session `id`'s row locked in a transaction on `raw` until the
/// returned transaction ends; its backend's pid.
async fn block_row<'a>(
    raw: &'a mut tokio_postgres::Client,
    id: SessionId,
) -> (tokio_postgres::Transaction<'a>, i32) {
    let blocker = raw.transaction().await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
            &[id.as_uuid()],
        )
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (blocker, pid)
}

/// Waits until a statement on another connection waits on a lock that
/// backend `pid` holds (as `watcher`, a connection of its own, sees it).
async fn wait_blocked_by(watcher: &tokio_postgres::Client, pid: i32, what: &str) {
    wait_until(Duration::from_secs(20), what, || async move {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
}

/// A store with two connections (one for claims, one for appends, so
/// one batch of each kind at a time is in flight) whose statements are
/// logged to the `Statements` returned.
async fn one_batch_at_a_time(schema: &TestSchema) -> (PostgresStore, Statements) {
    let statements = Statements::default();
    let store = PostgresStore::connect(PostgresOptions {
        pool_size: 2,
        sql_logger: Some(slog::Logger::root(statements.clone(), slog::o!())),
        // Far beyond what the tests wait on their row locks.
        statement_timeout: Duration::from_secs(60),
        ..schema.options()
    })
    .await
    .unwrap();
    (store, statements)
}

async fn appends_waiting_together_commit_in_one_statement_and_fail_alone(schema: TestSchema) {
    let (store, statements) = one_batch_at_a_time(&schema).await;
    let mut sessions = Vec::new();
    let mut versions = Vec::new();
    for _ in 0..7 {
        let s = session(t0());
        store.insert_session(&s).await.unwrap();
        store.append_turn(s.id, turn!("u0", "a0", 1)).await.unwrap();
        let token = TurnToken::new();
        let (_, version) = held_at(
            store
                .claim_turn_since(s.id, token, TTL, 10, None)
                .await
                .unwrap(),
        );
        sessions.push((s.id, token));
        versions.push(version);
    }
    // The third session's claim was taken by another turn since.
    let (lapsed, old) = sessions[2];
    store.release_claim(lapsed, old).await.unwrap();
    held(
        store
            .claim_turn(lapsed, TurnToken::new(), TTL, 10)
            .await
            .unwrap(),
    );

    let watcher = schema.raw().await;
    // Only the batched append has sixteen parameters; a lone one names
    // its claim as its thirteenth.
    let (batch, alone) = ("$16::timestamptz[]", "AND claim = $13");

    // A first append waits on a row lock; three arrive meanwhile and go
    // to the server together once it is done.
    let mut raw = schema.raw().await;
    let (blocker, pid) = block_row(&mut raw, sessions[0].0).await;
    let first = spawn_appends(&store, &[(sessions[0].0, sessions[0].1, "r0")], false).await;
    wait_blocked_by(&watcher, pid, "the first append to wait").await;
    let rest = spawn_appends(
        &store,
        &[
            (sessions[1].0, sessions[1].1, "r1"),
            (lapsed, old, "r2"),
            (sessions[3].0, sessions[3].1, "r3"),
        ],
        true,
    )
    .await;
    assert_eq!(statements.count(batch), 0);
    blocker.rollback().await.unwrap();
    for task in first {
        task.await.unwrap().unwrap();
    }
    let mut outcomes = Vec::new();
    for task in rest {
        outcomes.push(task.await);
    }
    assert_eq!(statements.count(batch), 1, "one statement for three turns");
    assert_eq!(statements.count(alone), 1, "the first turn's, alone");
    outcomes[0].as_ref().unwrap().as_ref().unwrap();
    let fenced = outcomes[1].as_ref().unwrap().as_ref().unwrap_err();
    assert_eq!(
        fenced.kind(),
        ErrorKind::StorageUnavailable,
        "{}",
        fenced.chain()
    );
    outcomes[2].as_ref().unwrap().as_ref().unwrap();
    for (i, reply) in [(0, "r0"), (1, "r1"), (3, "r3")] {
        let history = store.recent_messages(sessions[i].0, 10).await.unwrap();
        assert_eq!(
            pairs(&history),
            vec![
                user("u0"),
                assistant("a0"),
                user("question"),
                assistant(reply)
            ]
        );
        // Each append stored its usage and target, moved the history's
        // version to its token, and released its claim.
        assert_eq!(store.session_usage(sessions[i].0).await.unwrap(), USAGE);
        let got = store.get_session(sessions[i].0).await.unwrap().unwrap();
        assert_eq!(got.target.as_deref(), Some("route-b"));
        let moved = versions[i].then(sessions[i].1, 2);
        assert!(matches!(
            store
                .claim_turn_since(sessions[i].0, TurnToken::new(), TTL, 1, Some(moved))
                .await
                .unwrap(),
            Claim::Current(_)
        ));
    }
    assert_eq!(store.recent_messages(lapsed, 10).await.unwrap().len(), 2);

    // A batch the server refuses for one turn's text (PostgreSQL's text
    // holds no NUL) is tried again turn by turn: only that turn fails.
    let (blocker, pid) = block_row(&mut raw, sessions[4].0).await;
    let first = spawn_appends(&store, &[(sessions[4].0, sessions[4].1, "r4")], false).await;
    wait_blocked_by(&watcher, pid, "the first append to wait").await;
    let rest = spawn_appends(
        &store,
        &[
            (sessions[5].0, sessions[5].1, "nul \0 in the reply"),
            (sessions[6].0, sessions[6].1, "r6"),
        ],
        true,
    )
    .await;
    blocker.commit().await.unwrap();
    for task in first {
        task.await.unwrap().unwrap();
    }
    let mut outcomes = Vec::new();
    for task in rest {
        outcomes.push(task.await);
    }
    assert_eq!(statements.count(batch), 2, "the second batch was tried");
    assert_eq!(statements.count(alone), 4, "then each of its turns alone");
    let refused = outcomes[0].as_ref().unwrap().as_ref().unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::InvalidInput,
        "{}",
        refused.chain()
    );
    outcomes[1].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(
        store
            .recent_messages(sessions[5].0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        pairs(&store.recent_messages(sessions[6].0, 10).await.unwrap()),
        vec![
            user("u0"),
            assistant("a0"),
            user("question"),
            assistant("r6")
        ]
    );
}

async fn claims_waiting_together_go_as_one_statement(schema: TestSchema) {
    let (store, statements) = one_batch_at_a_time(&schema).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let s = session(t0());
        store.insert_session(&s).await.unwrap();
        store
            .append_turn(s.id, turn!(format!("u{i}").as_str(), "a", 1))
            .await
            .unwrap();
        ids.push(s.id);
    }
    let [blocked, current, stale, busy, abandoned] = ids[..] else {
        unreachable!()
    };
    // `current`'s version is known; `busy` is held by another turn.
    let token = TurnToken::new();
    let (_, version) = held_at(
        store
            .claim_turn_since(current, token, TTL, 10, None)
            .await
            .unwrap(),
    );
    store.release_claim(current, token).await.unwrap();
    held(
        store
            .claim_turn(busy, TurnToken::new(), TTL, 10)
            .await
            .unwrap(),
    );
    let batch = "unnest($1::uuid[], $2::uuid[], $3::float8[]";

    let watcher = schema.raw().await;
    let mut raw = schema.raw().await;
    let (blocker, pid) = block_row(&mut raw, blocked).await;
    let claim = |id: SessionId, known: Option<HistoryVersion>| {
        let store = store.clone();
        // Far longer than the test waits: only a release frees them.
        let ttl = Duration::from_secs(600);
        tokio::spawn(async move {
            store
                .claim_turn_since(id, TurnToken::new(), ttl, 10, known)
                .await
        })
    };
    let first = claim(blocked, None);
    wait_blocked_by(&watcher, pid, "the first claim to wait").await;
    let rest = [
        claim(current, Some(version)),
        claim(stale, None),
        claim(busy, None),
        claim(SessionId::new_v4(), None),
    ];
    let gone = claim(abandoned, None);
    wait_until(Duration::from_secs(20), "the claims to queue", || {
        let waiting = store.pool_status().waiting;
        async move { waiting >= 5 }
    })
    .await;
    // Two callers go away: the first while its claim is out, held up on
    // the row lock; another while its claim still waits for a batch.
    first.abort();
    gone.abort();
    let release = "SET claim = NULL, claim_until = NULL WHERE id = $1 AND claim = $2";
    let released = statements.count(release);
    assert_eq!(statements.count(batch), 0);
    blocker.rollback().await.unwrap();
    let mut outcomes = Vec::new();
    for task in rest {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(statements.count(batch), 1, "one statement for four claims");
    assert!(
        matches!(outcomes[0], Claim::Current(ref s) if s.id == current),
        "{:?}",
        outcomes[0]
    );
    let (history, _) = held_at(outcomes[1].clone());
    assert_eq!(pairs(&history), vec![user("u2"), assistant("a")]);
    assert!(
        matches!(outcomes[2], Claim::Busy(ref s) if s.id == busy),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], Claim::Missing);
    // The claim that landed after its caller left was released; the one
    // whose caller left first was never sent.
    wait_until(
        Duration::from_secs(20),
        "the abandoned claim's release",
        || {
            let count = statements.count(release);
            async move { count > released }
        },
    )
    .await;
    assert_eq!(statements.count(release), released + 1);
    for id in [blocked, abandoned] {
        held(
            store
                .claim_turn(id, TurnToken::new(), TTL, 10)
                .await
                .unwrap(),
        );
    }
}

async fn a_batch_held_up_on_a_row_lock_holds_up_no_other_session(schema: TestSchema) {
    let store = schema.store().await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let s = session(t0());
        store.insert_session(&s).await.unwrap();
        let token = TurnToken::new();
        held(store.claim_turn(s.id, token, TTL, 10).await.unwrap());
        sessions.push((s.id, token));
    }
    let [(held_up, first_token), (other, other_token)] = sessions[..] else {
        unreachable!()
    };
    let mut raw = schema.raw().await;
    let (blocker, pid) = block_row(&mut raw, held_up).await;
    let first = spawn_appends(&store, &[(held_up, first_token, "r0")], false).await;
    let watcher = schema.raw().await;
    wait_blocked_by(&watcher, pid, "the first append to wait").await;
    // Another session's append goes in a batch of its own beside it.
    store
        .append_claimed_turn(other, other_token, turn!("u", "a", 1))
        .await
        .unwrap();
    assert!(
        !first[0].is_finished(),
        "the held-up append is still waiting"
    );
    assert_eq!(store.recent_messages(other, 10).await.unwrap().len(), 2);
    blocker.rollback().await.unwrap();
    for task in first {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.recent_messages(held_up, 10).await.unwrap().len(), 2);
}

/// Manual vacuums of `sessions` so far, as the server counts them
/// (autovacuum's are counted apart).
async fn vacuums(raw: &tokio_postgres::Client) -> i64 {
    raw.query_one(
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'sessions'::regclass",
        &[],
    )
    .await
    .expect("read the table's statistics")
    .get(0)
}

async fn the_store_vacuums_sessions_once_enough_turns_are_stored(schema: TestSchema) {
    let store = schema.store().await;
    let raw = schema.raw().await;
    let sessions: Vec<_> = (0..10).map(|_| session(t0())).collect();
    for s in &sessions {
        store.insert_session(s).await.unwrap();
    }
    let append = |n: usize| {
        let (store, ids) = (
            store.clone(),
            sessions.iter().map(|s| s.id).collect::<Vec<_>>(),
        );
        async move {
            for k in 0..n {
                store
                    .append_turn(ids[k % ids.len()], turn!("u", "a", 1))
                    .await
                    .unwrap();
            }
        }
    };
    // Fewer turns than call for a vacuum: none comes, however long.
    append(999).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        vacuums(&raw).await,
        0,
        "a vacuum before enough turns were stored"
    );
    // The thousandth does.
    append(1).await;
    wait_until(Duration::from_secs(20), "a vacuum of sessions", || {
        let raw = &raw;
        async move { vacuums(raw).await >= 1 }
    })
    .await;
    // Every turn is still there.
    let messages: i64 = raw
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(messages, 2000);
}
