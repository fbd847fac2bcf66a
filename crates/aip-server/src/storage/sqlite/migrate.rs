//! The schema version (`PRAGMA user_version`) and what older versions need.
//!
//! Version 1 had no `live` table: live records sat in `sessions` itself. Version 2 had no
//! `job_id` column on the session tables and no job tables (`jobs`, `job_members`).

use rusqlite::{Connection, TransactionBehavior};

use super::db_err;
use super::sql::SCHEMA;
use crate::storage::StoreError;

/// Current schema version (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 3;

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
    // Tables made by version 1 or 2 lack the column that `SCHEMA` creates new ones with.
    for table in ["sessions", "live"] {
        if !has_column(&tx, table, "job_id").map_err(db_err)? {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN job_id TEXT NULL"))
                .map_err(db_err)?;
        }
    }
    tx.execute_batch(super::jobs::JOBS_SCHEMA).map_err(db_err)?;
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

/// True when `table` has a column named `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let names = stmt.query_map([], |row| row.get::<_, String>(0))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
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
