//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives `kill -9` and power loss. The host groups writes so that one transaction
//! (and one fsync) carries many actions, events and new sessions.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a database
//! from a newer Turnstile is refused rather than guessed at, and a corrupt one is reported and
//! left untouched. Reads for running actions (key-value look-ups) and for output streams go
//! through a small pool of read-only connections: in WAL mode a reader never waits for a writer.

use super::{
    AppRecord, Appended, Checkpoint, Image, SessionRecord, StartKey, StorageUsage, Store, StoreError, StoredSession,
    TenantRecord, TokenRecord, Write, Written,
};
use crate::session::SessionId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

mod load;
mod migrations;
mod upkeep;

use migrations::MIGRATIONS;
pub use migrations::SCHEMA_VERSION;

/// A SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Read-only connections, taken one at a time.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

fn sqlite(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// Readers and the writer wait for each other's locks this long before reporting the file busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Outputs deleted per transaction when a session is purged.
const PURGE_CHUNK: i64 = 4096;

impl SqliteStore {
    /// Opens (creating if need be) the database at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Io { context: "creating the database's directory", source })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::NotADatabase { source })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite("setting the busy timeout"))?;
        // A file that is not a database, or a damaged one, fails here, before anything is written.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|source| StoreError::NotADatabase { source })?;
        if check != "ok" {
            return Err(StoreError::Damaged { report: check });
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite("reading the schema version"))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version, supported: SCHEMA_VERSION });
        }
        let _: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(sqlite("enabling WAL"))?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(sqlite("setting durability"))?;
        let mut conn = conn;
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(sqlite("migrating"))?;
            tx.execute_batch(migration).map_err(sqlite("migrating"))?;
            let to = i64::try_from(from + 1).unwrap_or(i64::MAX);
            tx.pragma_update(None, "user_version", to).map_err(sqlite("migrating"))?;
            tx.commit().map_err(sqlite("migrating"))?;
        }
        Ok(SqliteStore { conn: Mutex::new(conn), readers: Mutex::new(Vec::new()), path: path.to_path_buf() })
    }

    /// Copies the database at `path` to `out`, consistent as of one moment, while hosts keep
    /// using it (SQLite's `VACUUM INTO`: one read transaction, so writers go on meanwhile). `out`
    /// must not exist yet; a host started on the copy resumes every session as it was then.
    pub fn backup(path: &Path, out: &Path) -> Result<(), StoreError> {
        if out.exists() {
            return Err(StoreError::Io {
                context: "writing the backup",
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the output file exists already"),
            });
        }
        if !path.is_file() {
            return Err(StoreError::Io {
                context: "opening the database to back up",
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "there is no database there"),
            });
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| StoreError::NotADatabase { source })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite("setting the busy timeout"))?;
        let out = out.to_str().ok_or_else(|| StoreError::Io {
            context: "writing the backup",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the output path is not UTF-8"),
        })?;
        conn.execute("VACUUM INTO ?1", [out]).map_err(sqlite("copying the database"))?;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` on a read-only connection of the pool (opening one if none is free).
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
        op: &'static str,
    ) -> Result<T, StoreError> {
        let taken = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(sqlite("opening a reader"))?;
                conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite("opening a reader"))?;
                conn
            }
        };
        let result = read(&conn).map_err(sqlite(op));
        self.readers.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        result
    }
}

fn json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

fn session_id(id: i64) -> SessionId {
    SessionId(u64::try_from(id).unwrap_or_default())
}

fn sql_id(id: SessionId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Image, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sqlite("loading"))?;
        let mut image = Image::default();
        load::catalogue(&tx, &mut image)?;
        image.sessions = load::sessions(&tx, None, Some(&mut image.quarantined))?;
        let purged: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'purged_up_to'", [], |r| r.get(0))
            .map_err(sqlite("loading"))?;
        let last = image.sessions.iter().map(|s| s.record.id.0).max().unwrap_or(0);
        image.last_session_id = last.max(u64::try_from(purged).unwrap_or(0));
        tx.commit().map_err(sqlite("loading"))?;
        Ok(image)
    }

    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sqlite("loading a session"))?;
        let session = load::sessions(&tx, Some(sql_id(id)), None)?.pop();
        tx.commit().map_err(sqlite("loading a session"))?;
        Ok(session)
    }

    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO tenants (name, config) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                params![tenant.name, json("tenant", &tenant.config)?],
            )
            .map_err(sqlite("storing a tenant"))?;
        Ok(())
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let fail = sqlite("deleting a tenant");
        let tx = conn.transaction().map_err(&fail)?;
        // Its sessions' ids stay used.
        tx.execute(
            "UPDATE meta SET value = max(value, (SELECT coalesce(max(id), 0) FROM sessions WHERE tenant = ?1)) \
             WHERE key = 'purged_up_to'",
            params![name],
        )
        .map_err(&fail)?;
        for table in ["inbox", "event_keys", "outputs"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE session IN (SELECT id FROM sessions WHERE tenant = ?1)"),
                params![name],
            )
            .map_err(&fail)?;
        }
        for table in ["sessions", "apps", "app_versions", "kv", "tokens", "quarantine"] {
            tx.execute(&format!("DELETE FROM {table} WHERE tenant = ?1"), params![name]).map_err(&fail)?;
        }
        tx.execute("DELETE FROM tenants WHERE name = ?1", params![name]).map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO tokens (id, tenant, hash) VALUES (?1, ?2, ?3)",
                params![token.id, token.tenant, token.hash],
            )
            .map_err(sqlite("storing a token"))?;
        Ok(())
    }

    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = self
            .conn()
            .execute("DELETE FROM tokens WHERE id = ?1 AND tenant = ?2", params![id, tenant])
            .map_err(sqlite("revoking a token"))?;
        Ok(deleted > 0)
    }

    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let fail = sqlite("storing an app version");
        let tx = conn.transaction().map_err(&fail)?;
        tx.execute("INSERT OR IGNORE INTO modules (hash, bytes) VALUES (?1, ?2)", params![app.version, module])
            .map_err(&fail)?;
        tx.execute(
            "INSERT INTO apps (tenant, name, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant, name) DO UPDATE SET version = excluded.version",
            params![app.tenant, app.app, app.version],
        )
        .map_err(&fail)?;
        tx.execute(
            "INSERT OR IGNORE INTO app_versions (tenant, app, version) VALUES (?1, ?2, ?3)",
            params![app.tenant, app.app, app.version],
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut conn = self.conn();
        let fail = sqlite("committing");
        let tx = conn.transaction().map_err(&fail)?;
        let mut written = Vec::with_capacity(batch.len());
        for write in batch {
            written.push(match write {
                Write::Create { record, key } => create(&tx, record, key.as_ref())?,
                Write::Append { session, event, key, .. } => {
                    Written::Appended(append(&tx, *session, event, key.as_deref())?)
                }
                Write::Checkpoint(checkpoint) => checkpoint_one(&tx, checkpoint)?,
            });
        }
        tx.commit().map_err(&fail)?;
        Ok(written)
    }

    fn outputs(&self, session: SessionId, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.read(
            |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT seq, body FROM outputs WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows = query.query_map(params![sql_id(session), sql_u64(after), limit], |r| {
                    Ok((u64_of(r.get::<_, i64>(0)?), r.get::<_, String>(1)?))
                })?;
                rows.collect()
            },
            "reading outputs",
        )
    }

    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(
            |conn| {
                conn.prepare_cached("SELECT bytes FROM modules WHERE hash = ?1")?
                    .query_row(params![hash], |r| r.get(0))
                    .optional()
            },
            "reading a module",
        )
    }

    fn started_with(&self, tenant: &str, key: &str) -> Result<Option<(SessionId, String)>, StoreError> {
        self.read(|conn| started_with(conn, tenant, key), "looking up a session's start key")
    }

    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(
            |conn| {
                conn.prepare_cached("SELECT value FROM kv WHERE tenant = ?1 AND key = ?2")?
                    .query_row(params![tenant, key], |r| r.get(0))
                    .optional()
            },
            "reading the key-value space",
        )
    }

    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
        upkeep::usage(self)
    }

    fn purge(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
        upkeep::purge(self, sessions)
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let fail = sqlite("writing the key-value space");
        let tx = conn.transaction().map_err(&fail)?;
        for (key, value) in &writes {
            tx.execute(
                "INSERT INTO kv (tenant, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value",
                params![tenant, key, value],
            )
            .map_err(&fail)?;
        }
        tx.commit().map_err(&fail)
    }
}

fn create(tx: &Transaction<'_>, record: &SessionRecord, key: Option<&StartKey>) -> Result<Written, StoreError> {
    if let Some(key) = key
        && let Some((session, request)) =
            started_with(tx, &record.tenant, &key.key).map_err(sqlite("looking up a session's start key"))?
    {
        return Ok(Written::AlreadyStarted { session, same_request: request == key.request });
    }
    let snapshot = json("checkpoint", &record.snapshot)?;
    tx.prepare_cached(
        "INSERT INTO sessions (id, tenant, app, snapshot, fence, finished, start_key, start_request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            sql_id(record.id),
            record.tenant,
            record.app,
            snapshot,
            sql_u64(record.fence),
            record.snapshot.status.is_finished(),
            key.map(|k| &k.key),
            key.map(|k| &k.request),
        ])
    })
    .map_err(sqlite("storing a new session"))?;
    Ok(Written::Created)
}

/// The session `tenant` started under `key`, with its request's digest.
fn started_with(conn: &Connection, tenant: &str, key: &str) -> rusqlite::Result<Option<(SessionId, String)>> {
    conn.prepare_cached("SELECT id, start_request FROM sessions WHERE tenant = ?1 AND start_key = ?2")?
        .query_row(params![tenant, key], |r| Ok((SessionId(u64_of(r.get(0)?)), r.get(1)?)))
        .optional()
}

fn append(tx: &Transaction<'_>, session: SessionId, event: &[u8], key: Option<&str>) -> Result<Appended, StoreError> {
    let fail = sqlite("appending an event");
    let id = sql_id(session);
    if let Some(key) = key {
        let seen: Option<i64> = tx
            .prepare_cached("SELECT seq FROM event_keys WHERE session = ?1 AND key = ?2")
            .and_then(|mut q| q.query_row(params![id, key], |r| r.get(0)).optional())
            .map_err(&fail)?;
        if let Some(seq) = seen {
            let not_applied: Option<bool> = tx
                .prepare_cached("SELECT unapplied FROM inbox WHERE session = ?1 AND seq = ?2")
                .and_then(|mut q| q.query_row(params![id, seq], |r| r.get(0)).optional())
                .map_err(&fail)?;
            return Ok(if not_applied == Some(true) { Appended::NotApplied } else { Appended::Duplicate });
        }
    }
    let seq: Option<i64> = tx
        .prepare_cached(
            "UPDATE sessions SET next_event = next_event + 1 WHERE id = ?1 AND finished = 0 RETURNING next_event",
        )
        .and_then(|mut q| q.query_row(params![id], |r| r.get(0)).optional())
        .map_err(&fail)?;
    let Some(seq) = seq else { return Ok(Appended::SessionEnded) };
    if let Some(key) = key {
        tx.prepare_cached("INSERT INTO event_keys (session, key, seq) VALUES (?1, ?2, ?3)")
            .and_then(|mut q| q.execute(params![id, key, seq]))
            .map_err(&fail)?;
    }
    tx.prepare_cached("INSERT INTO inbox (session, seq, event, key) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut q| q.execute(params![id, seq, event, key]))
        .map_err(&fail)?;
    Ok(Appended::New(u64_of(seq)))
}

fn checkpoint_one(tx: &Transaction<'_>, checkpoint: &Checkpoint) -> Result<Written, StoreError> {
    let fail = sqlite("committing a checkpoint");
    let id = sql_id(checkpoint.session);
    let stored: Option<i64> = tx
        .prepare_cached("SELECT fence FROM sessions WHERE id = ?1")
        .and_then(|mut q| q.query_row(params![id], |r| r.get(0)).optional())
        .map_err(&fail)?;
    if stored != Some(sql_u64(checkpoint.fence)) {
        return Ok(Written::Fenced);
    }
    let finished = checkpoint.snapshot.status.is_finished();
    let snapshot = json("checkpoint", &checkpoint.snapshot)?;
    tx.prepare_cached("UPDATE sessions SET snapshot = ?2, finished = ?3 WHERE id = ?1")
        .and_then(|mut q| q.execute(params![id, snapshot, finished]))
        .map_err(&fail)?;
    // Outputs are numbered by the session's count of released outputs.
    let released = checkpoint.snapshot.counters.outputs;
    let first = released.saturating_sub(u64::try_from(checkpoint.outputs.len()).unwrap_or(0));
    if !checkpoint.outputs.is_empty() {
        let mut output =
            tx.prepare_cached("INSERT INTO outputs (session, seq, body) VALUES (?1, ?2, ?3)").map_err(&fail)?;
        for (n, body) in (first + 1..).zip(&checkpoint.outputs) {
            output.execute(params![id, sql_u64(n), body]).map_err(&fail)?;
        }
    }
    if let Some(seq) = checkpoint.consumed {
        tx.prepare_cached("DELETE FROM inbox WHERE session = ?1 AND seq = ?2")
            .and_then(|mut q| q.execute(params![id, sql_u64(seq)]))
            .map_err(&fail)?;
    }
    if finished {
        tx.prepare_cached("UPDATE inbox SET unapplied = 1 WHERE session = ?1 AND unapplied = 0")
            .and_then(|mut q| q.execute(params![id]))
            .map_err(&fail)?;
    }
    if !checkpoint.kv_writes.is_empty() {
        let mut kv = tx
            .prepare_cached(
                "INSERT INTO kv (tenant, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value",
            )
            .map_err(&fail)?;
        for (key, value) in &checkpoint.kv_writes {
            kv.execute(params![checkpoint.tenant, key, value]).map_err(&fail)?;
        }
    }
    Ok(Written::Committed)
}
