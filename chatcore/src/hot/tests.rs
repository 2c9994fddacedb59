use super::*;
use crate::message::Role;

fn msg(content: &str) -> Message {
    Message::text(Role::User, content, Utc::now())
}

fn user(content: &str) -> MessageRef<'_> {
    MessageRef {
        role: Role::User,
        content,
        wire: None,
        created_at: Utc::now(),
    }
}

fn session() -> Session {
    let now = Utc::now();
    Session {
        owner: None,
        id: SessionId::new_v4(),
        created_at: now,
        last_active: now,
        system_prompt: None,
        metadata: None,
        target: None,
    }
}

#[test]
fn window_keeps_the_newest_that_fit() {
    // "abcd" costs 5 tokens.
    let w = Window::new((0..10).map(|_| msg("abcd")).collect(), 12);
    assert_eq!(w.messages().len(), 2);
    let mut w = Window::new(Vec::new(), 12);
    for _ in 0..100 {
        w.push(user("abcd"), 12);
    }
    assert_eq!(w.messages().len(), 2);
    assert!(w.entries.len() < 70, "compaction keeps the buffer bounded");
    assert!(w.text.len() < 70 * 4, "and the text with it");
    assert_eq!(w.messages().last().unwrap().1, "abcd");
}

#[test]
fn fit_matches_trim_history() {
    let history: Vec<Message> = (0..40).map(|i| msg(&"x".repeat(i * 3))).collect();
    let w = Window::new(history.clone(), 10_000);
    for budget in [0, 5, 17, 100, 333, 10_000] {
        let expected = crate::trim_history(&history, None, "", budget + crate::estimate_tokens(""));
        let got: Vec<String> = w
            .fit(budget, 0)
            .iter()
            .map(|m| m.content.to_owned())
            .collect();
        let want: Vec<String> = expected.iter().map(|m| m.content.clone()).collect();
        assert_eq!(got, want, "budget {budget}");
    }
}

#[test]
fn capacity_is_bounded() {
    let cache = HotSessions::new(32, usize::MAX, 100);
    for _ in 0..1000 {
        cache.insert(session(), Vec::new());
    }
    let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(total <= 32, "{total}");
}

#[test]
fn sessions_in_use_survive_a_flood_of_unused_ones() {
    let cache = Arc::new(HotSessions::new(1_000, usize::MAX, 100));
    let active: Vec<Arc<Hot>> = (0..200)
        .map(|_| cache.insert(session(), Vec::new()))
        .collect();
    // A turn on each, then ten times the capacity in new sessions,
    // with a turn on every active session between rounds.
    for _ in 0..100 {
        for hot in &active {
            drop(cache.lease(Arc::clone(hot)).unwrap());
        }
        for _ in 0..100 {
            cache.insert(session(), Vec::new());
        }
    }
    // An eviction loses a session in use only when all its samples are
    // in use: (1/5)^4 of 10,000 evictions, about 16 of them.
    let kept = active
        .iter()
        .filter(|h| cache.get(h.session.id).is_some())
        .count();
    assert!(kept >= 170, "only {kept} of 200 sessions in use stayed");
    let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(total <= cache.per_shard * SHARDS, "{total}");
}

#[test]
fn removal_keeps_the_index_consistent() {
    let cache = HotSessions::new(64, usize::MAX, 100);
    let all: Vec<Arc<Hot>> = (0..300)
        .map(|_| cache.insert(session(), Vec::new()))
        .collect();
    for hot in all.iter().step_by(3) {
        cache.invalidate(hot.session.id, hot);
    }
    for shard in &cache.shards {
        let shard = shard.lock().unwrap();
        assert_eq!(shard.index.len(), shard.slots.len());
        for (i, h) in shard.slots.iter().enumerate() {
            assert_eq!(shard.index[&h.session.id], i);
        }
    }
}

#[test]
fn a_lease_in_doubt_invalidates_and_a_clean_one_returns() {
    let cache = Arc::new(HotSessions::new(16, usize::MAX, 100));
    let s = session();
    let id = s.id;
    let hot = cache.insert(s, vec![msg("hi")]);
    {
        let lease = cache.lease(Arc::clone(&hot)).unwrap();
        assert_eq!(lease.history().len(), 1);
        assert!(
            cache.lease(Arc::clone(&hot)).is_none(),
            "leased once at a time"
        );
    }
    let mut lease = cache.lease(Arc::clone(&hot)).unwrap();
    lease.writing();
    drop(lease);
    assert!(cache.get(id).is_none());
}

fn cached_bytes(cache: &HotSessions) -> usize {
    cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum()
}

#[test]
fn memory_is_bounded_in_bytes() {
    // 64 KiB of system prompt each: 10,000 of them would hold ~640 MB.
    let budget = 4 << 20;
    let cache = HotSessions::new(10_000, budget, 100);
    for _ in 0..1_000 {
        let mut s = session();
        s.system_prompt = Some("p".repeat(64 * 1024));
        cache.insert(s, Vec::new());
    }
    let held = cached_bytes(&cache);
    assert!(held <= budget, "{held} bytes held");
    assert!(held >= budget / 2, "the budget is used: {held}");
    let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(total < 100, "{total} entries of 64 KiB in 4 MiB");
}

/// Sixty-four sessions, each given forty turns of about a kilobyte.
fn grow(cache: &Arc<HotSessions>) -> Vec<Arc<Hot>> {
    let hots: Vec<Arc<Hot>> = (0..64)
        .map(|_| cache.insert(session(), Vec::new()))
        .collect();
    for round in 0..40 {
        for hot in &hots {
            if let Some(mut lease) = cache.lease(Arc::clone(hot)) {
                let text = "y".repeat(1000);
                let reply = format!("{round}");
                lease.record(&[user(&text), user(&reply)], None, None);
            }
        }
    }
    hots
}

fn assert_consistent(cache: &HotSessions) {
    for shard in &cache.shards {
        let shard = shard.lock().unwrap();
        let sum: usize = shard
            .slots
            .iter()
            .map(|h| h.bytes.load(Ordering::Relaxed))
            .sum();
        assert_eq!(sum, shard.bytes, "what is counted is what is held");
    }
}

#[test]
fn growing_windows_are_accounted_and_bounded() {
    // Room for all: growth is counted.
    let roomy = Arc::new(HotSessions::new(10_000, usize::MAX, 100_000));
    let hots = grow(&roomy);
    assert!(hots.iter().all(|h| roomy.get(h.session.id).is_some()));
    assert!(
        cached_bytes(&roomy) > 64 * 40 * 1000,
        "{}",
        cached_bytes(&roomy)
    );
    assert_consistent(&roomy);
    // Half of that: the cache stays under it, evicting as windows grow,
    // and keeps what fits.
    let budget = cached_bytes(&roomy) / 2;
    let tight = Arc::new(HotSessions::new(10_000, budget, 100_000));
    let hots = grow(&tight);
    let held = cached_bytes(&tight);
    assert!(held <= budget, "{held} bytes held");
    let kept = hots
        .iter()
        .filter(|h| tight.get(h.session.id).is_some())
        .count();
    assert!(kept > 0 && kept < 64, "{kept} kept");
    assert_consistent(&tight);
}

#[test]
fn disabled_cache_holds_nothing() {
    let cache = HotSessions::new(0, usize::MAX, 100);
    let s = session();
    let id = s.id;
    cache.insert(s, Vec::new());
    assert!(cache.get(id).is_none());
}
