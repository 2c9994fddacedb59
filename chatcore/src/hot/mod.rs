//! The hot-session cache: what a chat turn needs to know about a session
//! (its record, `last_active`, and the recent history that can still fit
//! the context budget), kept in memory so a turn reads nothing from storage.
//!
//! Coherence: every change to a session's messages and `last_active` goes
//! through [`Scoped::chat`](crate::Scoped::chat), under the session's
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
use crate::storage::{HistoryVersion, TurnToken};
use crate::types::{from_millis, Session, SessionId};

mod window;

pub(crate) use window::Window;

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
        self.insert_window(session, Window::new(history, self.budget))
    }

    /// A window for `history`, at `version` of a shared store's history.
    pub(crate) fn window(&self, history: Vec<Message>, version: HistoryVersion) -> Window {
        let mut window = Window::new(history, self.budget);
        window.version = Some(version);
        window
    }

    /// Takes `id`'s window out of the cache, for a turn that will claim
    /// the session in a shared store and may find it still current. The
    /// entry stays, windowless, until the turn caches one again.
    pub(crate) fn take_window(&self, id: SessionId) -> Option<Window> {
        let hot = self.get(id)?;
        let window = hot.lock().take();
        window
    }

    /// Caches `session` with `window`; returns the entry.
    pub(crate) fn insert_window(&self, session: Session, mut window: Window) -> Arc<Hot> {
        let id = session.id;
        window.target = session.target.as_deref().map(Arc::from);
        let hot = Arc::new(Hot::new(session, window));
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

    /// Forgets `id` and empties its window, for a caller that changed the
    /// session's stored history under its queue slot (no turn holds a
    /// lease then): a turn that looked the entry up before could otherwise
    /// still lease the old window; now it finds none and reads the store.
    pub(crate) fn discard(&self, id: SessionId) {
        if let Some(hot) = self.get(id) {
            drop(hot.lock().take());
        }
        self.forget(id);
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

    /// The target that answered the session's last turn, if the window
    /// knows it.
    pub(crate) fn target(&self) -> Option<&Arc<str>> {
        self.window.as_ref().and_then(|w| w.target.as_ref())
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

    /// Records a stored turn's messages in the cache, and the target that
    /// answered it; the last message's time is the session's new
    /// `last_active`. On a shared store the turn was stored under claim
    /// `token`, which moves the window's version; without one the window
    /// has none.
    pub(crate) fn record(
        &mut self,
        messages: &[MessageRef<'_>],
        target: Option<&Arc<str>>,
        token: Option<TurnToken>,
    ) {
        let budget = self.cache.budget;
        if let Some(w) = self.window.as_mut() {
            for m in messages {
                w.push(*m, budget);
            }
            w.version = w
                .version
                .zip(token)
                .map(|(v, token)| v.then(token, messages.len()));
            if let Some(t) = target {
                if w.target.as_ref() != Some(t) {
                    w.target = Some(Arc::clone(t));
                }
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
mod tests;
