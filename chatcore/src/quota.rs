//! The quotas a turn draws on: the caller's principal's (across its
//! sessions), then the session's; and the error a refusal becomes.

use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::facade::Inner;
use crate::rate_limit::Decision;
use crate::types::SessionId;

/// Takes one message from the caller's principal quota (across its
/// sessions), then from the session's: a message refused for either is not
/// forwarded.
pub(crate) async fn take_token(inner: &Inner, caller: &Caller, id: SessionId) -> Result<u32> {
    take_principal_token(inner, caller).await?;
    match inner.limiter.check(id).await? {
        Decision::Allowed { remaining } => Ok(remaining),
        Decision::Limited { retry_after } => Err(rate_limited(inner.limiter.limit(), retry_after)),
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
            // The field names the quota, so an operator can tell the
            // principal's refusals from the session's.
            return Err(rate_limited(limiter.limit(), retry_after).with_field("principal"));
        }
    }
    Ok(())
}

/// Maps a rate-limit rejection to its error.
pub(crate) fn rate_limited(limit: u32, retry_after: std::time::Duration) -> Error {
    // Whole seconds, at least one: a client told "0" would retry at once.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    Error::new(
        ErrorKind::RateLimited,
        format!("Rate limit exceeded: {limit} messages per minute"),
    )
    .with_retry_after(std::time::Duration::from_secs(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = rate_limited(5, std::time::Duration::from_millis(10));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(1)));
        let e = rate_limited(5, std::time::Duration::from_millis(11_500));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(12)));
        assert_eq!(e.to_string(), "Rate limit exceeded: 5 messages per minute");
    }
}
