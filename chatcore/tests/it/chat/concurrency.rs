//! Concurrency through the facade: exact rate limiting under parallel
//! load, tokens taken only after validation, FIFO turns within a session,
//! and parallel turns across sessions.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chatcore::{ErrorKind, GovernorLimiter, ManualClock, SessionId, Store};
use tokio::sync::Barrier;

use super::builder;
use crate::support::{
    assistant, new_session, pairs, t0, user, ScriptedModel, SignallingLimiter, MINUTE,
};

each_backend! {
    "multi_thread" => of_twenty_parallel_messages_exactly_five_pass,
    "current_thread" => the_token_is_taken_only_after_validation,
    "current_thread" => turns_of_one_session_run_one_at_a_time_in_arrival_order,
    "multi_thread" => turns_of_different_sessions_run_in_parallel,
}

async fn of_twenty_parallel_messages_exactly_five_pass<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let core = builder(store, &model)
        .messages_per_minute(5)
        .build()
        .unwrap();
    let id = new_session(&core).await;

    let start = Arc::new(Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (core, start) = (core.clone(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            core.anyone().chat(id, &format!("message {i}")).await
        });
    }
    let (mut ok, mut limited, mut remaining) = (0, 0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(reply) => {
                ok += 1;
                remaining.push(reply.remaining);
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::RateLimited, "{e:?}");
                assert!(e.retry_after().unwrap() >= Duration::from_secs(1));
                assert_eq!(e.to_string(), "Rate limit exceeded: 5 messages per minute");
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (5, 15));
    // `remaining` is informational: under contention GCRA snapshots taken
    // at slightly different instants may repeat a value, but never exceed
    // the burst left after the message itself.
    assert!(remaining.iter().all(|r| *r < 5), "{remaining:?}");
    assert_eq!(model.calls(), 5, "rejected messages are not forwarded");
    assert_eq!(core.anyone().messages(id).await.unwrap().len(), 10);
}

async fn the_token_is_taken_only_after_validation<S: Store + 'static>(store: S) {
    let model = ScriptedModel::new().shared();
    let clock = Arc::new(ManualClock::new(t0()));
    let limiter = Arc::new(GovernorLimiter::new(NonZeroU32::new(5).unwrap()));
    let core = builder(store, &model)
        .rate_limiter(limiter.clone())
        .clock(clock.clone())
        .idle_timeout(30 * MINUTE)
        .build()
        .unwrap();
    let stale = new_session(&core).await;
    clock.advance(31 * MINUTE);
    let id = new_session(&core).await;

    let too_long = "a".repeat(chatcore::MAX_MESSAGE_CHARS + 1);
    for _ in 0..5 {
        let kind = |r: chatcore::Result<_>| r.unwrap_err().kind();
        assert_eq!(
            kind(core.anyone().chat(id, "").await),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(core.anyone().chat(id, "  \n\t").await),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(core.anyone().chat(id, &too_long).await),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(core.anyone().chat(SessionId::new_v4(), "hi").await),
            ErrorKind::SessionNotFound
        );
        assert_eq!(
            kind(core.anyone().chat(stale, "hi").await),
            ErrorKind::SessionExpired
        );
    }
    assert_eq!(limiter.tracked_keys(), 0, "no invalid message took a token");

    for i in 0..5 {
        core.anyone().chat(id, &format!("valid {i}")).await.unwrap();
    }
    let err = core.anyone().chat(id, "one too many").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(limiter.tracked_keys(), 1);
    assert_eq!(model.calls(), 5);
}

async fn turns_of_one_session_run_one_at_a_time_in_arrival_order<S: Store + 'static>(store: S) {
    const N: u64 = 6;
    // Earlier turns take longer: were turns not queued, later ones would
    // finish (and be stored) first.
    let model = ScriptedModel::new()
        .with_delay(|u| {
            let i: u64 = u.trim_start_matches('m').parse().unwrap();
            Duration::from_millis((N - i) * 5)
        })
        .shared();
    let limiter = Arc::new(SignallingLimiter::default());
    let core = builder(store, &model)
        .rate_limiter(limiter.clone())
        .build()
        .unwrap();
    let id = new_session(&core).await;

    let mut turns = Vec::new();
    for i in 0..N {
        let core = core.clone();
        turns.push(tokio::spawn(async move {
            core.anyone().chat(id, &format!("m{i}")).await
        }));
        // On this single-threaded runtime, turn i has queued for the
        // session by the time the test runs again after its check.
        limiter.checked.notified().await;
    }
    for (i, turn) in turns.into_iter().enumerate() {
        let reply = turn.await.unwrap().unwrap();
        assert_eq!(reply.content, format!("reply to m{i}"));
    }

    let seen = model.seen();
    for (i, request) in seen.iter().enumerate() {
        assert_eq!(request.user, format!("m{i}"), "model called out of order");
        assert_eq!(request.history.len(), 2 * i, "turn {i} saw partial history");
    }
    let expected: Vec<_> = (0..N)
        .flat_map(|i| [user(&format!("m{i}")), assistant(&format!("reply to m{i}"))])
        .collect();
    assert_eq!(pairs(&core.anyone().messages(id).await.unwrap()), expected);
}

async fn turns_of_different_sessions_run_in_parallel<S: Store + 'static>(store: S) {
    // Each turn waits at a two-party barrier inside the model, so the turns
    // finish only if both are in the model at once.
    let model = ScriptedModel::new()
        .with_barrier(Arc::new(Barrier::new(2)))
        .shared();
    let core = builder(store, &model).build().unwrap();
    let a = new_session(&core).await;
    let b = new_session(&core).await;

    let (ca, cb) = (core.clone(), core.clone());
    let ta = tokio::spawn(async move { ca.anyone().chat(a, "from a").await });
    let tb = tokio::spawn(async move { cb.anyone().chat(b, "from b").await });
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(5), async {
        (ta.await.unwrap(), tb.await.unwrap())
    })
    .await
    .expect("turns of two sessions were serialized");
    assert_eq!(ra.unwrap().content, "reply to from a");
    assert_eq!(rb.unwrap().content, "reply to from b");
}
