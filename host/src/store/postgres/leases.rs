//! Shard leases: how the hosts of a cluster share the sessions of one database.
//!
//! Every shard has one lease row: its owner (a node's name), its epoch, and when the lease runs
//! out by the database's clock (a node's own clock is never trusted with it). Taking a shard (a
//! free one, or one whose lease ran out) adds one to its epoch in the same statement; the epoch is
//! the fencing token every creation and checkpoint of the shard's sessions is written under, so
//! a node that lost a shard without knowing it (a paused process, a partition) has its late
//! writes refused instead of overwriting the new owner's. Renewal is one statement for all of a
//! node's shards, whatever the number of sessions in them.
//!
//! These statements run on a connection of their own, so that a renewal never waits behind a
//! long group commit; they lock lease rows in shard order, as commits do, so the two never
//! deadlock.

use super::load::{Scope, load_sessions, snapshot};
use super::{PgStore, kills_connection, pg, u64_of};
use crate::store::{Quarantined, StoreError, StoredSession};
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::PoisonError;
use std::time::Duration;

/// What this build understands of the requests a standby forwards to it, written beside its
/// leases. A standby holds back a request the holder would misread (an older build, during a
/// rolling upgrade) rather than forward it:
/// - 1: every build before the number was written (no column, or a stamp of an older epoch);
/// - 2: a session start's `Idempotency-Key` (a build of 1 ignores it, and a retried start could
///   start a second session for the same customer).
pub const PROTOCOL: u32 = 2;

/// A shard a node holds, and the epoch it holds it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Lease {
    /// The shard.
    pub shard: u32,
    /// Its epoch: the fencing token of every write to its sessions.
    pub epoch: u64,
}

/// One shard's lease as the database has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LeaseRow {
    /// The shard.
    pub shard: u32,
    /// Its holder, if any.
    pub owner: Option<String>,
    /// Where its holder answers HTTP (`http://host:port`), if it said.
    pub address: Option<String>,
    /// Its epoch.
    pub epoch: u64,
    /// Milliseconds until the lease runs out by the database's clock (0 once it has).
    pub remaining_ms: u64,
    /// What its holder understands of a forwarded request ([`PROTOCOL`]): 1 for a build that
    /// predates the number.
    pub protocol: u32,
}

/// The notification channel a release is announced on.
const RELEASED: &str = "turnstile_shards_released";

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn shard_numbers(leases: &[Lease]) -> (Vec<i32>, Vec<i64>) {
    leases
        .iter()
        .map(|l| (i32::try_from(l.shard).unwrap_or(i32::MAX), i64::try_from(l.epoch).unwrap_or(i64::MAX)))
        .unzip()
}

/// [`PROTOCOL`] as the database stores it.
fn protocol() -> i32 {
    i32::try_from(PROTOCOL).unwrap_or(i32::MAX)
}

fn lease_of(row: &postgres::Row) -> Lease {
    Lease { shard: u32::try_from(row.get::<_, i32>(0)).unwrap_or_default(), epoch: u64_of(row.get(1)) }
}

impl PgStore {
    /// Runs `statement` on the lease connection (connecting again if it was lost).
    fn on_control<T>(
        &self,
        op: &'static str,
        statement: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        let client = match control.take() {
            Some(client) if !client.is_closed() => control.insert(client),
            _ => control.insert(self.target.connect()?),
        };
        let result = statement(client);
        if let Err(error) = &result
            && kills_connection(error)
        {
            *control = None;
        }
        result.map_err(pg(op))
    }

    /// Takes up to `max` shards that no node holds or whose lease has run out, for `node`, for
    /// `lease` from now (the database's now). Shards whose rows a commit has locked are skipped
    /// this time. Returns the shards taken with their new epochs.
    pub fn acquire(&self, node: &str, lease: Duration, max: usize) -> Result<Vec<Lease>, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.on_control("taking shard leases", |client| {
            let rows = client.query(
                "WITH free AS (
                     SELECT shard FROM leases WHERE owner IS NULL OR expires_at < now()
                     ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE leases l SET owner = $1, address = NULL, epoch = l.epoch + 1,
                     expires_at = now() + $3 * interval '1 millisecond', protocol = $4, protocol_epoch = l.epoch + 1
                 FROM free WHERE l.shard = free.shard
                 RETURNING l.shard, l.epoch",
                &[&node, &max, &millis(lease), &protocol()],
            )?;
            let mut taken: Vec<Lease> = rows.iter().map(lease_of).collect();
            taken.sort_unstable();
            Ok(taken)
        })
    }

    /// Takes every shard at once for `node`, or none: in one transaction that rolls back unless
    /// all of them were free (no owner, or a lease run out). Claimants take turns (an advisory
    /// lock for the transaction), so two standbys never split the shards and wait on each other
    /// for ever.
    /// `address` is where the node answers HTTP, if it does (standbys forward requests there).
    pub fn acquire_all(
        &self,
        node: &str,
        address: Option<&str>,
        lease: Duration,
    ) -> Result<Option<Vec<Lease>>, StoreError> {
        let total = usize::try_from(self.shards).unwrap_or(usize::MAX);
        self.on_control("taking every shard's lease", |client| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(7461732002)", &[])?;
            let rows = tx.query(
                "WITH free AS (
                     SELECT shard FROM leases WHERE owner IS NULL OR expires_at < now()
                     ORDER BY shard FOR UPDATE SKIP LOCKED)
                 UPDATE leases l SET owner = $1, address = $3, epoch = l.epoch + 1,
                     expires_at = now() + $2 * interval '1 millisecond', protocol = $4, protocol_epoch = l.epoch + 1
                 FROM free WHERE l.shard = free.shard
                 RETURNING l.shard, l.epoch",
                &[&node, &millis(lease), &address, &protocol()],
            )?;
            if rows.len() < total {
                tx.rollback()?;
                return Ok(None);
            }
            tx.commit()?;
            let mut taken: Vec<Lease> = rows.iter().map(lease_of).collect();
            taken.sort_unstable();
            Ok(Some(taken))
        })
    }

    /// Extends `node`'s leases on `held` by `lease` from now. Returns those it still holds (under
    /// the same epoch); a shard missing from the answer was taken by another node.
    pub fn renew(&self, node: &str, lease: Duration, held: &[Lease]) -> Result<Vec<Lease>, StoreError> {
        let (shards, epochs) = shard_numbers(held);
        self.on_control("renewing shard leases", |client| {
            let rows = client.query(
                "WITH mine AS (
                     SELECT shard FROM leases
                     WHERE owner = $1 AND (shard, epoch) IN (SELECT * FROM unnest($3::int[], $4::bigint[]))
                     ORDER BY shard FOR NO KEY UPDATE)
                 UPDATE leases l SET expires_at = now() + $2 * interval '1 millisecond'
                 FROM mine WHERE l.shard = mine.shard
                 RETURNING l.shard, l.epoch",
                &[&node, &millis(lease), &shards, &epochs],
            )?;
            let mut kept: Vec<Lease> = rows.iter().map(lease_of).collect();
            kept.sort_unstable();
            Ok(kept)
        })
    }

    /// Gives `held` up at once (a graceful stop), and wakes the standbys waiting for them (see
    /// [`PgStore::await_release`]), so that one takes them now instead of after the lease. The
    /// rows are locked `FOR UPDATE`, which waits for a group commit still holding them: a standby
    /// woken before that commit ended would skip them and look again only a sixth of the lease
    /// later.
    pub fn release(&self, node: &str, held: &[Lease]) -> Result<(), StoreError> {
        let (shards, epochs) = shard_numbers(held);
        self.on_control("releasing shard leases", |client| {
            // One transaction: the notification is sent when the release commits.
            let mut tx = client.transaction()?;
            tx.execute(
                "WITH mine AS (
                     SELECT shard FROM leases
                     WHERE owner = $1 AND (shard, epoch) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))
                     ORDER BY shard FOR UPDATE)
                 UPDATE leases l SET owner = NULL, address = NULL, expires_at = '-infinity' FROM mine WHERE l.shard = mine.shard",
                &[&node, &shards, &epochs],
            )?;
            tx.batch_execute(&format!("NOTIFY {RELEASED}"))?;
            tx.commit()
        })
    }

    /// Waits up to `patience` for a node to release shards (or returns at once if one did since
    /// the last call): a standby looks again as soon as it is told. (Channels are per database,
    /// so another schema's release wakes it too: it only looks once more.)
    pub fn await_release(&self, patience: Duration) -> Result<(), StoreError> {
        self.on_control("waiting for released shards", |client| {
            client.batch_execute(&format!("LISTEN {RELEASED}"))?;
            let mut notifications = client.notifications();
            notifications.timeout_iter(patience).next()?;
            // Anything else queued meanwhile is the same news.
            while notifications.iter().next()?.is_some() {}
            Ok(())
        })
    }

    /// Every shard's lease, as the database has it now.
    pub fn lease_table(&self) -> Result<Vec<LeaseRow>, StoreError> {
        self.on_control("reading the shard leases", |client| {
            let rows = client.query(
                "SELECT shard, owner, epoch,
                     floor(extract(epoch FROM (greatest(expires_at, now()) - now())) * 1000)::bigint, address,
                     CASE WHEN protocol_epoch = epoch THEN protocol ELSE 1 END
                 FROM leases ORDER BY shard",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| LeaseRow {
                    shard: u32::try_from(r.get::<_, i32>(0)).unwrap_or_default(),
                    owner: r.get(1),
                    epoch: u64_of(r.get(2)),
                    remaining_ms: u64_of(r.get(3)),
                    address: r.get(4),
                    protocol: u32::try_from(r.get::<_, i32>(5)).unwrap_or(1),
                })
                .collect())
        })
    }

    /// The sessions of `shards` with their inboxes, as a node loads them after taking the
    /// shards (in a transaction of its own, begun after the one that took them committed, so it
    /// sees every write of the previous owner). Rows that do not decode are set aside as in
    /// [`crate::store::Store::load`].
    pub fn load_shards(&self, shards: &[u32]) -> Result<(Vec<StoredSession>, Vec<Quarantined>), StoreError> {
        let shards: Vec<i32> = shards.iter().map(|s| i32::try_from(*s).unwrap_or(i32::MAX)).collect();
        let mut writer = self.writer()?;
        let mut tx = snapshot(&mut writer, "loading shards")?;
        let mut quarantined = Vec::new();
        let sessions = load_sessions(&mut tx, Scope::Shards(&shards), Some(&mut quarantined))?;
        tx.commit().map_err(pg("loading shards"))?;
        Ok((sessions, quarantined))
    }
}
