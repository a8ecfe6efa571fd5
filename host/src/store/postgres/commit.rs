//! One group commit on PostgreSQL: a batch of session creations, event appends and checkpoints in
//! one transaction, in order, with a result per write.
//!
//! Fencing: the lease rows of every shard the batch writes are locked `FOR KEY SHARE` first, in
//! the same transaction (in shard order, so two commits never deadlock), and a creation or a
//! checkpoint is written only while its shard's epoch is still the one it was made under. A steal
//! bumps the epoch under `FOR UPDATE` (`leases.rs` locks explicitly; the epoch is also part of a
//! unique key, `migrations.rs`, so PostgreSQL locks so for any statement that changes it); it
//! therefore either waits for this transaction, so the new owner's load sees everything it
//! wrote, or lands first, and then this write is refused
//! (`Fenced`) while the rest of the batch commits. Comparing the epoch without the row lock would
//! not do: a steal could land between the compare and the write. The lock is the weakest that
//! does this: a renewal (which changes no key) does not wait for commits, so back-to-back group
//! commits never hold a renewal up past its lease (measured with pgbench: under `FOR SHARE`,
//! four overlapping committers delayed a renewal by up to 1.9 s).
//!
//! While a store holds a claim (`claim.rs`), event appends are fenced too: a host that lost its
//! shards acknowledges no event that the new owner would not see.
//!
//! Consecutive checkpoints of different sessions, the bulk of every group, go to the server as
//! arrays (`unnest`): a handful of round trips per group whatever its size.
//!
//! A commit whose outcome is unknown (the connection lost while `COMMIT` was under way) is not
//! retried blindly, which would add keyless events twice: the transaction's id is read first,
//! and the store asks the server afterwards whether that transaction committed.

use super::{json, pg, shard_of, sql_id, sql_u64, u64_of};
use crate::session::SessionId;
use crate::store::{Appended, Checkpoint, SessionRecord, StartKey, StoreError, Write, Written};
use postgres::{Client, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Commits `batch` in one transaction.
///
/// `expected` gives the epoch a write to a shard must find (from the fencing token it was made
/// under), or `None` when it may not be written at all.
pub(super) fn commit(
    client: &mut Client,
    shards: u32,
    claimed: bool,
    expected: &Expected<'_>,
    batch: &[Write],
) -> Result<Vec<Written>, Failed> {
    let fail = pg("committing");
    let before = |error: StoreError| Failed::Before(error);
    let mut tx = client.transaction().map_err(&fail).map_err(before)?;
    let xid: i64 =
        tx.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).map_err(&fail).map_err(before)?.get(0);
    let epochs =
        Epochs { locked: lock_leases(&mut tx, shards, claimed, batch).map_err(before)?, expected, shards, claimed };
    let written = writes(&mut tx, &epochs, batch).map_err(before)?;
    tx.commit().map_err(|error| Failed::AtCommit { xid, written: written.clone(), error: fail(error) })?;
    Ok(written)
}

/// How a commit failed.
pub(super) enum Failed {
    /// Before `COMMIT` was sent: nothing of it was written.
    Before(StoreError),
    /// At `COMMIT`: it may or may not have committed; the server knows (by the transaction's id).
    AtCommit {
        /// The transaction's id.
        xid: i64,
        /// What each write did, if it committed.
        written: Vec<Written>,
        /// The failure.
        error: StoreError,
    },
}

/// The batch's writes, in order, in the transaction: consecutive checkpoints of different
/// sessions together, consecutive appends together, creations one by one.
fn writes(tx: &mut Transaction<'_>, epochs: &Epochs<'_>, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
    let mut written = Vec::with_capacity(batch.len());
    let mut run: Vec<&Checkpoint> = Vec::new();
    let mut in_run: HashSet<SessionId> = HashSet::new();
    let mut events: Vec<Event<'_>> = Vec::new();
    for write in batch {
        if let Write::Append { session, event, key, .. } = write {
            written.extend(checkpoints(tx, epochs, &run)?);
            run.clear();
            in_run.clear();
            events.push(Event { session: *session, event, key: key.as_deref() });
            continue;
        }
        written.extend(appends(tx, epochs, &events)?);
        events.clear();
        if let Write::Checkpoint(checkpoint) = write
            && in_run.insert(checkpoint.session)
        {
            run.push(checkpoint);
            continue;
        }
        written.extend(checkpoints(tx, epochs, &run)?);
        run.clear();
        in_run.clear();
        match write {
            Write::Create { record, key } => written.push(create(tx, epochs, record, key.as_ref())?),
            Write::Checkpoint(checkpoint) => {
                in_run.insert(checkpoint.session);
                run.push(checkpoint);
            }
            Write::Append { .. } => unreachable!("appends are gathered above"),
        }
    }
    written.extend(appends(tx, epochs, &events)?);
    written.extend(checkpoints(tx, epochs, &run)?);
    Ok(written)
}

/// The epochs of the shards `batch` creates or checkpoints sessions in, their lease rows locked
/// until the transaction ends: a steal of one of them waits for this commit.
fn lock_leases(
    tx: &mut Transaction<'_>,
    shards: u32,
    claimed: bool,
    batch: &[Write],
) -> Result<HashMap<i32, i64>, StoreError> {
    let mut touched: Vec<i32> = batch
        .iter()
        .filter(|w| claimed || !matches!(w, Write::Append { .. }))
        .map(|w| shard_number(w.session(), shards))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    if touched.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query("SELECT shard, epoch FROM leases WHERE shard = ANY($1) ORDER BY shard FOR KEY SHARE", &[&touched])
        .map_err(pg("locking shard leases"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn shard_number(session: SessionId, shards: u32) -> i32 {
    i32::try_from(shard_of(session, shards)).unwrap_or(i32::MAX)
}

/// The epoch a write to a shard must find, from the fencing token it was made under.
pub(super) type Expected<'a> = dyn Fn(u32, u64) -> Option<u64> + 'a;

/// The shards' epochs as locked, and what each write must find.
struct Epochs<'a> {
    locked: HashMap<i32, i64>,
    expected: &'a Expected<'a>,
    shards: u32,
    /// Whether the store holds a claim: then appends are fenced too.
    claimed: bool,
}

impl Epochs<'_> {
    /// Whether an event may be appended to `session`'s inbox: always, unless the store holds a
    /// claim and no longer holds the session's shard.
    fn may_append(&self, session: SessionId) -> bool {
        !self.claimed || self.hold(session, 0)
    }

    /// Whether a write made under `fence` may land in `session`'s shard.
    fn hold(&self, session: SessionId, fence: u64) -> bool {
        let shard = shard_of(session, self.shards);
        (self.expected)(shard, fence)
            .is_some_and(|epoch| self.locked.get(&shard_number(session, self.shards)) == Some(&sql_u64(epoch)))
    }
}

/// Stores a new session, unless its tenant started one under the same key before: a concurrent
/// start under that key (another transaction) waits for this one and then finds its session.
fn create(
    tx: &mut Transaction<'_>,
    epochs: &Epochs<'_>,
    record: &SessionRecord,
    key: Option<&StartKey>,
) -> Result<Written, StoreError> {
    if !epochs.hold(record.id, record.fence) {
        return Ok(Written::Fenced);
    }
    let snapshot = json("checkpoint", &record.snapshot)?;
    // A key whose session is purged between the insert and the look-up is free again: try again.
    loop {
        let inserted = tx
            .execute(
                "INSERT INTO sessions (id, shard, tenant, app, snapshot, fence, finished, start_key, start_request)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (tenant, start_key) WHERE start_key IS NOT NULL DO NOTHING",
                &[
                    &sql_id(record.id),
                    &shard_number(record.id, epochs.shards),
                    &record.tenant,
                    &record.app,
                    &snapshot,
                    &sql_u64(record.fence),
                    &record.snapshot.status.is_finished(),
                    &key.map(|k| &k.key),
                    &key.map(|k| &k.request),
                ],
            )
            .map_err(pg("storing a new session"))?;
        let Some(key) = key.filter(|_| inserted == 0) else { return Ok(Written::Created) };
        let found =
            super::load::started_with(tx, &record.tenant, &key.key).map_err(pg("looking up a session's start key"))?;
        if let Some((session, request)) = found {
            return Ok(Written::AlreadyStarted { session, same_request: request == key.request });
        }
    }
}

/// A customer event to append.
struct Event<'a> {
    session: SessionId,
    event: &'a [u8],
    key: Option<&'a str>,
}

/// What an append is before its session's sequence numbers are taken.
enum Pending {
    /// Answered already (fenced, or its key was stored before).
    Decided(Written),
    /// Its key came earlier in the same batch.
    Repeat,
    /// To be added, if its session has not ended.
    New,
}

/// Consecutive appends, as arrays: the keys seen before, then each session's sequence numbers
/// taken in one statement, then the new keys and inbox rows. Each answer is what appending them
/// one by one, in order, would have given.
fn appends(tx: &mut Transaction<'_>, epochs: &Epochs<'_>, run: &[Event<'_>]) -> Result<Vec<Written>, StoreError> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let fail = pg("appending events");
    let (key_sessions, keys): (Vec<i64>, Vec<&str>) =
        run.iter().filter_map(|e| e.key.map(|k| (sql_id(e.session), k))).unzip();
    let mut seen: HashMap<(i64, String), Appended> = HashMap::new();
    if !keys.is_empty() {
        for row in tx
            .query(
                "SELECT k.session, k.key, i.unapplied FROM event_keys k
                 LEFT JOIN inbox i ON i.session = k.session AND i.seq = k.seq
                 WHERE (k.session, k.key) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
                &[&key_sessions, &keys],
            )
            .map_err(&fail)?
        {
            let not_applied: Option<bool> = row.get(2);
            let answer = if not_applied == Some(true) { Appended::NotApplied } else { Appended::Duplicate };
            seen.insert((row.get(0), row.get(1)), answer);
        }
    }
    // What each append is, before sequence numbers: fenced, a key stored before, a key that
    // came earlier in this batch, or new.
    let mut answers: Vec<Pending> = Vec::with_capacity(run.len());
    let mut wanted: BTreeMap<i64, i64> = BTreeMap::new();
    let mut batch_keys: HashSet<(i64, &str)> = HashSet::new();
    for event in run {
        let id = sql_id(event.session);
        let answer = match event.key {
            _ if !epochs.may_append(event.session) => Pending::Decided(Written::Fenced),
            Some(key) => match seen.get(&(id, key.to_owned())) {
                Some(known) => Pending::Decided(Written::Appended(*known)),
                None if !batch_keys.insert((id, key)) => Pending::Repeat,
                None => Pending::New,
            },
            None => Pending::New,
        };
        if let Pending::New = answer {
            *wanted.entry(id).or_default() += 1;
        }
        answers.push(answer);
    }
    let (ids, counts): (Vec<i64>, Vec<i64>) = wanted.into_iter().unzip();
    let mut next: HashMap<i64, i64> = tx
        .query(
            "UPDATE sessions s SET next_event = s.next_event + c.n
             FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n)
             WHERE s.id = c.id AND NOT s.finished
             RETURNING s.id, s.next_event - c.n",
            &[&ids, &counts],
        )
        .map_err(&fail)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (mut sessions, mut seqs, mut bodies, mut inbox_keys) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut keyed_sessions, mut keyed, mut keyed_seqs) = (Vec::new(), Vec::new(), Vec::new());
    let mut written = Vec::with_capacity(run.len());
    for (event, answer) in run.iter().zip(answers) {
        let id = sql_id(event.session);
        let last = match answer {
            Pending::Decided(answer) => {
                written.push(answer);
                continue;
            }
            // The same key earlier in this batch: added then, unless the session had ended.
            Pending::Repeat => {
                let repeat = if next.contains_key(&id) { Appended::Duplicate } else { Appended::SessionEnded };
                written.push(Written::Appended(repeat));
                continue;
            }
            Pending::New => next.get_mut(&id),
        };
        let Some(last) = last else {
            written.push(Written::Appended(Appended::SessionEnded));
            continue;
        };
        *last += 1;
        let seq = *last;
        if let Some(key) = event.key {
            keyed_sessions.push(id);
            keyed.push(key);
            keyed_seqs.push(seq);
        }
        sessions.push(id);
        seqs.push(seq);
        bodies.push(event.event);
        inbox_keys.push(event.key);
        written.push(Written::Appended(Appended::New(u64_of(seq))));
    }
    if !keyed.is_empty() {
        tx.execute(
            "INSERT INTO event_keys (session, key, seq) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])",
            &[&keyed_sessions, &keyed, &keyed_seqs],
        )
        .map_err(&fail)?;
    }
    if !sessions.is_empty() {
        tx.execute(
            "INSERT INTO inbox (session, seq, event, key)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::text[])",
            &[&sessions, &seqs, &bodies, &inbox_keys],
        )
        .map_err(&fail)?;
    }
    Ok(written)
}

/// Checkpoints of different sessions, as arrays: the snapshots of those whose shard epoch holds,
/// then the outputs, consumed events, unapplied events and key-value writes of those committed.
fn checkpoints(tx: &mut Transaction<'_>, epochs: &Epochs<'_>, run: &[&Checkpoint]) -> Result<Vec<Written>, StoreError> {
    let fail = pg("committing checkpoints");
    let held: Vec<&Checkpoint> = run.iter().copied().filter(|c| epochs.hold(c.session, c.fence)).collect();
    if held.is_empty() {
        return Ok(vec![Written::Fenced; run.len()]);
    }
    let ids: Vec<i64> = held.iter().map(|c| sql_id(c.session)).collect();
    let fences: Vec<i64> = held.iter().map(|c| sql_u64(c.fence)).collect();
    let snapshots = held.iter().map(|c| json("checkpoint", &c.snapshot)).collect::<Result<Vec<_>, _>>()?;
    let finished: Vec<bool> = held.iter().map(|c| c.snapshot.status.is_finished()).collect();
    let committed: HashSet<i64> = tx
        .query(
            "UPDATE sessions s SET snapshot = i.snapshot, finished = i.finished, fence = i.fence
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bool[]) AS i(id, fence, snapshot, finished)
             WHERE s.id = i.id
             RETURNING s.id",
            &[&ids, &fences, &snapshots, &finished],
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
        let keys: Vec<&[u8]> = kv.keys().map(|(_, k)| k.as_bytes()).collect();
        let values: Vec<&[u8]> = kv.values().copied().collect();
        tx.execute(
            "INSERT INTO kv (tenant, key, value) SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
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
