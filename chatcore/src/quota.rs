//! The quotas: a turn draws on the caller's principal's (across its
//! sessions), then the session's; a new session on the caller's sessions
//! per hour. A refusal is [`Error::rate_limited`] naming its [`Quota`].

use crate::caller::Caller;
use crate::error::{Error, Quota, Result};
use crate::inner::Inner;
use crate::rate_limit::Decision;
use crate::types::SessionId;

/// Takes one message from the caller's principal quota (across its
/// sessions), then from the session's: a message refused for either is not
/// forwarded.
pub(crate) async fn take_token(inner: &Inner, caller: &Caller, id: SessionId) -> Result<u32> {
    take_principal_token(inner, caller).await?;
    match inner.limiter.check(id).await? {
        Decision::Allowed { remaining } => Ok(remaining),
        Decision::Limited { retry_after } => Err(Error::rate_limited(
            Quota::Session,
            inner.limiter.limit(),
            retry_after,
        )),
    }
}

/// Takes one message from the caller's principal quota, if it has one
/// (stateless requests count against it too).
pub(crate) async fn take_principal_token(inner: &Inner, caller: &Caller) -> Result<()> {
    if let (Some(p), Some(limiter)) = (caller.principal(), &inner.principal_limiter) {
        if let Decision::Limited { retry_after } = limiter
            .check(crate::rate_limit::key_of(p.id.as_bytes()))
            .await?
        {
            return Err(Error::rate_limited(
                Quota::Principal,
                limiter.limit(),
                retry_after,
            ));
        }
    }
    Ok(())
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
    let who = match (caller.principal(), client) {
        (Some(p), _) => p.id.as_str(),
        (None, Some(client)) => client,
        (None, None) => "",
    };
    if let Decision::Limited { retry_after } = limiter
        .check(crate::rate_limit::key_of(who.as_bytes()))
        .await?
    {
        return Err(Error::rate_limited(
            Quota::Sessions,
            limiter.limit(),
            retry_after,
        ));
    }
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
