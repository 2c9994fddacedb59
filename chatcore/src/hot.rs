//! The hot-session cache: what a chat turn needs to know about a session
//! (its record, `last_active`, and the recent history that can still fit
//! the context budget), kept in memory so a turn reads nothing from storage.
//!
//! Coherence: every change to a session's messages and `last_active` goes
//! through [`ChatCore::chat`](crate::ChatCore::chat), under the session's
//! turn queue, which updates the cache after the store. This assumes the
//! facade is the only writer of its store's messages (true for chatgate);
//! an application that also writes messages behind its back should turn the
//! cache off with `ChatCoreBuilder::hot_sessions(0)`.
//!
//! Bounds: at most `capacity` sessions and about `max_bytes` of memory
//! (each entry's system prompt, text and index, by their allocations), each
//! session holding only the newest messages whose estimated tokens fit
//! `context_tokens` (older ones can never be sent again, and their text is
//! reclaimed as the window moves). A full shard evicts one of a few entries picked at
//! random, preferring, in order: one no turn ever used, one no turn used
//! since an eviction last spared it (a second chance, as in CLOCK), then
//! the least recently active. So sessions in conversation stay while a
//! flood of sessions created and never used goes first, and, unlike exact
//! LRU, some hits remain when clients round-robin over more sessions than
//! fit. Every operation is O(1).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::history::{History, Packed as PackedEntry};
use crate::message::{Message, MessageRef};
use crate::tokens::{message_tokens, orphaned_results};
use crate::types::{from_millis, Session, SessionId};

const SHARDS: usize = 16;

/// A cached session.
#[derive(Debug)]
pub(crate) struct Hot {
    /// The record as created (its `last_active` field is not maintained;
    /// read [`Hot::last_active`]).
    pub(crate) session: Session,
    last_active_ms: AtomicI64,
    /// [`UNUSED`], [`SPARED`] or [`IN_USE`].
    used: AtomicU8,
    /// The memory this entry was last accounted for in its shard.
    bytes: AtomicUsize,
    window: Mutex<Option<Window>>,
}

/// The newest messages of a session that fit the context budget, packed:
/// all their text (or, for a message kept whole, its JSON) in one buffer
/// and a small fixed-size entry per message (position, estimated tokens,
/// role, time). About half the memory of a `Vec<Message>` (no allocation
/// per message), and the token costs are computed once, not on every turn.
#[derive(Debug, Default)]
pub(crate) struct Window {
    text: String,
    entries: Vec<PackedEntry>,
    /// Entries before `start` (and their text) are dropped, lazily.
    start: usize,
    tokens: usize,
}

impl Window {
    /// Keeps the newest of `history` that fit `budget` tokens (and the
    /// newest message in any case).
    pub(crate) fn new(history: Vec<Message>, budget: usize) -> Window {
        let mut tokens = 0;
        let mut keep = 0;
        for m in history.iter().rev() {
            let cost = message_tokens(m.view());
            // The newest message stays whatever it costs: a turn that
            // answers its tool calls must send it.
            if tokens + cost > budget && keep > 0 {
                break;
            }
            tokens += cost;
            keep += 1;
        }
        let mut w = Window::default();
        for m in &history[history.len() - keep..] {
            w.append(m.view());
        }
        w
    }

    /// The newest messages whose estimated tokens fit `budget`, oldest
    /// first: what [`trim_history`](crate::trim_history) would keep. The
    /// newest `pinned` (0 or 1) are kept whatever they cost: a tool call
    /// the turn's new messages answer must go with them.
    pub(crate) fn fit(&self, budget: usize, pinned: usize) -> History<'_> {
        let live = &self.entries[self.start..];
        let mut left = budget;
        let mut keep = 0;
        for e in live.iter().rev() {
            let cost = e.cost as usize;
            if cost > left && keep >= pinned {
                break;
            }
            left = left.saturating_sub(cost);
            keep += 1;
        }
        let kept = &live[live.len() - keep..];
        let orphans = orphaned_results(kept.iter().map(|e| e.role));
        History::packed(&self.text, &kept[orphans..])
    }

    /// The newest message, if the window holds any.
    pub(crate) fn last(&self) -> Option<MessageRef<'_>> {
        History::packed(&self.text, &self.entries[self.start..]).last()
    }

    /// The messages, oldest first.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<(crate::message::Role, String)> {
        History::packed(&self.text, &self.entries[self.start..])
            .iter()
            .map(|m| (m.role, m.wire.unwrap_or(m.content).to_owned()))
            .collect()
    }

    fn append(&mut self, m: MessageRef<'_>) {
        let cost = message_tokens(m);
        let body = m.wire.unwrap_or(m.content);
        self.tokens += cost;
        self.entries.push(PackedEntry {
            start: self.text.len() as u32,
            len: body.len() as u32,
            cost: cost.min(u32::MAX as usize) as u32,
            role: m.role,
            wire: m.wire.is_some(),
            at_ms: m.created_at.timestamp_millis(),
        });
        self.text.push_str(body);
    }

    fn push(&mut self, m: MessageRef<'_>, budget: usize) {
        self.append(m);
        // The newest message stays whatever it costs (see `Window::new`).
        while self.tokens > budget && self.start + 1 < self.entries.len() {
            self.tokens -= self.entries[self.start].cost as usize;
            self.start += 1;
        }
        // Compact now and then, not on every turn: drop the dead entries
        // and their text, and move the rest down.
        if self.start > 32 && self.start * 2 > self.entries.len() {
            let cut = self
                .entries
                .get(self.start)
                .map_or(self.text.len(), |e| e.start as usize);
            self.text.drain(..cut);
            self.entries.drain(..self.start);
            for e in &mut self.entries {
                e.start -= cut as u32;
            }
            self.start = 0;
            self.text.shrink_to(self.text.len() * 2);
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

impl Hot {
    pub(crate) fn new(session: Session, window: Window) -> Hot {
        let bytes = footprint(&session, &window);
        Hot {
            last_active_ms: AtomicI64::new(session.last_active.timestamp_millis()),
            used: AtomicU8::new(UNUSED),
            bytes: AtomicUsize::new(bytes),
            session,
            window: Mutex::new(Some(window)),
        }
    }

    /// When the session's last successful turn finished.
    pub(crate) fn last_active(&self) -> DateTime<Utc> {
        from_millis(self.last_active_ms.load(Ordering::Acquire))
    }

    /// Runs `f` on the session's newest message as cached, unless a turn
    /// holds the window right now (`None` then).
    pub(crate) fn peek_last<R>(&self, f: impl FnOnce(Option<MessageRef<'_>>) -> R) -> Option<R> {
        self.lock().as_ref().map(|w| f(w.last()))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Window>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an entry with `window` costs: its allocations, plus a fixed
/// allowance for the entry, its `Arc` and its place in the index.
fn footprint(session: &Session, window: &Window) -> usize {
    const ENTRY: usize = 256;
    ENTRY
        + session.system_prompt.as_ref().map_or(0, String::capacity)
        + window.text.capacity()
        + window.entries.capacity() * std::mem::size_of::<PackedEntry>()
}

/// No turn has used the entry yet (eviction prefers these).
const UNUSED: u8 = 0;
/// Used, but not since an eviction last sampled and spared it.
const SPARED: u8 = 1;
/// Used since it was last spared.
const IN_USE: u8 = 2;

/// Entries sampled per eviction.
const EVICTION_SAMPLES: usize = 4;

/// One shard: the entries in a dense vector (so a random one can be
/// picked), and where each session's entry is.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Arc<Hot>>,
    index: HashMap<SessionId, usize>,
    /// The sum of the entries' accounted `bytes`.
    bytes: usize,
}

impl Shard {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn get(&self, id: &SessionId) -> Option<&Arc<Hot>> {
        self.index.get(id).map(|&i| &self.slots[i])
    }

    fn insert(&mut self, id: SessionId, hot: Arc<Hot>) {
        self.bytes += hot.bytes.load(Ordering::Relaxed);
        match self.index.get(&id) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.slots[i], hot);
                self.bytes -= old.bytes.load(Ordering::Relaxed);
            }
            None => {
                self.index.insert(id, self.slots.len());
                self.slots.push(hot);
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let gone = self.slots.swap_remove(i);
        self.bytes -= gone.bytes.load(Ordering::Relaxed);
        self.index.remove(&gone.session.id);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.session.id, i);
        }
    }

    /// Evicts one of a few random entries: never used first, then unused
    /// since last spared, then least recently active. The others sampled
    /// that were in use are marked spared.
    fn evict_one(&mut self) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        let mut picks = [0usize; EVICTION_SAMPLES];
        for p in &mut picks {
            *p = fastrand::usize(..n);
        }
        let key = |i: usize| {
            let h = &self.slots[i];
            (
                h.used.load(Ordering::Relaxed),
                h.last_active_ms.load(Ordering::Acquire),
            )
        };
        let victim = picks.iter().copied().min_by_key(|&i| key(i)).unwrap_or(0);
        for &i in &picks {
            // Only IN_USE moves (to SPARED); a racing turn may set it again.
            let _ = self.slots[i].used.compare_exchange(
                IN_USE,
                SPARED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.remove_at(victim);
    }

    fn retain(&mut self, keep: impl Fn(&Hot) -> bool) {
        self.slots.retain(|h| keep(h));
        self.index.clear();
        self.bytes = 0;
        for (i, h) in self.slots.iter().enumerate() {
            self.index.insert(h.session.id, i);
            self.bytes += h.bytes.load(Ordering::Relaxed);
        }
    }
}

/// The cache: sharded maps from session id to [`Hot`].
#[derive(Debug)]
pub(crate) struct HotSessions {
    shards: [Mutex<Shard>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
    bytes_per_shard: usize,
    budget: usize,
}

impl HotSessions {
    /// A cache of up to about `capacity` sessions and `max_bytes`, windows
    /// of `budget` tokens.
    pub(crate) fn new(capacity: usize, max_bytes: usize, budget: usize) -> HotSessions {
        HotSessions {
            shards: Default::default(),
            hasher: Default::default(),
            per_shard: capacity.div_ceil(SHARDS),
            bytes_per_shard: max_bytes / SHARDS,
            budget,
        }
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, Shard> {
        self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Arc<Hot>> {
        if !self.enabled() {
            return None;
        }
        self.shard(&id).get(&id).cloned()
    }

    /// Caches `session` with `history`; returns the entry.
    pub(crate) fn insert(&self, session: Session, history: Vec<Message>) -> Arc<Hot> {
        let id = session.id;
        let hot = Arc::new(Hot::new(session, Window::new(history, self.budget)));
        if !self.enabled() {
            return hot;
        }
        let new = hot.bytes.load(Ordering::Relaxed);
        if new > self.bytes_per_shard {
            // Larger than a shard's whole share: served, never cached.
            return hot;
        }
        let mut shard = self.shard(&id);
        // Room first, so the newcomer (never used, the eviction's first
        // choice) is not its own victim.
        while shard.len() > 0
            && shard.get(&id).is_none()
            && (shard.len() >= self.per_shard || shard.bytes + new > self.bytes_per_shard)
        {
            shard.evict_one();
        }
        shard.insert(id, Arc::clone(&hot));
        hot
    }

    /// Accounts for `hot`'s window having grown or shrunk to `window`, and
    /// evicts from its shard while the shard is over its share of bytes.
    fn resized(&self, hot: &Arc<Hot>, window: &Window) {
        let now = footprint(&hot.session, window);
        let before = hot.bytes.swap(now, Ordering::Relaxed);
        if now == before || !self.enabled() {
            return;
        }
        let id = hot.session.id;
        let mut shard = self.shard(&id);
        // An entry evicted while its turn ran is no longer counted.
        let counted = shard
            .index
            .get(&id)
            .is_some_and(|&i| Arc::ptr_eq(&shard.slots[i], hot));
        if !counted {
            return;
        }
        shard.bytes = shard.bytes + now - before;
        // Possibly this entry itself: its session is then read from
        // storage on its next turn.
        while shard.bytes > self.bytes_per_shard && shard.len() > 0 {
            shard.evict_one();
        }
    }

    /// Forgets `id` if its entry is still `hot`.
    pub(crate) fn invalidate(&self, id: SessionId, hot: &Arc<Hot>) {
        let mut shard = self.shard(&id);
        if let Some(&i) = shard.index.get(&id) {
            if Arc::ptr_eq(&shard.slots[i], hot) {
                shard.remove_at(i);
            }
        }
    }

    /// How many sessions are cached.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Forgets `id` (after it was deleted).
    pub(crate) fn forget(&self, id: SessionId) {
        let mut shard = self.shard(&id);
        if let Some(&i) = shard.index.get(&id) {
            shard.remove_at(i);
        }
    }

    /// Forgets every session idle since before `cutoff` (after a purge).
    pub(crate) fn forget_idle_before(&self, cutoff: DateTime<Utc>) {
        let cutoff = cutoff.timestamp_millis();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|h| h.last_active_ms.load(Ordering::Acquire) >= cutoff);
        }
    }

    /// Takes the session's window for one turn. Only one turn of a session
    /// runs at a time (the turn queue), so the window is normally there;
    /// `None` means a cancelled turn left the entry unknown: reload.
    pub(crate) fn lease(self: &Arc<Self>, hot: Arc<Hot>) -> Option<Lease> {
        let window = hot.lock().take()?;
        hot.used.store(IN_USE, Ordering::Relaxed);
        Some(Lease {
            cache: Arc::clone(self),
            hot,
            window: Some(window),
            in_doubt: false,
        })
    }
}

/// A session's window, held by the turn that runs. Dropped without
/// [`Lease::record`] it goes back unchanged, or, if the store may have
/// changed meanwhile, the entry is dropped so the next turn reloads.
/// It owns its handle on the cache, so a turn holding it can outlive the
/// borrow of the facade (a streamed reply lives inside the response body).
#[derive(Debug)]
pub(crate) struct Lease {
    cache: Arc<HotSessions>,
    pub(crate) hot: Arc<Hot>,
    window: Option<Window>,
    in_doubt: bool,
}

impl Lease {
    #[cfg(test)]
    pub(crate) fn history(&self) -> Vec<(crate::message::Role, String)> {
        self.window.as_ref().map_or(Vec::new(), Window::messages)
    }

    /// The newest messages that fit `budget` tokens, oldest first, the
    /// newest `pinned` kept whatever they cost (see [`Window::fit`]).
    pub(crate) fn history_within(&self, budget: usize, pinned: usize) -> History<'_> {
        self.window
            .as_ref()
            .map_or(History::empty(), |w| w.fit(budget, pinned))
    }

    /// The session's newest message, as far as the window holds it.
    pub(crate) fn last(&self) -> Option<MessageRef<'_>> {
        self.window.as_ref().and_then(Window::last)
    }

    /// Marks the store as being written: until [`Lease::record`], the
    /// cache may be stale.
    pub(crate) fn writing(&mut self) {
        self.in_doubt = true;
    }

    /// Records a stored turn's messages in the cache; the last one's time
    /// is the session's new `last_active`.
    pub(crate) fn record(&mut self, messages: &[MessageRef<'_>]) {
        let budget = self.cache.budget;
        if let Some(w) = self.window.as_mut() {
            for m in messages {
                w.push(*m, budget);
            }
        }
        if let Some(last) = messages.last() {
            self.hot
                .last_active_ms
                .store(last.created_at.timestamp_millis(), Ordering::Release);
        }
        self.in_doubt = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.in_doubt {
            self.cache.invalidate(self.hot.session.id, &self.hot);
        } else if let Some(window) = self.window.take() {
            self.cache.resized(&self.hot, &window);
            *self.hot.lock() = Some(window);
        }
    }
}

#[cfg(test)]
mod tests {
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
            let expected =
                crate::trim_history(&history, None, "", budget + crate::estimate_tokens(""));
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
                    lease.record(&[user(&text), user(&reply)]);
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
}
