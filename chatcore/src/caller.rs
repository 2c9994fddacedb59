//! Who a request acts for, and which sessions that caller may use.
//!
//! Access control lives here, in the library, not only in a gateway: a
//! session belongs to the principal that created it, another principal
//! is told it does not exist (so its existence does not leak), an admin
//! sees every session, and a session token opens exactly one session.
//! The gateway only turns credentials into a [`Caller`].

use std::fmt;

use crate::types::{Session, SessionId};

/// An authenticated principal: an API key's owner or a JWT's subject.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its stable name (a JWT's `sub`, or `key:<id>` for an API key).
    pub id: String,
    /// Whether it may see every session and review feedback.
    pub admin: bool,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.id)
            .field("admin", &self.admin)
            .finish()
    }
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No access control: every session (the `none` mode).
    Anyone,
    /// A principal: its own sessions, or all of them for an admin.
    Principal(Principal),
    /// A session token's holder: that one session.
    Session(SessionId),
}

impl Caller {
    /// Whether this caller may use `session`.
    pub fn may_use(&self, session: &Session) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Principal(p) => p.admin || session.owner.as_deref() == Some(p.id.as_str()),
            Caller::Session(id) => session.id == *id,
        }
    }

    /// The owner a session created by this caller gets.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Principal(p) => Some(&p.id),
            Caller::Anyone | Caller::Session(_) => None,
        }
    }

    /// The principal, if the caller is one.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Principal(p) => Some(p),
            Caller::Anyone | Caller::Session(_) => None,
        }
    }

    /// Whether this caller sees every session.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Principal(p) if p.admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn owned_by(owner: Option<&str>) -> Session {
        Session {
            id: SessionId::new_v4(),
            created_at: Utc::now(),
            last_active: Utc::now(),
            system_prompt: None,
            metadata: None,
            owner: owner.map(str::to_owned),
            target: None,
        }
    }

    fn principal(id: &str, admin: bool) -> Caller {
        Caller::Principal(Principal {
            id: id.into(),
            admin,
        })
    }

    #[test]
    fn sessions_belong_to_their_creator() {
        let alice = owned_by(Some("alice"));
        let anon = owned_by(None);
        assert!(Caller::Anyone.may_use(&alice));
        assert!(principal("alice", false).may_use(&alice));
        assert!(!principal("bob", false).may_use(&alice));
        assert!(!principal("bob", false).may_use(&anon));
        assert!(principal("root", true).may_use(&alice));
        assert!(Caller::Session(alice.id).may_use(&alice));
        assert!(!Caller::Session(alice.id).may_use(&anon));
        assert_eq!(principal("alice", true).owner(), Some("alice"));
        assert_eq!(Caller::Session(alice.id).owner(), None);
    }
}
