//! A session's life through the facade, on a manual clock: expiry, the
//! feedback rules, and the retention sweep.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatcore::{
    ChatCore, ChatModel, ChatRequest, Completion, ErrorKind, ManualClock, MemoryStore, PurgeReport,
    Role, SessionId, Store,
};

use super::builder;
use crate::support::{new_session, t0, ScriptedModel, DAY, MINUTE};

each_backend! {
    "current_thread" => last_active_is_the_reply_time_not_the_request_time,
    "current_thread" => an_idle_session_expires_and_is_never_revived,
    "current_thread" => feedback_is_validated_and_kept_in_order,
    "current_thread" => the_sweep_purges_only_sessions_past_retention,
}

/// A model that takes `think` of the manual clock's time to answer.
#[derive(Debug)]
struct SlowThinker {
    clock: Arc<ManualClock>,
    think: Duration,
}

#[async_trait]
impl ChatModel for SlowThinker {
    async fn complete(&self, request: ChatRequest<'_>) -> chatcore::Result<Completion> {
        self.clock.advance(self.think);
        Ok(Completion {
            content: format!("thought about {}", request.user_text()),
            ..Completion::default()
        })
    }
}

async fn last_active_is_the_reply_time_not_the_request_time<S: Store + 'static>(store: S) {
    let clock = Arc::new(ManualClock::new(t0()));
    let think = Duration::from_secs(7);
    let core = ChatCore::builder()
        .store(store)
        .model(SlowThinker {
            clock: Arc::clone(&clock),
            think,
        })
        .clock(clock.clone())
        .idle_timeout(30 * MINUTE)
        .build()
        .unwrap();
    let id = new_session(&core).await;
    clock.advance(MINUTE);
    let asked = t0() + MINUTE;
    let answered = asked + think;

    core.anyone().chat(id, "hello").await.unwrap();
    let info = core.anyone().get(id).await.unwrap();
    assert_eq!(info.session.created_at, t0());
    assert_eq!(
        info.session.last_active, answered,
        "last_active is the reply's time"
    );
    assert!(info.is_active);
    let stored = core.anyone().messages(id).await.unwrap();
    let times: Vec<_> = stored.iter().map(|m| (m.role, m.created_at)).collect();
    assert_eq!(
        times,
        [(Role::User, asked), (Role::Assistant, answered)],
        "each message keeps its own time"
    );

    // Now `asked + 30m + 3.5s`: idle past the timeout counted from the
    // request, not from the reply. Still active, and a turn is accepted
    // (the hot path, which does not read the store, agrees).
    clock.advance(30 * MINUTE - think / 2);
    assert!(core.anyone().get(id).await.unwrap().is_active);
    core.anyone()
        .chat(id, "still here")
        .await
        .expect("idle less than the timeout since the last reply: the turn is accepted");
    let second = answered + 30 * MINUTE - think / 2 + think;
    let info = core.anyone().get(id).await.unwrap();
    assert_eq!(info.session.last_active, second);

    // Exactly the timeout after the last reply: expired, for reads and turns.
    clock.advance(30 * MINUTE);
    assert!(!core.anyone().get(id).await.unwrap().is_active);
    let err = core.anyone().chat(id, "too late").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionExpired);
    assert_eq!(core.anyone().messages(id).await.unwrap().len(), 4);
}

async fn an_idle_session_expires_and_is_never_revived<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = builder(store, &model)
        .clock(clock.clone())
        .idle_timeout(30 * MINUTE)
        .build()
        .unwrap();
    let id = new_session(&core).await;

    // A turn before the timeout keeps the session alive from that turn on.
    clock.advance(29 * MINUTE);
    assert!(core.anyone().get(id).await.unwrap().is_active);
    core.anyone().chat(id, "still here").await.unwrap();
    clock.advance(29 * MINUTE);
    assert!(core.anyone().get(id).await.unwrap().is_active);
    core.anyone().chat(id, "and again").await.unwrap();
    let last_active = t0() + 58 * MINUTE;

    clock.advance(30 * MINUTE);
    for _ in 0..3 {
        let info = core.anyone().get(id).await.unwrap();
        assert!(!info.is_active);
        assert_eq!(info.session.last_active, last_active, "not touched");
        let err = core.anyone().chat(id, "hello?").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SessionExpired);
        assert_eq!(err.to_string(), "Session expired");
        clock.advance(DAY);
    }
    assert_eq!(model.calls(), 2, "expired turns never reach the model");
    assert_eq!(core.anyone().messages(id).await.unwrap().len(), 4);

    // Feedback is still welcome while the data is retained.
    core.anyone()
        .submit_feedback(id, "It was fine until it expired.", Some(3))
        .await
        .unwrap();
    assert_eq!(core.anyone().feedback(id).await.unwrap().len(), 1);
    assert!(!core.anyone().get(id).await.unwrap().is_active);
}

async fn feedback_is_validated_and_kept_in_order<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = builder(store, &model).clock(clock.clone()).build().unwrap();
    let id = new_session(&core).await;
    let desk = core.anyone();

    let err = desk
        .submit_feedback(SessionId::new_v4(), "who?", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SessionNotFound);
    for bad in [0, 6, -1, 100] {
        let err = desk
            .submit_feedback(id, "rated", Some(bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "rating {bad}");
        assert_eq!(err.field(), Some("rating"));
    }
    let too_long = "x".repeat(chatcore::MAX_FEEDBACK_CHARS + 1);
    for bad in ["", "   \n", too_long.as_str()] {
        let err = desk.submit_feedback(id, bad, Some(3)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.field(), Some("feedback"));
    }
    assert!(
        desk.feedback(id).await.unwrap().is_empty(),
        "nothing invalid kept"
    );

    let first = desk
        .submit_feedback(id, "The chat was very helpful.", Some(5))
        .await
        .unwrap();
    assert_eq!(first.created_at, t0());
    assert_eq!(first.rating.map(|r| r.get()), Some(5));
    clock.advance(MINUTE);
    let second = desk
        .submit_feedback(id, "No rating this time", None)
        .await
        .unwrap();
    let third = desk.submit_feedback(id, "Edge", Some(1)).await.unwrap();
    assert_eq!(desk.feedback(id).await.unwrap(), vec![first, second, third]);
}

async fn the_sweep_purges_only_sessions_past_retention<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = builder(store, &model)
        .clock(clock.clone())
        .retention(10 * DAY)
        .build()
        .unwrap();
    let old = new_session(&core).await;
    core.anyone().chat(old, "long ago").await.unwrap();
    core.anyone()
        .submit_feedback(old, "thanks", None)
        .await
        .unwrap();
    clock.advance(6 * DAY);
    let recent = new_session(&core).await;
    core.anyone().chat(recent, "lately").await.unwrap();
    core.anyone()
        .submit_feedback(recent, "nice", Some(4))
        .await
        .unwrap();

    clock.advance(3 * DAY); // old: 9 days idle, inside retention
    assert_eq!(core.sweep().await.unwrap(), PurgeReport::default());

    clock.advance(2 * DAY); // old: 11 days idle; recent: 5
    let report = core.sweep().await.unwrap();
    assert_eq!(
        report,
        PurgeReport {
            sessions: 1,
            messages: 2,
            feedback: 1,
            skipped: false
        }
    );
    let gone = core.anyone().get(old).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::SessionNotFound);
    let gone = core.anyone().messages(old).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::SessionNotFound);
    let gone = core
        .anyone()
        .submit_feedback(old, "late", None)
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::SessionNotFound);
    let gone = core.anyone().feedback(old).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::SessionNotFound);

    assert_eq!(core.anyone().messages(recent).await.unwrap().len(), 2);
    assert_eq!(core.anyone().feedback(recent).await.unwrap().len(), 1);
    assert_eq!(core.sweep().await.unwrap(), PurgeReport::default());
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_runs_once_per_interval() {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let core = builder(MemoryStore::new(), &model)
        .clock(clock.clone())
        .retention(DAY)
        .build()
        .unwrap();
    let old = new_session(&core).await;
    clock.advance(2 * DAY);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = tokio::time::Instant::now();
    let interval = Duration::from_secs(3600);
    let sweeper = core.spawn_sweeper(interval, move |r| {
        let _ = tx.send(r);
    });

    tokio::task::yield_now().await;
    assert!(rx.try_recv().is_err(), "the first sweep waits one interval");
    let first = rx.recv().await.unwrap().unwrap();
    assert!(started.elapsed() >= interval);
    assert_eq!(first.sessions, 1);
    assert!(core.anyone().get(old).await.is_err());
    let second = rx.recv().await.unwrap().unwrap();
    assert!(started.elapsed() >= 2 * interval);
    assert_eq!(second, PurgeReport::default());
    sweeper.abort();
}
