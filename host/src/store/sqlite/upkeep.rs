//! Housekeeping queries of the SQLite store: purging finished sessions in batches, and
//! measuring what each tenant holds.

use super::{PURGE_CHUNK, SqliteStore, sqlite};
use crate::session::SessionId;
use crate::store::{StorageUsage, StoreError, usage_of};
use rusqlite::params;
use std::collections::BTreeMap;

pub(super) fn usage(store: &SqliteStore) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
    store.read(
        |conn| {
            let mut query = conn.prepare_cached(
                "SELECT tenant, 0, SUM(length(CAST(key AS BLOB)) + length(value)) FROM kv GROUP BY tenant
                 UNION ALL SELECT s.tenant, 1, SUM(length(CAST(o.body AS BLOB)))
                     FROM outputs o JOIN sessions s ON s.id = o.session GROUP BY s.tenant
                 UNION ALL SELECT s.tenant, 2, COUNT(*)
                     FROM event_keys k JOIN sessions s ON s.id = k.session GROUP BY s.tenant
                 UNION ALL SELECT v.tenant, 3, SUM(length(m.bytes))
                     FROM (SELECT DISTINCT tenant, version FROM app_versions) v
                     JOIN modules m ON m.hash = v.version GROUP BY v.tenant",
            )?;
            let rows = query.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?.unwrap_or(0))))?;
            Ok(usage_of(rows.collect::<rusqlite::Result<Vec<_>>>()?.into_iter()))
        },
        "measuring each tenant's storage",
    )
}

pub(super) fn purge(store: &SqliteStore, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
    let fail = sqlite("purging finished sessions");
    let json = |ids: &[i64]| serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned());
    let asked: Vec<i64> = sessions.iter().map(|s| i64::try_from(s.0).unwrap_or(i64::MAX)).collect();
    // The finished ones among them (finished sessions never open again).
    let finished: Vec<i64> = {
        let conn = store.conn();
        let mut query = conn
            .prepare("SELECT id FROM sessions WHERE id IN (SELECT value FROM json_each(?1)) AND finished = 1")
            .map_err(&fail)?;
        let rows = query.query_map(params![json(&asked)], |r| r.get(0)).map_err(&fail)?;
        rows.collect::<Result<_, _>>().map_err(&fail)?
    };
    let Some(&highest) = finished.iter().max() else { return Ok(Vec::new()) };
    let list = json(&finished);
    // Outputs a chunk per transaction, the writer lock let go between chunks: sessions with
    // hundreds of thousands of outputs do not hold every other commit up.
    loop {
        let deleted = store
            .conn()
            .execute(
                "DELETE FROM outputs WHERE rowid IN (SELECT rowid FROM outputs
                     WHERE session IN (SELECT value FROM json_each(?1)) LIMIT ?2)",
                params![list, PURGE_CHUNK],
            )
            .map_err(&fail)?;
        if i64::try_from(deleted).unwrap_or(i64::MAX) < PURGE_CHUNK {
            break;
        }
    }
    // The rest of the batch in one transaction.
    let mut conn = store.conn();
    let tx = conn.transaction().map_err(&fail)?;
    for table in ["inbox", "event_keys", "outputs"] {
        tx.execute(&format!("DELETE FROM {table} WHERE session IN (SELECT value FROM json_each(?1))"), params![list])
            .map_err(&fail)?;
    }
    tx.execute("DELETE FROM sessions WHERE id IN (SELECT value FROM json_each(?1)) AND finished = 1", params![list])
        .map_err(&fail)?;
    tx.execute("UPDATE meta SET value = max(value, ?1) WHERE key = 'purged_up_to'", params![highest]).map_err(&fail)?;
    tx.commit().map_err(&fail)?;
    Ok(finished.into_iter().map(|id| SessionId(u64::try_from(id).unwrap_or_default())).collect())
}
