//! The quotas: a turn draws on its payer's (the caller's principal, the
//! principal that owns the session a token opens, or else the client
//! address), then on the session's; a new session on the caller's sessions
//! per hour; feedback on the session's and the payer's feedback per hour.
//! A refusal is [`Error::rate_limited`] naming its [`Quota`].

use crate::caller::Caller;
use crate::error::{Error, Quota, Result};
use crate::inner::Inner;
use crate::rate_limit::{key_of, Decision, Joint, RateLimiter};
use crate::types::SessionId;

/// Who pays for a request beyond its session: a principal, or, when none
/// is known, the client address it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payer<'a> {
    Principal(&'a str),
    Address(&'a str),
    Nobody,
}

impl<'a> Payer<'a> {
    /// The caller's principal; for the holder of a session's token, the
    /// principal that owns the session (`owner`), so that a principal over
    /// its quota cannot go on through a token of its own session; else the
    /// client address.
    fn of(caller: &'a Caller, owner: Option<&'a str>, client: Option<&'a str>) -> Payer<'a> {
        let principal = match caller {
            Caller::Principal(p) => Some(p.id.as_str()),
            Caller::Session(_) => owner,
            Caller::Anyone => None,
        };
        match (principal, client) {
            (Some(p), _) => Payer::Principal(p),
            (None, Some(c)) => Payer::Address(c),
            (None, None) => Payer::Nobody,
        }
    }
}

/// One token of `quota` from `limiter` for `key`.
async fn take(limiter: &dyn RateLimiter, quota: Quota, key: SessionId) -> Result<u32> {
    match limiter.check(key).await? {
        Decision::Allowed { remaining } => Ok(remaining),
        Decision::Limited { retry_after } => {
            Err(Error::rate_limited(quota, limiter.limit(), retry_after))
        }
    }
}

/// The key of `name` within a limiter that counts several kinds of
/// thing (`kind` keeps a session and an address with the same bytes
/// apart).
fn scoped_key(kind: &[u8], name: &[u8]) -> SessionId {
    let mut buf = Vec::with_capacity(kind.len() + 1 + name.len());
    buf.extend_from_slice(kind);
    buf.push(b':');
    buf.extend_from_slice(name);
    key_of(&buf)
}

/// Takes one message from the payer's quota (across its sessions) and one
/// from the session's, in one check of both ([`RateLimiter::check_both`]):
/// a message refused for either is not forwarded, and with limiters that
/// decide both at once (Redis) a refusal spends neither. `owner` is the
/// session's owner.
pub(crate) async fn take_token(
    inner: &Inner,
    caller: &Caller,
    owner: Option<&str>,
    client: Option<&str>,
    id: SessionId,
) -> Result<u32> {
    let session = &*inner.limiter;
    let Some((payer, quota, key)) = payer_quota(inner, Payer::of(caller, owner, client)) else {
        return take(session, Quota::Session, id).await;
    };
    joint(
        session.check_both(id, payer, key).await?,
        session,
        Quota::Session,
        payer,
        quota,
    )
}

/// A [`Joint`] decision as a token taken, or the refusal naming its quota.
fn joint(
    decision: Joint,
    this: &dyn RateLimiter,
    this_quota: Quota,
    also: &dyn RateLimiter,
    also_quota: Quota,
) -> Result<u32> {
    match decision {
        Joint::Allowed { remaining } => Ok(remaining),
        Joint::AlsoLimited { retry_after } => {
            Err(Error::rate_limited(also_quota, also.limit(), retry_after))
        }
        Joint::Limited { retry_after } => {
            Err(Error::rate_limited(this_quota, this.limit(), retry_after))
        }
    }
}

/// The limiter, quota and key a payer's messages draw on, if any.
fn payer_quota<'i>(
    inner: &'i Inner,
    payer: Payer<'_>,
) -> Option<(&'i dyn RateLimiter, Quota, SessionId)> {
    match (payer, &inner.principal_limiter, &inner.address_limiter) {
        (Payer::Principal(p), Some(limiter), _) => {
            Some((&**limiter, Quota::Principal, key_of(p.as_bytes())))
        }
        (Payer::Address(a), _, Some(limiter)) => {
            Some((&**limiter, Quota::Address, key_of(a.as_bytes())))
        }
        _ => None,
    }
}

/// Takes one message from the caller's own quota: its principal's, or its
/// address's when it has none (stateless requests count too).
pub(crate) async fn take_caller_token(
    inner: &Inner,
    caller: &Caller,
    client: Option<&str>,
) -> Result<()> {
    take_payer_token(inner, Payer::of(caller, None, client)).await
}

async fn take_payer_token(inner: &Inner, payer: Payer<'_>) -> Result<()> {
    if let Some((limiter, quota, key)) = payer_quota(inner, payer) {
        take(limiter, quota, key).await?;
    }
    Ok(())
}

/// Takes one feedback from its payer's feedback quota and one from the
/// session's, in one check of both (see [`take_token`]).
pub(crate) async fn take_feedback_token(
    inner: &Inner,
    caller: &Caller,
    owner: Option<&str>,
    client: Option<&str>,
    id: SessionId,
) -> Result<()> {
    let Some(limiter) = &inner.feedback_limiter else {
        return Ok(());
    };
    let payer = match Payer::of(caller, owner, client) {
        Payer::Principal(p) => Some(scoped_key(b"principal", p.as_bytes())),
        Payer::Address(a) => Some(scoped_key(b"address", a.as_bytes())),
        Payer::Nobody => None,
    };
    let session = scoped_key(b"session", id.as_bytes());
    let limiter = &**limiter;
    match payer {
        Some(payer) => joint(
            limiter.check_both(session, limiter, payer).await?,
            limiter,
            Quota::Feedback,
            limiter,
            Quota::Feedback,
        )
        .map(drop),
        None => take(limiter, Quota::Feedback, session).await.map(drop),
    }
}

/// Takes one session from the caller's sessions-per-hour quota, if the
/// facade has one: keyed by the principal, else by `client` (the address
/// an anonymous caller comes from), else shared by every anonymous caller.
pub(crate) async fn take_session_token(
    inner: &Inner,
    caller: &Caller,
    client: Option<&str>,
) -> Result<()> {
    let Some(limiter) = &inner.session_limiter else {
        return Ok(());
    };
    // Kinds apart: a principal named like an address is not that address.
    let who = match (caller.principal(), client) {
        (Some(p), _) => scoped_key(b"principal", p.id.as_bytes()),
        (None, Some(client)) => scoped_key(b"address", client.as_bytes()),
        (None, None) => key_of(b""),
    };
    take(&**limiter, Quota::Sessions, who).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = Error::rate_limited(Quota::Session, 5, Duration::from_millis(10));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        let e = Error::rate_limited(Quota::Principal, 5, Duration::from_millis(11_500));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!(e.to_string(), "Rate limit exceeded: 5 messages per minute");
        assert_eq!(e.quota(), Some(Quota::Principal));
        let e = Error::rate_limited(Quota::Sessions, 60, Duration::from_secs(59));
        assert_eq!(e.to_string(), "Rate limit exceeded: 60 sessions per hour");
    }
}
