//! API keys in SQLite (only a hash of each secret).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::sql::*;
use super::{Sql, SqliteStore};
use crate::error::{Error, Result};
use crate::storage::{ApiKey, KeyStore};
use crate::types::from_millis;

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiKey, Vec<u8>)> {
    Ok((
        ApiKey {
            id: r.get(0)?,
            name: r.get(1)?,
            admin: r.get(3)?,
            created_at: from_millis(r.get(4)?),
            revoked_at: r.get::<_, Option<i64>>(5)?.map(from_millis),
        },
        r.get(2)?,
    ))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()> {
        let key = key.clone();
        let hash = *hash;
        self.worker
            .call_single(move |db| {
                db.prepare(INSERT_KEY)?.execute(params![
                    key.id,
                    key.name,
                    &hash[..],
                    key.admin,
                    key.created_at.timestamp_millis()
                ])?;
                Ok(())
            })
            .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>> {
        let id = id.to_owned();
        // Each lookup is a read transaction of its own, so it sees every
        // commit before it: a key revoked by another process is refused
        // from the next lookup on.
        self.reader
            .read(move |db| {
                let row = db.prepare(GET_KEY)?.query_row([id], key_row).optional()?;
                row.map(|(key, hash)| {
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| Error::storage("a key hash is not 32 bytes"))?;
                    Ok((key, hash))
                })
                .transpose()
            })
            .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.reader
            .read(|db| {
                let mut stmt = db.prepare(LIST_KEYS)?;
                let rows = stmt.query_map([], key_row)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(row?.0);
                }
                Ok(out)
            })
            .await
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let id = id.to_owned();
        let at = at.timestamp_millis();
        self.worker
            .call_single(move |db| Ok(db.prepare(REVOKE_KEY)?.execute(params![id, at])? > 0))
            .await
    }
}
