//! The per-session turn queues: one fair FIFO async mutex per session with a
//! turn in flight, so turns of one session run one at a time, in arrival
//! order, and turns of different sessions in parallel.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::types::SessionId;

const SHARDS: usize = 16;

/// A session's queue: the FIFO lock and how many turns hold or wait on it.
#[derive(Debug)]
struct Queue {
    lock: Arc<AsyncMutex<()>>,
    users: usize,
}

type LockMap = HashMap<SessionId, Queue>;

/// One FIFO queue per session with a turn in flight; a session's entry is
/// removed when its last turn ends (or is cancelled while waiting), so the
/// map holds only busy sessions.
#[derive(Debug, Default)]
pub(crate) struct TurnQueues {
    shards: [Mutex<LockMap>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// Holds (or waits for) a session's turn slot; dropping it lets the next
/// turn in and, if it was the last user, removes the queue.
#[derive(Debug)]
pub(crate) struct TurnSlot {
    queues: Arc<TurnQueues>,
    id: SessionId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TurnQueues {
    fn shard(&self, id: &SessionId) -> &Mutex<LockMap> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Waits for `id`'s earlier turns to finish (in arrival order).
    pub(crate) async fn enter(self: &Arc<Self>, id: SessionId) -> TurnSlot {
        let lock = {
            let mut map = self.shard(&id).lock().unwrap_or_else(|p| p.into_inner());
            let queue = map.entry(id).or_insert_with(|| Queue {
                lock: Arc::default(),
                users: 0,
            });
            queue.users += 1;
            Arc::clone(&queue.lock)
        };
        // Made before waiting: if this future is dropped while it waits,
        // the slot's drop still counts this user out.
        let mut slot = TurnSlot {
            queues: Arc::clone(self),
            id,
            guard: None,
        };
        slot.guard = Some(lock.lock_owned().await);
        slot
    }

    /// Whether a turn of `id` holds or waits for its slot now.
    pub(crate) fn is_busy(&self, id: SessionId) -> bool {
        self.shard(&id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    #[cfg(test)]
    pub(crate) fn busy_sessions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Drop for TurnSlot {
    fn drop(&mut self) {
        // Release first, then count this user out; the last one out removes
        // the queue. Users are counted under the shard lock.
        drop(self.guard.take());
        let mut map = self
            .queues
            .shard(&self.id)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = map.get_mut(&self.id) {
            queue.users -= 1;
            if queue.users == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[tokio::test]
    async fn a_cancelled_waiter_leaves_no_queue_behind() {
        let queues = Arc::new(TurnQueues::default());
        let id = SessionId::new_v4();
        let first = queues.enter(id).await;
        {
            let waiting = queues.enter(id);
            tokio::pin!(waiting);
            // Poll once so it queues, then drop it (a client going away).
            assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        }
        drop(first);
        assert_eq!(queues.busy_sessions(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn queues_are_fifo_and_cleaned_up() {
        let queues = Arc::new(TurnQueues::default());
        let id = SessionId::new_v4();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = queues.enter(id).await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (q, o) = (Arc::clone(&queues), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = q.enter(id).await;
                o.lock().unwrap().push(i);
            }));
            // Let task i queue before task i + 1 arrives.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(queues.busy_sessions(), 0);
    }
}
