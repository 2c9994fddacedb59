//! chatcore micro-benches (criterion): the rate-limit check against a naive
//! `Mutex<HashMap>` token bucket, and one in-process chat turn with an
//! instant model on `MemoryStore` and on `SqliteStore` (10-message history).
//!
//! Run: `cargo bench --bench core` (results in `target/criterion/`).

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatcore::{
    ChatCore, ChatModel, ChatRequest, Completion, GovernorLimiter, MemoryStore, NewSession,
    RateLimiter, SessionId, SqliteStore, Store,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The naive baseline: a token bucket per key in one locked map.
struct NaiveLimiter {
    per_minute: f64,
    map: Mutex<HashMap<SessionId, (f64, Instant)>>,
}

impl NaiveLimiter {
    fn check(&self, key: SessionId) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        let (tokens, last) = map.entry(key).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let key = SessionId::new_v4();
    // A quota no bench can exhaust, so every check is the "allowed" path.
    let governor = GovernorLimiter::new(NonZeroU32::new(u32::MAX).unwrap());
    g.bench_function("governor_hot_key", |b| {
        b.iter(|| black_box(governor.decide(black_box(key))))
    });
    // The same check through the trait, as a chat turn makes it (a
    // `Check` that is ready at once, awaited without suspending).
    let shared: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new(NonZeroU32::MAX));
    g.bench_function("governor_trait_hot_key", |b| {
        b.iter(|| black_box(shared.check(black_box(key)).now()))
    });
    let naive = NaiveLimiter {
        per_minute: f64::from(u32::MAX),
        map: Mutex::new(HashMap::new()),
    };
    g.bench_function("naive_mutex_hashmap_hot_key", |b| {
        b.iter(|| black_box(naive.check(black_box(key))))
    });
    // Many keys: 10,000 sessions round-robin.
    let keys: Vec<SessionId> = (0..10_000).map(|_| SessionId::new_v4()).collect();
    let mut i = 0;
    g.bench_function("governor_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(governor.decide(keys[i]))
        })
    });
    let mut j = 0;
    g.bench_function("naive_mutex_hashmap_10k_keys", |b| {
        b.iter(|| {
            j = (j + 1) % keys.len();
            black_box(naive.check(keys[j]))
        })
    });
    g.finish();
}

/// A model that answers at once.
#[derive(Debug)]
struct Instant0;

#[async_trait]
impl ChatModel for Instant0 {
    async fn complete(&self, _request: ChatRequest<'_>) -> chatcore::Result<Completion> {
        Ok(Completion {
            content: "Hi there".to_owned(),
            ..Completion::default()
        })
    }
}

fn core_with(store: Arc<dyn Store>, hot_sessions: usize) -> ChatCore {
    ChatCore::builder()
        .shared_store(store)
        .model(Instant0)
        .messages_per_minute(u32::MAX)
        // "Hello" and "Hi there" cost 6 tokens each: 66 tokens keep a
        // 10-message history plus the new message.
        .context_tokens(66)
        .hot_sessions(hot_sessions)
        .build()
        .unwrap()
}

fn chat_turn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("chat_turn");
    g.measurement_time(Duration::from_secs(5));
    let backends: Vec<(&str, Arc<dyn Store>, usize)> = vec![
        ("memory", Arc::new(MemoryStore::new()), 10_000),
        (
            "sqlite",
            Arc::new(SqliteStore::open(dir.path().join("a.db")).unwrap()),
            10_000,
        ),
        (
            "sqlite_uncached",
            Arc::new(SqliteStore::open(dir.path().join("b.db")).unwrap()),
            0,
        ),
    ];
    for (name, store, hot) in backends {
        let core = core_with(store, hot);
        let sessions: Vec<SessionId> = rt.block_on(async {
            let mut ids = Vec::new();
            for _ in 0..64 {
                let id = core
                    .anyone()
                    .initialize(NewSession::default())
                    .await
                    .unwrap()
                    .session
                    .id;
                for _ in 0..5 {
                    core.anyone().chat(id, "Hello").await.unwrap();
                }
                ids.push(id);
            }
            ids
        });
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::new("sequential", name),
            &sessions[0],
            |b, &id| {
                b.to_async(&rt)
                    .iter(|| async { core.anyone().chat(id, "Hello").await.unwrap() })
            },
        );
        g.throughput(Throughput::Elements(sessions.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("64_sessions_concurrent", name),
            &sessions,
            |b, ids| {
                b.to_async(&rt).iter(|| async {
                    let tasks: Vec<_> = ids
                        .iter()
                        .map(|&id| {
                            let core = core.clone();
                            tokio::spawn(
                                async move { core.anyone().chat(id, "Hello").await.unwrap() },
                            )
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, rate_limit, chat_turn);
criterion_main!(benches);
