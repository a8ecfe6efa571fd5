//! The shared store: one PostgreSQL database (or one schema of it) that several hosts can use at
//! once, selected with `--store postgres://…`. It keeps what [`super::SqliteStore`] keeps, with
//! the same answers, and adds the cluster's shape: every session belongs to one of a fixed number
//! of shards (fixed when the schema is created), and a shard is owned through a lease whose epoch
//! is the fencing token every checkpoint is written under (see [`leases`]).
//!
//! A URL may name a schema and the shard count with two parameters of Turnstile's own, which are
//! taken out before the rest goes to the PostgreSQL client:
//! `postgres://user@host/db?schema=turnstile&shards=64`. Commits run on one connection, in
//! one transaction per group with `synchronous_commit` as the server has it (on by default: a
//! committed group survives the server's crash); reads (outputs, key-value look-ups) on a small
//! pool of other connections, so a slow reader never holds a commit up.

use super::{
    AppRecord, Image, StorageUsage, Store, StoreError, StoredSession, TenantRecord, TokenRecord, Write, Written,
    usage_of,
};
use crate::session::SessionId;
use postgres::{Client, NoTls, Transaction};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

mod claim;
mod commit;
pub mod leases;
mod load;
mod migrations;

pub use claim::ClaimPolicy;
pub use migrations::SCHEMA_VERSION;

/// The shard count of a new schema when its URL names none.
pub const DEFAULT_SHARDS: u32 = 64;

/// A transaction left open this long by a stalled host (paused, cut off) is ended by the server,
/// so that the lease rows it locked let a standby take over within about a lease (the shortest
/// lease is 1 s; a paused host's leases run out after the lease anyway).
const IDLE_IN_TRANSACTION_MS: u64 = 2000;

/// Outputs deleted per transaction when a session is purged.
const PURGE_CHUNK: i64 = 4096;
/// How long a commit whose `COMMIT` got no answer waits for the server to say what became of it.
const COMMIT_STATUS_PATIENCE: Duration = Duration::from_secs(30);

/// Idle read connections kept for reuse.
const READERS_KEPT: usize = 4;

/// A PostgreSQL database (one schema of it).
pub struct PgStore {
    writer: Mutex<Client>,
    readers: Mutex<Vec<Client>>,
    /// The writer failed outside the database (a reset, a closed socket): connect again before
    /// its next use (the client may not have noticed yet that the connection is gone).
    broken: AtomicBool,
    /// The connection lease statements run on (see [`leases`]).
    control: Mutex<Option<Client>>,
    /// The shards this store holds for its node, when it acts for one (see `claim.rs`).
    claim: Mutex<Option<claim::Claim>>,
    target: Target,
    shards: u32,
}

/// Where to connect: the client's own URL, and the schema to use.
#[derive(Clone)]
struct Target {
    url: String,
    schema: String,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.release_claim();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("schema", &self.target.schema).field("shards", &self.shards).finish()
    }
}

pub(super) fn pg(op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

/// Whether `error` leaves its connection unusable: anything but an ordinary SQL error (an I/O
/// error, a closed connection, or a FATAL from the server, which is what `pg_terminate_backend`
/// or a server shutdown sends). The client does not see the closed socket until it next reads
/// it, so `is_closed` alone would hand the dead connection out once more.
pub(super) fn kills_connection(error: &postgres::Error) -> bool {
    error.as_db_error().is_none_or(|db| !matches!(db.parsed_severity(), Some(postgres::error::Severity::Error)))
}

fn invalid(problem: String) -> StoreError {
    StoreError::InvalidUrl { problem }
}

/// Splits Turnstile's own parameters (`schema`, `shards`) off a `postgres://` URL.
fn parse_url(url: &str) -> Result<(Target, Option<u32>), StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = "public".to_owned();
    let mut shards = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => {
                let valid = !name.is_empty()
                    && name.len() <= 63
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !name.as_bytes()[0].is_ascii_digit();
                if !valid {
                    return Err(invalid(format!(
                        "schema `{name}`: use 1 to 63 lowercase letters, digits and `_`, not starting with a digit"
                    )));
                }
                name.clone_into(&mut schema);
            }
            Some(("shards", n)) => {
                let n: u32 = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .ok_or_else(|| invalid(format!("shards `{n}`: give a whole number from 1 to 4096")))?;
                shards = Some(n);
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((Target { url, schema }, shards))
}

impl Target {
    fn connect(&self) -> Result<Client, StoreError> {
        let mut config: postgres::Config =
            self.url.parse().map_err(|e: postgres::Error| invalid(format!("the PostgreSQL URL: {e}")))?;
        // A dead server or network is noticed in seconds, not hours: a standby must not wait for
        // the backend of a vanished host to let its locks go.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        let mut client = config.connect(NoTls).map_err(pg("connecting to PostgreSQL"))?;
        // The application name shows an operator (and a test) whose connections these are.
        client
            .batch_execute(&format!(
                "SET search_path TO \"{schema}\"; SET application_name TO 'turnstile {schema}';
                 SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_MS}ms'",
                schema = self.schema
            ))
            .map_err(pg("choosing the schema"))?;
        Ok(client)
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names, creates or migrates its schema, and
    /// checks that its shard count is the one asked for (a cluster's shard count never changes).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let (target, shards) = parse_url(url)?;
        let mut writer = target.connect()?;
        let shards = migrate(&mut writer, &target.schema, shards)?;
        Ok(PgStore {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            broken: AtomicBool::new(false),
            control: Mutex::new(None),
            claim: Mutex::new(None),
            target,
            shards,
        })
    }

    /// Drops the schema a URL names with everything in it (tests clean up with this).
    pub fn drop_schema(url: &str) -> Result<(), StoreError> {
        let (target, _) = parse_url(url)?;
        if target.schema == "public" {
            return Err(invalid("name the schema to drop (`schema=`): the public schema is never dropped".into()));
        }
        let mut client = Client::connect(&target.url, NoTls).map_err(pg("connecting to PostgreSQL"))?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", target.schema))
            .map_err(pg("dropping the schema"))
    }

    /// The number of shards sessions are spread over.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// The shard a session belongs to (fixed for its life).
    pub fn shard_of(&self, session: SessionId) -> u32 {
        shard_of(session, self.shards)
    }

    /// The writer connection, connected again if it was lost (a server restart, a network cut):
    /// the store comes back by itself once the server does.
    fn writer(&self) -> Result<MutexGuard<'_, Client>, StoreError> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if writer.is_closed() || self.broken.swap(false, Ordering::AcqRel) {
            *writer = self.target.connect()?;
        }
        Ok(writer)
    }

    /// One attempt at a group commit on the writer (connected again first if it was lost); a
    /// failure that killed the connection marks it for reconnection.
    fn commit_on_writer(
        &self,
        claimed: bool,
        batch: &[Write],
    ) -> Result<Result<Vec<Written>, commit::Failed>, StoreError> {
        let mut writer = self.writer()?;
        let outcome =
            commit::commit(&mut writer, self.shards, claimed, &|shard, given| self.write_epoch(shard, given), batch);
        if let Err(commit::Failed::Before(error) | commit::Failed::AtCommit { error, .. }) = &outcome
            && let StoreError::Postgres { source, .. } = error
            && kills_connection(source)
        {
            self.broken.store(true, Ordering::Release);
        }
        Ok(outcome)
    }

    /// Whether the transaction `xid`, whose `COMMIT` got no answer, committed: asked of the
    /// server on a new connection, again and again for up to [`COMMIT_STATUS_PATIENCE`] (its
    /// backend may still be finishing it, or the server restarting). `None` if it could not
    /// tell by then. (Nothing else can commit meanwhile: this is the writer.)
    fn commit_status(&self, xid: i64) -> Option<bool> {
        let started = std::time::Instant::now();
        for attempt in 0u32.. {
            if attempt > 0 {
                if started.elapsed() >= COMMIT_STATUS_PATIENCE {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50).saturating_mul(1 << attempt.min(5)));
            }
            let asked = self.writer().and_then(|mut writer| {
                let row = writer
                    .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid.to_string()])
                    .map_err(pg("asking whether a commit went through"))?;
                Ok(row.get::<_, Option<String>>(0))
            });
            match asked.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => return Some(true),
                Ok(Some("aborted")) => return Some(false),
                // Still in progress; or no answer (the writer is connected again next time).
                Ok(_) => {}
                Err(_) => self.broken.store(true, Ordering::Release),
            }
        }
        None
    }

    /// Runs `read` on a connection of the read pool (opening one if none is free). A pooled
    /// connection found dead (the server restarted, or its backend was killed, while it sat in
    /// the pool) is dropped and the read runs again on the next: a read changes nothing, so only
    /// a fresh connection's failure reaches the caller.
    fn read<T>(
        &self,
        mut read: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
        op: &'static str,
    ) -> Result<T, StoreError> {
        loop {
            let taken = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let (mut client, pooled) = match taken {
                Some(client) if !client.is_closed() => (client, true),
                _ => (self.target.connect()?, false),
            };
            match read(&mut client) {
                Ok(value) => {
                    let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
                    if readers.len() < READERS_KEPT {
                        readers.push(client);
                    }
                    return Ok(value);
                }
                Err(error) if pooled && kills_connection(&error) => {}
                Err(error) => return Err(pg(op)(error)),
            }
        }
    }
}

/// The shard of a session: its id mixed (splitmix64's finaliser) and taken modulo the count, so
/// that consecutive ids land on different shards.
pub fn shard_of(session: SessionId, shards: u32) -> u32 {
    let mut x = session.0;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    u32::try_from(x % u64::from(shards.max(1))).unwrap_or(0)
}

/// Creates or migrates the schema (one node at a time: an advisory lock), fills in the lease
/// rows of a new one, and returns its shard count.
fn migrate(client: &mut Client, schema: &str, asked: Option<u32>) -> Result<u32, StoreError> {
    let fail = pg("migrating the schema");
    let mut tx = client.transaction().map_err(&fail)?;
    tx.execute("SELECT pg_advisory_xact_lock(7461732001)", &[]).map_err(&fail)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);"
    ))
    .map_err(&fail)?;
    let meta = |tx: &mut Transaction<'_>, key: &str| -> Result<Option<i64>, StoreError> {
        Ok(tx.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).map_err(&fail)?.map(|r| r.get(0)))
    };
    let version = usize::try_from(meta(&mut tx, "schema_version")?.unwrap_or(0)).unwrap_or(usize::MAX);
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found: version, supported: SCHEMA_VERSION });
    }
    for migration in migrations::MIGRATIONS.iter().skip(version) {
        tx.batch_execute(migration).map_err(&fail)?;
    }
    let current = i64::try_from(SCHEMA_VERSION).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
        &[&current],
    )
    .map_err(&fail)?;
    let shards = match meta(&mut tx, "shards")? {
        Some(stored) => {
            let stored = u32::try_from(stored).unwrap_or(0);
            if let Some(asked) = asked.filter(|asked| *asked != stored) {
                return Err(invalid(format!(
                    "shards {asked}: this database's cluster has {stored} shards, which never changes"
                )));
            }
            stored
        }
        None => {
            let shards = asked.unwrap_or(DEFAULT_SHARDS);
            tx.execute("INSERT INTO meta (key, value) VALUES ('shards', $1)", &[&i64::from(shards)]).map_err(&fail)?;
            let count = i32::try_from(shards).unwrap_or(i32::MAX);
            tx.execute("INSERT INTO leases (shard) SELECT generate_series(0, $1 - 1)", &[&count]).map_err(&fail)?;
            shards
        }
    };
    tx.commit().map_err(&fail)?;
    Ok(shards)
}

pub(super) fn json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

pub(super) fn sql_id(id: SessionId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

pub(super) fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

impl Store for PgStore {
    fn load(&self) -> Result<Image, StoreError> {
        // A connection lost under the load (killed by an operator, a server restarting) is
        // connected again, twice at most, rather than fail the start of a host that just
        // claimed the shards.
        let mut attempts = 0;
        loop {
            match load::load_all(&mut *self.writer()?) {
                Err(error) if error.is_unavailable() && attempts < 2 => {
                    tracing::warn!(%error, "loading the store failed: trying again on a new connection");
                    self.broken.store(true, Ordering::Release);
                    attempts += 1;
                }
                loaded => return loaded,
            }
        }
    }

    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError> {
        // On a connection of its own: the wait for a commit in flight holds up no other work.
        let shard = i32::try_from(self.shard_of(id)).unwrap_or(i32::MAX);
        load::load_session(&mut self.target.connect()?, shard, sql_id(id))
    }

    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.may_write()?;
        self.writer()?
            .execute(
                "INSERT INTO tenants (name, config) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                &[&tenant.name, &json("tenant", &tenant.config)?],
            )
            .map_err(pg("storing a tenant"))?;
        Ok(())
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        self.may_write()?;
        let mut writer = self.writer()?;
        let fail = pg("deleting a tenant");
        let mut tx = writer.transaction().map_err(&fail)?;
        // Its sessions' ids stay used.
        tx.execute(
            "UPDATE meta SET value = greatest(value, (SELECT coalesce(max(id), 0) FROM sessions WHERE tenant = $1)) \
             WHERE key = 'purged_up_to'",
            &[&name],
        )
        .map_err(&fail)?;
        for table in ["inbox", "event_keys", "outputs"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE session IN (SELECT id FROM sessions WHERE tenant = $1)"),
                &[&name],
            )
            .map_err(&fail)?;
        }
        for table in ["sessions", "apps", "app_versions", "kv", "tokens", "quarantine"] {
            tx.execute(&format!("DELETE FROM {table} WHERE tenant = $1"), &[&name]).map_err(&fail)?;
        }
        tx.execute("DELETE FROM tenants WHERE name = $1", &[&name]).map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.may_write()?;
        self.writer()?
            .execute(
                "INSERT INTO tokens (id, tenant, hash) VALUES ($1, $2, $3)",
                &[&token.id, &token.tenant, &token.hash],
            )
            .map_err(pg("storing a token"))?;
        Ok(())
    }

    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.may_write()?;
        let deleted = self
            .writer()?
            .execute("DELETE FROM tokens WHERE id = $1 AND tenant = $2", &[&id, &tenant])
            .map_err(pg("revoking a token"))?;
        Ok(deleted > 0)
    }

    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError> {
        self.may_write()?;
        let mut writer = self.writer()?;
        let fail = pg("storing an app version");
        let mut tx = writer.transaction().map_err(&fail)?;
        tx.execute(
            "INSERT INTO modules (hash, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&app.version, &module],
        )
        .map_err(&fail)?;
        tx.execute(
            "INSERT INTO apps (tenant, name, version) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, name) DO UPDATE SET version = excluded.version",
            &[&app.tenant, &app.app, &app.version],
        )
        .map_err(&fail)?;
        tx.execute(
            "INSERT INTO app_versions (tenant, app, version) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&app.tenant, &app.app, &app.version],
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let claimed = self.claim_node().is_some();
        self.refresh_if_stale();
        let mut outcome = self.commit_on_writer(claimed, batch)?;
        // A writer connection that died while idle (the server restarted, or dropped it) is
        // found dead by the group's first statement: nothing was written, so the group is tried
        // once more on a new connection instead of failing its callers.
        if let Err(commit::Failed::Before(StoreError::Postgres { source, .. })) = &outcome
            && kills_connection(source)
        {
            outcome = self.commit_on_writer(claimed, batch)?;
        }
        match outcome {
            Ok(written) => Ok(written),
            Err(commit::Failed::Before(error)) => Err(error),
            Err(commit::Failed::AtCommit { xid, written, error }) => match self.commit_status(xid) {
                Some(true) => Ok(written),
                Some(false) => Err(error),
                None => Err(StoreError::CommitUnknown { source: Box::new(error) }),
            },
        }
    }

    fn outputs(&self, session: SessionId, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(
            |client| {
                let rows = client.query(
                    "SELECT seq, body FROM outputs WHERE session = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&sql_id(session), &sql_u64(after), &limit],
                )?;
                Ok(rows.iter().map(|r| (u64_of(r.get(0)), r.get(1))).collect())
            },
            "reading outputs",
        )
    }

    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(
            |client| Ok(client.query_opt("SELECT bytes FROM modules WHERE hash = $1", &[&hash])?.map(|r| r.get(0))),
            "reading a module",
        )
    }

    fn started_with(&self, tenant: &str, key: &str) -> Result<Option<(SessionId, String)>, StoreError> {
        self.read(|client| load::started_with(client, tenant, key), "looking up a session's start key")
    }

    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(
            |client| {
                Ok(client
                    .query_opt("SELECT value FROM kv WHERE tenant = $1 AND key = $2", &[&tenant, &key.as_bytes()])?
                    .map(|r| r.get(0)))
            },
            "reading the key-value space",
        )
    }

    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
        self.read(
            |client| {
                let rows = client.query(
                    "SELECT tenant, 0::bigint, SUM(octet_length(key) + octet_length(value))::bigint FROM kv GROUP BY tenant
                     UNION ALL SELECT s.tenant, 1, SUM(octet_length(o.body))::bigint
                         FROM outputs o JOIN sessions s ON s.id = o.session GROUP BY s.tenant
                     UNION ALL SELECT s.tenant, 2, COUNT(*)
                         FROM event_keys k JOIN sessions s ON s.id = k.session GROUP BY s.tenant
                     UNION ALL SELECT v.tenant, 3, SUM(octet_length(m.bytes))::bigint
                         FROM (SELECT DISTINCT tenant, version FROM app_versions) v
                         JOIN modules m ON m.hash = v.version GROUP BY v.tenant",
                    &[],
                )?;
                Ok(usage_of(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, Option<i64>>(2).unwrap_or(0)))))
            },
            "measuring each tenant's storage",
        )
    }

    fn purge(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
        self.may_write()?;
        let fail = pg("purging finished sessions");
        let ids: Vec<i64> = sessions.iter().map(|s| sql_id(*s)).collect();
        // The finished ones among them (finished sessions never open again).
        let finished: Vec<i64> = self
            .writer()?
            .query("SELECT id FROM sessions WHERE id = ANY($1) AND finished", &[&ids])
            .map_err(&fail)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let Some(&highest) = finished.iter().max() else { return Ok(Vec::new()) };
        // Outputs a chunk per transaction, the writer let go between chunks: sessions with
        // hundreds of thousands of outputs do not hold every other commit up.
        while self
            .writer()?
            .execute(
                "DELETE FROM outputs WHERE (session, seq) IN
                 (SELECT session, seq FROM outputs WHERE session = ANY($1) LIMIT $2)",
                &[&finished, &PURGE_CHUNK],
            )
            .map_err(&fail)?
            >= u64::try_from(PURGE_CHUNK).unwrap_or(u64::MAX)
        {}
        // The rest of the batch in one transaction.
        let mut writer = self.writer()?;
        let mut tx = writer.transaction().map_err(&fail)?;
        for table in ["inbox", "event_keys", "outputs"] {
            tx.execute(&format!("DELETE FROM {table} WHERE session = ANY($1)"), &[&finished]).map_err(&fail)?;
        }
        tx.execute("DELETE FROM sessions WHERE id = ANY($1) AND finished", &[&finished]).map_err(&fail)?;
        tx.execute("UPDATE meta SET value = greatest(value, $1) WHERE key = 'purged_up_to'", &[&highest])
            .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(finished.into_iter().map(|id| SessionId(u64_of(id))).collect())
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        self.may_write()?;
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = writes.into_iter().map(|(k, v)| (k.into_bytes(), v)).unzip();
        self.writer()?
            .execute(
                "INSERT INTO kv (tenant, key, value) SELECT $1, * FROM unnest($2::bytea[], $3::bytea[])
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value",
                &[&tenant, &keys, &values],
            )
            .map_err(pg("writing the key-value space"))?;
        Ok(())
    }
}
