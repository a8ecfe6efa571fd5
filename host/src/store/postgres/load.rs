//! Reading a PostgreSQL store back: the catalogue (tenants, apps, modules, tokens) and the
//! sessions of all shards or of some, with their inboxes; a row that does not decode is set
//! aside (quarantined) and comes back as a failed session saying why.

use super::{json, pg, u64_of};
use crate::session::SessionId;
use crate::store::{
    AppRecord, Image, InboxEvent, Quarantined, SessionRecord, StoreError, StoredSession, TenantRecord, TokenRecord,
    Unapplied, quarantined_session,
};
use postgres::Transaction;
use std::collections::BTreeMap;

/// Everything stored, read in one snapshot (a session's inbox and its row as of one moment).
pub(super) fn load_all(client: &mut postgres::Client) -> Result<Image, StoreError> {
    let fail = pg("loading");
    let mut tx = snapshot(client, "loading")?;
    let mut image = Image::default();
    load_catalogue(&mut tx, &mut image)?;
    image.sessions = load_sessions(&mut tx, Scope::All, Some(&mut image.quarantined))?;
    let purged: i64 = tx.query_one("SELECT value FROM meta WHERE key = 'purged_up_to'", &[]).map_err(&fail)?.get(0);
    let last = image.sessions.iter().map(|s| s.record.id.0).max().unwrap_or(0);
    image.last_session_id = last.max(u64_of(purged));
    tx.commit().map_err(&fail)?;
    Ok(image)
}

/// A transaction that reads every table as of one moment (repeatable read): a session's inbox
/// and its row agree.
pub(super) fn snapshot<'a>(client: &'a mut postgres::Client, op: &'static str) -> Result<Transaction<'a>, StoreError> {
    client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().map_err(pg(op))
}

/// Tenants, apps, modules and tokens.
fn load_catalogue(tx: &mut Transaction<'_>, image: &mut Image) -> Result<(), StoreError> {
    let fail = pg("loading");
    for row in tx.query("SELECT name, config FROM tenants ORDER BY name", &[]).map_err(&fail)? {
        let config: String = row.get(1);
        let config = serde_json::from_str(&config).map_err(|source| StoreError::Decode { what: "tenant", source })?;
        image.tenants.push(TenantRecord { name: row.get(0), config });
    }
    let app = |r: &postgres::Row| AppRecord { tenant: r.get(0), app: r.get(1), version: r.get(2) };
    image.apps = tx
        .query("SELECT tenant, name, version FROM apps ORDER BY tenant, name", &[])
        .map_err(&fail)?
        .iter()
        .map(app)
        .collect();
    image.app_versions = tx
        .query("SELECT tenant, app, version FROM app_versions ORDER BY deployed", &[])
        .map_err(&fail)?
        .iter()
        .map(app)
        .collect();
    for row in tx.query("SELECT hash, bytes FROM modules", &[]).map_err(&fail)? {
        image.modules.insert(row.get(0), row.get(1));
    }
    image.tokens = tx
        .query("SELECT id, tenant, hash FROM tokens ORDER BY id", &[])
        .map_err(&fail)?
        .iter()
        .map(|r| TokenRecord { id: r.get(0), tenant: r.get(1), hash: r.get(2) })
        .collect();
    Ok(())
}

/// Which sessions to read.
pub(super) enum Scope<'a> {
    All,
    Shards(&'a [i32]),
    Session(i64),
}

/// One session of `shard` as `load_all` reads it (`None` if it is not stored), writing nothing: a
/// row that does not decode is an error here (the next start sets it aside). Every group commit
/// holds the lease rows of its shards (`FOR KEY SHARE`) until it ends, so locking the shard's
/// row `FOR UPDATE` for a moment first waits out a commit still in flight, one whose outcome its
/// host could not learn (a creation as well as a checkpoint): the snapshot taken after sees it if
/// it landed.
/// A wait longer than `lock_timeout` fails as unavailable, to be tried again.
pub(super) fn load_session(
    client: &mut postgres::Client,
    shard: i32,
    id: i64,
) -> Result<Option<StoredSession>, StoreError> {
    let fail = pg("loading a session");
    client.batch_execute("SET lock_timeout = '5s'").map_err(&fail)?;
    client.query("SELECT shard FROM leases WHERE shard = $1 FOR UPDATE", &[&shard]).map_err(&fail)?;
    let mut tx = snapshot(client, "loading a session")?;
    let session = load_sessions(&mut tx, Scope::Session(id), None)?.pop();
    tx.commit().map_err(&fail)?;
    Ok(session)
}

/// The sessions in `scope` with their inboxes, oldest first; rows that do not decode are set
/// aside (noted in `quarantined`) and come back as failed sessions saying why, or are an error
/// when there is nowhere to note them.
pub(super) fn load_sessions(
    tx: &mut Transaction<'_>,
    scope: Scope<'_>,
    mut quarantined: Option<&mut Vec<Quarantined>>,
) -> Result<Vec<StoredSession>, StoreError> {
    let fail = pg("loading");
    let (all, shards, only) = match scope {
        Scope::All => (true, &[][..], 0i64),
        Scope::Shards(shards) => (false, shards, 0),
        Scope::Session(id) => (false, &[][..], id),
    };
    let mut inboxes: BTreeMap<i64, Vec<InboxEvent>> = BTreeMap::new();
    let mut unapplied: BTreeMap<i64, Vec<Unapplied>> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT i.session, i.seq, i.event, i.key, i.unapplied FROM inbox i JOIN sessions s ON s.id = i.session
             WHERE $1 OR s.shard = ANY($2) OR s.id = $3 ORDER BY i.session, i.seq",
            &[&all, &shards, &only],
        )
        .map_err(&fail)?
    {
        let (session, seq, key): (i64, i64, Option<String>) = (row.get(0), row.get(1), row.get(3));
        if row.get::<_, bool>(4) {
            unapplied.entry(session).or_default().push(Unapplied { seq: u64_of(seq), key });
        } else {
            inboxes.entry(session).or_default().push(InboxEvent { seq: u64_of(seq), event: row.get(2), key });
        }
    }
    let rows = tx
        .query(
            "SELECT id, tenant, app, snapshot, fence FROM sessions WHERE $1 OR shard = ANY($2) OR id = $3 ORDER BY id",
            &[&all, &shards, &only],
        )
        .map_err(&fail)?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows {
        let (id, tenant, app, text, fence): (i64, String, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let snapshot = match serde_json::from_str(&text) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let Some(noted) = quarantined.as_deref_mut() else {
                    return Err(StoreError::Decode { what: "checkpoint", source: error });
                };
                let reason = format!("its checkpoint does not decode ({error})");
                let snapshot = quarantine(tx, id, &tenant, &app, &text, &reason)?;
                noted.push(Quarantined { session: SessionId(u64_of(id)), tenant: tenant.clone(), reason });
                let pending = inboxes.remove(&id).unwrap_or_default();
                unapplied
                    .entry(id)
                    .or_default()
                    .extend(pending.into_iter().map(|e| Unapplied { seq: e.seq, key: e.key }));
                snapshot
            }
        };
        let record = SessionRecord { id: SessionId(u64_of(id)), tenant, app, snapshot, fence: u64_of(fence) };
        sessions.push(StoredSession {
            record,
            inbox: inboxes.remove(&id).unwrap_or_default(),
            unapplied: unapplied.remove(&id).unwrap_or_default(),
        });
    }
    Ok(sessions)
}

/// Sets a session row that does not decode aside and replaces it with a failed session saying why
/// (its pending events are reported as not applied).
fn quarantine(
    tx: &mut Transaction<'_>,
    id: i64,
    tenant: &str,
    app: &str,
    text: &str,
    reason: &str,
) -> Result<crate::session::Session, StoreError> {
    let fail = pg("quarantining a session");
    tx.execute(
        "INSERT INTO quarantine (session, tenant, app, snapshot, reason) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (session) DO UPDATE SET snapshot = excluded.snapshot, reason = excluded.reason",
        &[&id, &tenant, &app, &text, &reason],
    )
    .map_err(&fail)?;
    let snapshot = quarantined_session(text, reason);
    tx.execute(
        "UPDATE sessions SET snapshot = $2, finished = TRUE WHERE id = $1",
        &[&id, &json("checkpoint", &snapshot)?],
    )
    .map_err(&fail)?;
    tx.execute("UPDATE inbox SET unapplied = TRUE WHERE session = $1", &[&id]).map_err(&fail)?;
    Ok(snapshot)
}

/// The session `tenant` started under `key`, with its request's digest.
pub(super) fn started_with(
    client: &mut impl postgres::GenericClient,
    tenant: &str,
    key: &str,
) -> Result<Option<(SessionId, String)>, postgres::Error> {
    let row = client
        .query_opt("SELECT id, start_request FROM sessions WHERE tenant = $1 AND start_key = $2", &[&tenant, &key])?;
    Ok(row.map(|r| (SessionId(u64_of(r.get(0))), r.get(1))))
}
