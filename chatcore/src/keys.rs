//! API keys: made here, shown once, stored only as a SHA-256 hash.
//!
//! A key reads `cgk_<id>_<secret>`: the prefix makes it recognisable (to
//! people and to secret scanners), the id finds its row without scanning,
//! and the secret is 256 bits from the operating system's CSPRNG. A
//! lookup compares hashes in constant time, so timing says nothing about
//! how much of a guess was right.

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::storage::{ApiKey, Store};

/// What every key starts with.
pub const KEY_PREFIX: &str = "cgk_";

/// A key just made: its record, and the key itself (shown once).
#[derive(Clone)]
pub struct NewKey {
    /// The stored record.
    pub key: ApiKey,
    /// The key to hand to its user; it is not stored anywhere.
    pub secret: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// API key operations over a store (see [`ChatCore::keys`](crate::ChatCore::keys)).
#[derive(Debug, Clone, Copy)]
pub struct KeyRing<'a> {
    store: &'a dyn Store,
    clock: &'a dyn Clock,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| Error::internal("the system's random source failed"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The stored hash of a key.
fn hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id inside a key, if it has a key's shape.
pub fn key_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(KEY_PREFIX)?;
    let (id, tail) = rest.split_once('_')?;
    (id.len() == 12 && tail.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

impl<'a> KeyRing<'a> {
    pub(crate) fn new(store: &'a dyn Store, clock: &'a dyn Clock) -> Self {
        KeyRing { store, clock }
    }

    /// Makes and stores a key named `name`; the returned secret is the only
    /// copy.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// empty or overlong name; [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn create(&self, name: &str, admin: bool) -> Result<NewKey> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid(
                "name",
                "a key's name must be 1 to 200 characters",
            ));
        }
        let id = random_hex(6)?;
        let secret = format!("{KEY_PREFIX}{id}_{}", random_hex(32)?);
        let key = ApiKey {
            id,
            name: name.to_owned(),
            admin,
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.insert_key(&key, &hash(&secret)).await?;
        Ok(NewKey { key, secret })
    }

    /// The key `secret` is, if it is a live one (known and not revoked).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn verify(&self, secret: &str) -> Result<Option<ApiKey>> {
        let Some(id) = key_id(secret) else {
            return Ok(None);
        };
        let Some((key, stored)) = self.store.get_key(id).await? else {
            return Ok(None);
        };
        Ok((same(&stored, &hash(secret)) && key.revoked_at.is_none()).then_some(key))
    }

    /// Every key, oldest first (without secrets, which are not kept).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn list(&self) -> Result<Vec<ApiKey>> {
        self.store.list_keys().await
    }

    /// Revokes key `id` now; `false` when there is no such live key.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let at: DateTime<Utc> = self.clock.now();
        self.store.revoke_key(id, at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KeyStore;
    use crate::{MemoryStore, SystemClock};

    #[tokio::test]
    async fn a_key_verifies_until_revoked_and_only_its_hash_is_kept() {
        let store = MemoryStore::new();
        let ring = KeyRing::new(&store, &SystemClock);
        let made = ring.create("ci", true).await.unwrap();
        assert!(made.secret.starts_with("cgk_"));
        assert_eq!(key_id(&made.secret), Some(made.key.id.as_str()));
        assert!(!format!("{made:?}").contains(&made.secret));
        let found = ring.verify(&made.secret).await.unwrap().unwrap();
        assert!(found.admin);
        // One character off, or a made-up key: nothing.
        let mut wrong = made.secret.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(ring.verify(&wrong).await.unwrap().is_none());
        assert!(ring.verify("sk-not-ours").await.unwrap().is_none());
        let (_, stored) = store.get_key(&made.key.id).await.unwrap().unwrap();
        assert_eq!(stored, hash(&made.secret));
        assert!(ring.revoke(&made.key.id).await.unwrap());
        assert!(!ring.revoke(&made.key.id).await.unwrap());
        assert!(ring.verify(&made.secret).await.unwrap().is_none());
    }

    #[test]
    fn two_keys_differ() {
        assert_ne!(random_hex(32).unwrap(), random_hex(32).unwrap());
    }
}
