//! One group commit on PostgreSQL: a batch of session creations, event appends and checkpoints in
//! one transaction, in order, with a result per write.
//!
//! Fencing: a creation or a checkpoint is written only while its shard's lease row, locked
//! `FOR SHARE` in the same transaction, still has the epoch the write was made under. A steal
//! (which bumps the epoch under `FOR UPDATE`) therefore either waits for this transaction, so the
//! new owner's load sees everything it wrote, or lands first, and then this write is refused
//! (`Fenced`) while the rest of the batch commits. Comparing the epoch without the row lock would
//! not do: a steal could land between the compare and the write.
//!
//! Consecutive checkpoints of different sessions, the bulk of every group, go to the server as
//! arrays (`unnest`): a handful of round trips per group whatever its size.

use super::{json, pg, shard_of, sql_id, sql_u64, u64_of};
use crate::session::SessionId;
use crate::store::{Appended, Checkpoint, SessionRecord, StoreError, Write, Written};
use postgres::{Client, Transaction};
use std::collections::{BTreeMap, HashSet};

/// Commits `batch` in one transaction.
pub(super) fn commit(client: &mut Client, shards: u32, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
    let fail = pg("committing");
    let mut tx = client.transaction().map_err(&fail)?;
    let mut written = Vec::with_capacity(batch.len());
    let mut run: Vec<&Checkpoint> = Vec::new();
    let mut in_run: HashSet<SessionId> = HashSet::new();
    for write in batch {
        if let Write::Checkpoint(checkpoint) = write
            && in_run.insert(checkpoint.session)
        {
            run.push(checkpoint);
            continue;
        }
        written.extend(checkpoints(&mut tx, shards, &run)?);
        run.clear();
        in_run.clear();
        written.push(match write {
            Write::Create(record) => create(&mut tx, shards, record)?,
            Write::Append { session, event, key } => {
                Written::Appended(append(&mut tx, *session, event, key.as_deref())?)
            }
            Write::Checkpoint(checkpoint) => {
                in_run.insert(checkpoint.session);
                run.push(checkpoint);
                continue;
            }
        });
    }
    written.extend(checkpoints(&mut tx, shards, &run)?);
    tx.commit().map_err(&fail)?;
    Ok(written)
}

fn create(tx: &mut Transaction<'_>, shards: u32, record: &SessionRecord) -> Result<Written, StoreError> {
    let shard = i32::try_from(shard_of(record.id, shards)).unwrap_or(i32::MAX);
    let inserted = tx
        .execute(
            "WITH lease AS (SELECT epoch FROM leases WHERE shard = $2 FOR SHARE)
             INSERT INTO sessions (id, shard, tenant, app, snapshot, fence, finished)
             SELECT $1, $2, $3, $4, $5, $6, $7 FROM lease WHERE lease.epoch = $6",
            &[
                &sql_id(record.id),
                &shard,
                &record.tenant,
                &record.app,
                &json("checkpoint", &record.snapshot)?,
                &sql_u64(record.fence),
                &record.snapshot.status.is_finished(),
            ],
        )
        .map_err(pg("storing a new session"))?;
    Ok(if inserted == 1 { Written::Created } else { Written::Fenced })
}

fn append(
    tx: &mut Transaction<'_>,
    session: SessionId,
    event: &[u8],
    key: Option<&str>,
) -> Result<Appended, StoreError> {
    let fail = pg("appending an event");
    let id = sql_id(session);
    if let Some(key) = key {
        let seen = tx
            .query_opt(
                "SELECT i.unapplied FROM event_keys k LEFT JOIN inbox i ON i.session = k.session AND i.seq = k.seq
                 WHERE k.session = $1 AND k.key = $2",
                &[&id, &key],
            )
            .map_err(&fail)?;
        if let Some(row) = seen {
            let not_applied: Option<bool> = row.get(0);
            return Ok(if not_applied == Some(true) { Appended::NotApplied } else { Appended::Duplicate });
        }
    }
    let seq: Option<i64> = tx
        .query_opt(
            "UPDATE sessions SET next_event = next_event + 1 WHERE id = $1 AND NOT finished RETURNING next_event",
            &[&id],
        )
        .map_err(&fail)?
        .map(|r| r.get(0));
    let Some(seq) = seq else { return Ok(Appended::SessionEnded) };
    if let Some(key) = key {
        tx.execute("INSERT INTO event_keys (session, key, seq) VALUES ($1, $2, $3)", &[&id, &key, &seq])
            .map_err(&fail)?;
    }
    tx.execute("INSERT INTO inbox (session, seq, event, key) VALUES ($1, $2, $3, $4)", &[&id, &seq, &event, &key])
        .map_err(&fail)?;
    Ok(Appended::New(u64_of(seq)))
}

/// Checkpoints of different sessions, as arrays: the snapshots under their shards' lease locks,
/// then the outputs, consumed events, unapplied events and key-value writes of those committed.
fn checkpoints(tx: &mut Transaction<'_>, shards: u32, run: &[&Checkpoint]) -> Result<Vec<Written>, StoreError> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let fail = pg("committing checkpoints");
    let ids: Vec<i64> = run.iter().map(|c| sql_id(c.session)).collect();
    let fences: Vec<i64> = run.iter().map(|c| sql_u64(c.fence)).collect();
    let snapshots = run.iter().map(|c| json("checkpoint", &c.snapshot)).collect::<Result<Vec<_>, _>>()?;
    let finished: Vec<bool> = run.iter().map(|c| c.snapshot.status.is_finished()).collect();
    let mut touched: Vec<i32> =
        run.iter().map(|c| i32::try_from(shard_of(c.session, shards)).unwrap_or(i32::MAX)).collect();
    touched.sort_unstable();
    touched.dedup();
    let committed: HashSet<i64> = tx
        .query(
            "WITH held AS (SELECT shard, epoch FROM leases WHERE shard = ANY($5) ORDER BY shard FOR SHARE)
             UPDATE sessions s SET snapshot = i.snapshot, finished = i.finished, fence = i.fence
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bool[]) AS i(id, fence, snapshot, finished), held h
             WHERE s.id = i.id AND h.shard = s.shard AND h.epoch = i.fence
             RETURNING s.id",
            &[&ids, &fences, &snapshots, &finished, &touched],
        )
        .map_err(&fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let done: Vec<&Checkpoint> = run.iter().copied().filter(|c| committed.contains(&sql_id(c.session))).collect();
    // Outputs are numbered by the session's count of released outputs.
    let (mut sessions, mut seqs, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    for c in &done {
        let first = c.snapshot.counters.outputs.saturating_sub(u64::try_from(c.outputs.len()).unwrap_or(0));
        for (n, body) in (first + 1..).zip(&c.outputs) {
            sessions.push(sql_id(c.session));
            seqs.push(sql_u64(n));
            bodies.push(body.as_str());
        }
    }
    if !sessions.is_empty() {
        tx.execute(
            "INSERT INTO outputs (session, seq, body) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])",
            &[&sessions, &seqs, &bodies],
        )
        .map_err(&fail)?;
    }
    let (consumed_sessions, consumed): (Vec<i64>, Vec<i64>) =
        done.iter().filter_map(|c| c.consumed.map(|seq| (sql_id(c.session), sql_u64(seq)))).unzip();
    if !consumed.is_empty() {
        tx.execute(
            "DELETE FROM inbox WHERE (session, seq) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))",
            &[&consumed_sessions, &consumed],
        )
        .map_err(&fail)?;
    }
    let ended: Vec<i64> = done.iter().filter(|c| c.snapshot.status.is_finished()).map(|c| sql_id(c.session)).collect();
    if !ended.is_empty() {
        tx.execute("UPDATE inbox SET unapplied = TRUE WHERE session = ANY($1) AND NOT unapplied", &[&ended])
            .map_err(&fail)?;
    }
    // One row per key (the batch's last write wins): an upsert cannot touch a row twice.
    let mut kv: BTreeMap<(&str, &str), &[u8]> = BTreeMap::new();
    for c in &done {
        for (key, value) in &c.kv_writes {
            kv.insert((c.tenant.as_str(), key.as_str()), value.as_slice());
        }
    }
    if !kv.is_empty() {
        let tenants: Vec<&str> = kv.keys().map(|(t, _)| *t).collect();
        let keys: Vec<&str> = kv.keys().map(|(_, k)| *k).collect();
        let values: Vec<&[u8]> = kv.values().copied().collect();
        tx.execute(
            "INSERT INTO kv (tenant, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
             ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value",
            &[&tenants, &keys, &values],
        )
        .map_err(&fail)?;
    }
    Ok(run
        .iter()
        .map(|c| if committed.contains(&sql_id(c.session)) { Written::Committed } else { Written::Fenced })
        .collect())
}
