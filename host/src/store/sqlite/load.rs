//! Reading the SQLite store back: the catalogue (tenants, apps, modules, tokens) and the
//! sessions, all or one, with their inboxes; a row that does not decode is set aside
//! (quarantined) and comes back as a failed session saying why.

use super::{json, session_id, sqlite, u64_of};
use crate::store::{
    AppRecord, Image, InboxEvent, Quarantined, SessionRecord, StoreError, StoredSession, TenantRecord, TokenRecord,
    Unapplied, quarantined_session,
};
use rusqlite::{Transaction, params};
use std::collections::BTreeMap;

/// One stored session row, before its snapshot is decoded.
struct Row {
    id: i64,
    tenant: String,
    app: String,
    snapshot: String,
    fence: i64,
}

/// Tenants, apps, modules and tokens.
pub(super) fn catalogue(tx: &Transaction<'_>, image: &mut Image) -> Result<(), StoreError> {
    let fail = sqlite("loading");
    let mut rows = tx.prepare("SELECT name, config FROM tenants ORDER BY name").map_err(&fail)?;
    for row in rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(&fail)? {
        let (name, config) = row.map_err(&fail)?;
        let config = serde_json::from_str(&config).map_err(|source| StoreError::Decode { what: "tenant", source })?;
        image.tenants.push(TenantRecord { config, name });
    }
    let app = |r: &rusqlite::Row<'_>| Ok(AppRecord { tenant: r.get(0)?, app: r.get(1)?, version: r.get(2)? });
    let mut rows = tx.prepare("SELECT tenant, name, version FROM apps ORDER BY tenant, name").map_err(&fail)?;
    image.apps = rows.query_map([], app).map_err(&fail)?.collect::<Result<_, _>>().map_err(&fail)?;
    let mut rows = tx.prepare("SELECT tenant, app, version FROM app_versions ORDER BY deployed").map_err(&fail)?;
    image.app_versions = rows.query_map([], app).map_err(&fail)?.collect::<Result<_, _>>().map_err(&fail)?;
    let mut rows = tx.prepare("SELECT hash, bytes FROM modules").map_err(&fail)?;
    for module in rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(&fail)? {
        let (hash, bytes) = module.map_err(&fail)?;
        image.modules.insert(hash, bytes);
    }
    let mut rows = tx.prepare("SELECT id, tenant, hash FROM tokens ORDER BY id").map_err(&fail)?;
    image.tokens = rows
        .query_map([], |r| Ok(TokenRecord { id: r.get(0)?, tenant: r.get(1)?, hash: r.get(2)? }))
        .map_err(&fail)?
        .collect::<Result<_, _>>()
        .map_err(&fail)?;
    Ok(())
}

/// The sessions (only session `only` when given) with their inboxes, oldest first; rows that do
/// not decode are set aside (noted in `quarantined`) and come back as failed sessions saying
/// why, or are an error when there is nowhere to note them.
pub(super) fn sessions(
    tx: &Transaction<'_>,
    only: Option<i64>,
    mut quarantined: Option<&mut Vec<Quarantined>>,
) -> Result<Vec<StoredSession>, StoreError> {
    let mut sessions = Vec::new();
    let mut inboxes: BTreeMap<i64, Vec<InboxEvent>> = BTreeMap::new();
    let mut unapplied: BTreeMap<i64, Vec<Unapplied>> = BTreeMap::new();
    {
        let mut rows = tx
            .prepare("SELECT session, seq, event, key, unapplied FROM inbox WHERE ?1 IS NULL OR session = ?1 ORDER BY session, seq")
            .map_err(sqlite("loading"))?;
        let events = rows
            .query_map([only], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get::<_, bool>(4)?))
            })
            .map_err(sqlite("loading"))?;
        for event in events {
            let (session, seq, event, key, not_applied) = event.map_err(sqlite("loading"))?;
            if not_applied {
                unapplied.entry(session).or_default().push(Unapplied { seq: u64_of(seq), key });
            } else {
                inboxes.entry(session).or_default().push(InboxEvent { seq: u64_of(seq), event, key });
            }
        }
    }
    let rows: Vec<Row> = {
        let mut rows = tx
            .prepare("SELECT id, tenant, app, snapshot, fence FROM sessions WHERE ?1 IS NULL OR id = ?1 ORDER BY id")
            .map_err(sqlite("loading"))?;
        let rows = rows
            .query_map([only], |r| {
                Ok(Row { id: r.get(0)?, tenant: r.get(1)?, app: r.get(2)?, snapshot: r.get(3)?, fence: r.get(4)? })
            })
            .map_err(sqlite("loading"))?;
        rows.collect::<Result<_, _>>().map_err(sqlite("loading"))?
    };
    for row in rows {
        let snapshot = match serde_json::from_str(&row.snapshot) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let Some(noted) = quarantined.as_deref_mut() else {
                    return Err(StoreError::Decode { what: "checkpoint", source: error });
                };
                let reason = format!("its checkpoint does not decode ({error})");
                let snapshot = quarantine(tx, &row, &reason)?;
                noted.push(Quarantined { session: session_id(row.id), tenant: row.tenant.clone(), reason });
                unapplied.entry(row.id).or_default().extend(
                    inboxes
                        .remove(&row.id)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| Unapplied { seq: e.seq, key: e.key }),
                );
                snapshot
            }
        };
        let record = SessionRecord {
            id: session_id(row.id),
            tenant: row.tenant,
            app: row.app,
            snapshot,
            fence: u64_of(row.fence),
        };
        sessions.push(StoredSession {
            record,
            inbox: inboxes.remove(&row.id).unwrap_or_default(),
            unapplied: unapplied.remove(&row.id).unwrap_or_default(),
        });
    }
    Ok(sessions)
}

/// Sets a session row that does not decode aside, and replaces it with a failed session saying
/// why (its pending events are reported as not applied).
fn quarantine(tx: &Transaction<'_>, row: &Row, reason: &str) -> Result<crate::session::Session, StoreError> {
    let fail = sqlite("quarantining a session");
    tx.execute(
        "INSERT OR REPLACE INTO quarantine (session, tenant, app, snapshot, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![row.id, row.tenant, row.app, row.snapshot, reason],
    )
    .map_err(&fail)?;
    let snapshot = quarantined_session(&row.snapshot, reason);
    tx.execute(
        "UPDATE sessions SET snapshot = ?2, finished = 1 WHERE id = ?1",
        params![row.id, json("checkpoint", &snapshot)?],
    )
    .map_err(&fail)?;
    tx.execute("UPDATE inbox SET unapplied = 1 WHERE session = ?1", params![row.id]).map_err(&fail)?;
    Ok(snapshot)
}
