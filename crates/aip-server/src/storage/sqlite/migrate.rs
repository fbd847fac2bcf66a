//! The schema version (`PRAGMA user_version`) and what older versions need.
//!
//! Version 1 had no `live` table: live records sat in `sessions` itself.

use rusqlite::{Connection, TransactionBehavior};

use super::db_err;
use super::sql::SCHEMA;
use crate::storage::StoreError;

/// Current schema version (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "database schema version {version} is newer than supported ({SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(SCHEMA).map_err(db_err)?;
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

/// Records of version 1 were live in `sessions` itself: they end there as failed /
/// server_restarted. Returns how many did.
pub(super) fn interrupt_v1_live_rows(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE sessions SET state = ?2, reason = ?3, error = ?4, finished_at = ?1 \
         WHERE state IN ('created', 'running')",
    )?
    .execute(super::writer::interrupted_params(now))
}
