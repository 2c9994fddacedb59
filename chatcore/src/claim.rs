//! A turn's claim on its session in a store shared by several gateways:
//! under the per-process queue, a turn also claims the session in the
//! store, which loads the history as stored by whichever gateway wrote
//! last, and the append succeeds only while the claim is held. The claim is
//! a row update, not a held connection or lock, so no database connection
//! waits on the model. The history this process last stored or read is
//! kept with its version (`Inner::windows`): a claim that finds the session
//! still at that version reads no messages.

use std::sync::Arc;
use std::time::Duration;

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::hot::Lease;
use crate::inner::Inner;
use crate::quota::take_token;
use crate::storage::{Claim, Store, TurnClaims, TurnToken};
use crate::types::SessionId;

/// Claims session `id` in a shared store, waiting while a turn elsewhere
/// holds it, and leases its history as stored. A message the caller may
/// not send (another's session, an expired one, over quota) is refused
/// before it waits: then its rate-limit token is taken here, and returned.
pub(crate) async fn claim_session(
    inner: &Inner,
    caller: &Caller,
    client: Option<&str>,
    id: SessionId,
) -> Result<(ClaimGuard, Lease, Option<u32>)> {
    let token = TurnToken::new();
    let ttl = inner.claim_ttl;
    // Armed while a claim may land: a claim statement cannot be taken back
    // once sent, so if this future is dropped mid-call (the client went
    // away) the guard releases whatever landed.
    let mut guard = ClaimGuard::new(Arc::clone(&inner.store), id, token);
    let mut taken = None;
    // Turns of one session at once on several gateways are rare (a person
    // waits for a reply), so waiting polls: a short first wait, doubling,
    // with jitter so that two waiters do not retry in step.
    let mut wait = Duration::from_millis(2);
    // Taken out while the claim is in doubt: a failed claim leaves the
    // next turn to read the history.
    let mut kept = inner.windows.take_window(id);
    let (session, window) = loop {
        guard.released = false;
        let known = kept.as_ref().and_then(|w| w.version);
        match claims(&*inner.store)?
            .claim_turn_since(id, token, ttl, inner.history_limit, known)
            .await?
        {
            Claim::Held(session, history, version) => {
                break (session, inner.windows.window(history, version))
            }
            Claim::Current(session) => match kept.take() {
                Some(window) => break (session, window),
                None => return Err(Error::internal("a claim confirmed a history not kept")),
            },
            Claim::Missing => {
                guard.released = true;
                inner.windows.forget(id);
                return Err(Error::session_not_found());
            }
            Claim::Busy(session) => {
                guard.released = true;
                if taken.is_none() {
                    if !caller.may_use(&session) {
                        return Err(Error::session_not_found());
                    }
                    if !inner.sessions.is_active_since(session.last_active) {
                        return Err(Error::session_expired());
                    }
                    let owner = session.owner.as_deref();
                    taken = Some(take_token(inner, caller, owner, client, id).await?);
                }
                let jitter = Duration::from_micros(fastrand::u64(0..=wait.as_micros() as u64 / 2));
                tokio::time::sleep(wait + jitter).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        }
    };
    guard.renew_every(ttl);
    let mut session = session;
    session.metadata = None;
    let hot = inner.windows.insert_window(session, window);
    let lease = inner
        .windows
        .lease(hot)
        .ok_or_else(|| Error::internal("a fresh session window was already leased"))?;
    Ok((guard, lease, taken))
}

/// The store's claim protocol. A claim is only ever taken on a store that
/// has one (the facade asks before it claims), so its absence is a bug.
pub(crate) fn claims(store: &dyn Store) -> Result<&dyn TurnClaims> {
    store
        .claims()
        .ok_or_else(|| Error::internal("a turn claim on a store without claims"))
}

/// A turn's claim on its session in a shared store. Once held, a
/// background task renews it while the turn runs (a streamed reply may
/// outlast any fixed lifetime); dropping the guard stops the renewal and
/// releases the claim, unless the turn was stored, which released it
/// already (or no claim can be held: `released`).
#[derive(Debug)]
pub(crate) struct ClaimGuard {
    store: Arc<dyn Store>,
    id: SessionId,
    pub(crate) token: TurnToken,
    renewer: Option<tokio::task::JoinHandle<()>>,
    pub(crate) released: bool,
}

impl ClaimGuard {
    fn new(store: Arc<dyn Store>, id: SessionId, token: TurnToken) -> Self {
        ClaimGuard {
            store,
            id,
            token,
            renewer: None,
            released: false,
        }
    }

    /// Renews the held claim every third of `ttl`.
    fn renew_every(&mut self, ttl: Duration) {
        let (store, id, token) = (Arc::clone(&self.store), self.id, self.token);
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                // A lost claim cannot come back; a failed renewal may be a
                // blip, and the claim still has two thirds of its life.
                let Ok(claims) = claims(&*store) else { return };
                if let Ok(false) = claims.renew_claim(id, token, ttl).await {
                    return;
                }
            }
        }));
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
        if self.released {
            return;
        }
        // Dropped without storing: free the session now rather than when
        // the claim lapses. Should this fail, the lapse frees it anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, id, token) = (Arc::clone(&self.store), self.id, self.token);
            runtime.spawn(async move {
                if let Ok(claims) = claims(&*store) {
                    let _ = claims.release_claim(id, token).await;
                }
            });
        }
    }
}
