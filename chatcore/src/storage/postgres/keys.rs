//! API keys on PostgreSQL (only a hash of each secret).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{millis, PostgresStore};
use crate::error::{Error, Result};
use crate::storage::{ApiKey, KeyStore};
use tokio_postgres::Row;

const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, name, hash, admin, created_at) VALUES ($1, $2, $3, $4, $5)";
const GET_KEY: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys WHERE id = $1";
const LIST_KEYS: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys ORDER BY created_at, id";
const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

/// An API key row: the key and the hash of its secret.
fn key_from(row: &Row) -> Result<(ApiKey, [u8; 32])> {
    let hash: Vec<u8> = row.try_get(2)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| Error::storage("a key hash is not 32 bytes"))?;
    Ok((
        ApiKey {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            admin: row.try_get(3)?,
            created_at: row.try_get(4)?,
            revoked_at: row.try_get(5)?,
        },
        hash,
    ))
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()> {
        self.execute(
            INSERT_KEY,
            &[
                &key.id,
                &key.name,
                &&hash[..],
                &key.admin,
                &millis(key.created_at),
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>> {
        // Every lookup reads the shared table: a key revoked through any
        // gateway is refused by all from the next lookup on.
        self.query_opt(GET_KEY, &[&id])
            .await?
            .map(|row| key_from(&row))
            .transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = self.query(LIST_KEYS, &[]).await?;
        rows.iter().map(|row| Ok(key_from(row)?.0)).collect()
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        Ok(self.execute(REVOKE_KEY, &[&id, &millis(at)]).await? > 0)
    }
}
