//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives `kill -9` and power loss. The host groups checkpoints so that one
//! transaction (and one fsync) carries many actions.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a database
//! from a newer Turnstile is refused rather than guessed at, and a corrupt one is reported and
//! left untouched.

use super::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, SessionRecord, Store, StoredSession, TenantRecord, TokenRecord,
};
use crate::error::Error;
use crate::scheduler::SessionId;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The migrations, in order: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE tenants (name TEXT PRIMARY KEY, config TEXT NOT NULL);
    CREATE TABLE modules (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL);
    CREATE TABLE apps (
        tenant TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL REFERENCES modules(hash),
        PRIMARY KEY (tenant, name));
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, app TEXT NOT NULL, snapshot TEXT NOT NULL,
        owner TEXT, fence INTEGER NOT NULL DEFAULT 0, lease_until_ms INTEGER,
        next_event INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE inbox (
        session INTEGER NOT NULL REFERENCES sessions(id), seq INTEGER NOT NULL, event BLOB NOT NULL,
        PRIMARY KEY (session, seq));
    CREATE TABLE event_keys (
        session INTEGER NOT NULL REFERENCES sessions(id), key TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (session, key));
    CREATE TABLE outputs (
        session INTEGER NOT NULL REFERENCES sessions(id), seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (session, seq));
    CREATE TABLE kv (tenant TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (tenant, key));
"#,
    r#"
    CREATE TABLE tokens (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL UNIQUE);
    CREATE TABLE app_versions (
        tenant TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL REFERENCES modules(hash),
        deployed INTEGER PRIMARY KEY AUTOINCREMENT, UNIQUE (tenant, app, version));
    INSERT INTO app_versions (tenant, app, version) SELECT tenant, name, version FROM apps;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Key-value reads of running actions use their own connection: in WAL mode a reader never
    /// waits for a writer, so an action is not held up (towards its deadline) by a group commit.
    reader: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if need be) the database at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let shown = path.display().to_string();
        let fail = |what: &str, e: rusqlite::Error| Error::Store(format!("{shown}: {what}: {e}"));
        let conn = Connection::open(path).map_err(|e| fail("opening the database", e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| fail("setting the busy timeout", e))?;
        // A file that is not a database, or a damaged one, fails here, before anything is written.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|e| fail("the file is not a readable Turnstile database (it was left untouched)", e))?;
        if check != "ok" {
            return Err(Error::Store(format!("{shown}: the database is damaged ({check}); it was left untouched")));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| fail("reading the schema version", e))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > SCHEMA_VERSION {
            return Err(Error::Store(format!(
                "{shown}: the database has schema version {version}, newer than this Turnstile understands ({SCHEMA_VERSION}); use a newer Turnstile"
            )));
        }
        let _: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(|e| fail("enabling WAL", e))?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| fail("setting durability", e))?;
        let mut conn = conn;
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(|e| fail("migrating", e))?;
            tx.execute_batch(migration).map_err(|e| fail(&format!("migrating from schema {from}"), e))?;
            let to = i64::try_from(from + 1).unwrap_or(i64::MAX);
            tx.pragma_update(None, "user_version", to).map_err(|e| fail("migrating", e))?;
            tx.commit().map_err(|e| fail("migrating", e))?;
        }
        let reader = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail("opening the reader", e))?;
        Ok(SqliteStore { conn: Mutex::new(conn), reader: Mutex::new(reader), path: path.to_path_buf() })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail<'a>(&'a self, what: &'a str) -> impl Fn(rusqlite::Error) -> Error + 'a {
        move |e| Error::Store(format!("{}: {what}: {e}", self.path.display()))
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Store(format!("encoding a record: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::Store(format!("a stored {what} does not parse: {e}")))
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

impl Store for SqliteStore {
    fn load(&self) -> Result<Image, Error> {
        let conn = self.conn();
        let fail = self.fail("loading");
        let mut image = Image::default();
        let mut rows = conn.prepare("SELECT name, config FROM tenants ORDER BY name").map_err(&fail)?;
        let tenants = rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(&fail)?;
        for row in tenants {
            let (name, config) = row.map_err(&fail)?;
            image.tenants.push(TenantRecord { config: parse("tenant", &config)?, name });
        }
        let mut rows = conn.prepare("SELECT tenant, name, version FROM apps ORDER BY tenant, name").map_err(&fail)?;
        let apps = rows
            .query_map([], |r| Ok(AppRecord { tenant: r.get(0)?, app: r.get(1)?, version: r.get(2)? }))
            .map_err(&fail)?;
        for app in apps {
            image.apps.push(app.map_err(&fail)?);
        }
        let mut rows =
            conn.prepare("SELECT tenant, app, version FROM app_versions ORDER BY deployed").map_err(&fail)?;
        let versions = rows
            .query_map([], |r| Ok(AppRecord { tenant: r.get(0)?, app: r.get(1)?, version: r.get(2)? }))
            .map_err(&fail)?;
        for version in versions {
            image.app_versions.push(version.map_err(&fail)?);
        }
        let mut rows = conn.prepare("SELECT hash, bytes FROM modules").map_err(&fail)?;
        for module in rows.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(&fail)? {
            let (hash, bytes) = module.map_err(&fail)?;
            image.modules.insert(hash, bytes);
        }
        let mut rows = conn.prepare("SELECT id, tenant, hash FROM tokens ORDER BY id").map_err(&fail)?;
        for token in rows
            .query_map([], |r| Ok(TokenRecord { id: r.get(0)?, tenant: r.get(1)?, hash: r.get(2)? }))
            .map_err(&fail)?
        {
            image.tokens.push(token.map_err(&fail)?);
        }
        let mut inboxes: BTreeMap<i64, Vec<InboxEvent>> = BTreeMap::new();
        let mut rows = conn.prepare("SELECT session, seq, event FROM inbox ORDER BY session, seq").map_err(&fail)?;
        for event in rows.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?))).map_err(&fail)? {
            let (session, seq, event) = event.map_err(&fail)?;
            inboxes.entry(session).or_default().push(InboxEvent { seq: u64::try_from(seq).unwrap_or_default(), event });
        }
        let mut outputs: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut rows = conn.prepare("SELECT session, body FROM outputs ORDER BY session, seq").map_err(&fail)?;
        for output in rows.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(&fail)? {
            let (session, body) = output.map_err(&fail)?;
            outputs.entry(session).or_default().push(body);
        }
        let mut rows =
            conn.prepare("SELECT id, tenant, app, snapshot, fence FROM sessions ORDER BY id").map_err(&fail)?;
        let sessions = rows
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(&fail)?;
        for session in sessions {
            let (id, tenant, app, snapshot, fence) = session.map_err(&fail)?;
            let record = SessionRecord {
                id: session_id(id),
                tenant,
                app,
                snapshot: parse(&format!("checkpoint of session {id} (written by a newer Turnstile?)"), &snapshot)?,
                fence: u64::try_from(fence).unwrap_or_default(),
            };
            image.sessions.push(StoredSession {
                record,
                inbox: inboxes.remove(&id).unwrap_or_default(),
                outputs: outputs.remove(&id).unwrap_or_default(),
            });
        }
        Ok(image)
    }

    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO tenants (name, config) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                params![tenant.name, json(&tenant.config)?],
            )
            .map_err(self.fail("storing a tenant"))?;
        Ok(())
    }

    fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let mut conn = self.conn();
        let fail = self.fail("deleting a tenant");
        let tx = conn.transaction().map_err(&fail)?;
        for table in ["inbox", "event_keys", "outputs"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE session IN (SELECT id FROM sessions WHERE tenant = ?1)"),
                params![name],
            )
            .map_err(&fail)?;
        }
        for table in ["sessions", "apps", "app_versions", "kv", "tokens"] {
            tx.execute(&format!("DELETE FROM {table} WHERE tenant = ?1"), params![name]).map_err(&fail)?;
        }
        tx.execute("DELETE FROM tenants WHERE name = ?1", params![name]).map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO tokens (id, tenant, hash) VALUES (?1, ?2, ?3)",
                params![token.id, token.tenant, token.hash],
            )
            .map_err(self.fail("storing a token"))?;
        Ok(())
    }

    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, Error> {
        let deleted = self
            .conn()
            .execute("DELETE FROM tokens WHERE id = ?1 AND tenant = ?2", params![id, tenant])
            .map_err(self.fail("revoking a token"))?;
        Ok(deleted > 0)
    }

    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), Error> {
        let mut conn = self.conn();
        let fail = self.fail("storing an app version");
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

    fn create_session(&self, session: &SessionRecord) -> Result<(), Error> {
        self.conn()
            .execute(
                "INSERT INTO sessions (id, tenant, app, snapshot, fence) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sql_id(session.id),
                    session.tenant,
                    session.app,
                    json(&session.snapshot)?,
                    sql_u64(session.fence)
                ],
            )
            .map_err(self.fail("storing a new session"))?;
        Ok(())
    }

    fn append_event(&self, session: SessionId, event: &[u8], key: Option<&str>) -> Result<Appended, Error> {
        let mut conn = self.conn();
        let fail = self.fail("appending an event");
        let tx = conn.transaction().map_err(&fail)?;
        let seq: Option<i64> = tx
            .query_row(
                "UPDATE sessions SET next_event = next_event + 1 WHERE id = ?1 RETURNING next_event",
                params![sql_id(session)],
                |r| r.get(0),
            )
            .optional()
            .map_err(&fail)?;
        let Some(seq) = seq else { return Err(Error::Store(format!("session {session} is not in the store"))) };
        if let Some(key) = key {
            let added = tx
                .execute(
                    "INSERT OR IGNORE INTO event_keys (session, key, seq) VALUES (?1, ?2, ?3)",
                    params![sql_id(session), key, seq],
                )
                .map_err(&fail)?;
            if added == 0 {
                // Dropping the transaction rolls the sequence number back too.
                return Ok(Appended::Duplicate);
            }
        }
        tx.execute("INSERT INTO inbox (session, seq, event) VALUES (?1, ?2, ?3)", params![sql_id(session), seq, event])
            .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(Appended::New(u64::try_from(seq).unwrap_or_default()))
    }

    fn has_event_key(&self, session: SessionId, key: &str) -> Result<bool, Error> {
        self.conn()
            .query_row(
                "SELECT 1 FROM event_keys WHERE session = ?1 AND key = ?2",
                params![sql_id(session), key],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(self.fail("looking up an idempotency key"))
    }

    fn commit(&self, group: &[Checkpoint]) -> Result<(), Error> {
        let mut conn = self.conn();
        let fail = self.fail("committing checkpoints");
        let tx = conn.transaction().map_err(&fail)?;
        {
            let mut fence = tx.prepare_cached("SELECT fence FROM sessions WHERE id = ?1").map_err(&fail)?;
            let mut update = tx.prepare_cached("UPDATE sessions SET snapshot = ?2 WHERE id = ?1").map_err(&fail)?;
            let mut output =
                tx.prepare_cached("INSERT INTO outputs (session, seq, body) VALUES (?1, ?2, ?3)").map_err(&fail)?;
            let mut consume = tx.prepare_cached("DELETE FROM inbox WHERE session = ?1 AND seq = ?2").map_err(&fail)?;
            let mut kv = tx
                .prepare_cached(
                    "INSERT INTO kv (tenant, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(&fail)?;
            for checkpoint in group {
                let id = sql_id(checkpoint.session);
                let stored: Option<i64> = fence.query_row(params![id], |r| r.get(0)).optional().map_err(&fail)?;
                match stored {
                    Some(token) if token == sql_u64(checkpoint.fence) => {}
                    Some(_) => return Err(Error::Fenced { session: checkpoint.session.to_string() }),
                    None => return Err(Error::Store(format!("session {} is not in the store", checkpoint.session))),
                }
                update.execute(params![id, json(&checkpoint.snapshot)?]).map_err(&fail)?;
                // Outputs are numbered by the session's count of released outputs.
                let released = checkpoint.snapshot.counters.outputs;
                let first = released.saturating_sub(u64::try_from(checkpoint.outputs.len()).unwrap_or(0));
                for (n, body) in (first + 1..).zip(&checkpoint.outputs) {
                    output.execute(params![id, sql_u64(n), body]).map_err(&fail)?;
                }
                if let Some(seq) = checkpoint.consumed {
                    consume.execute(params![id, sql_u64(seq)]).map_err(&fail)?;
                }
                for (key, value) in &checkpoint.kv_writes {
                    kv.execute(params![checkpoint.tenant, key, value]).map_err(&fail)?;
                }
            }
        }
        tx.commit().map_err(&fail)
    }

    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prepare_cached("SELECT value FROM kv WHERE tenant = ?1 AND key = ?2")
            .and_then(|mut q| q.query_row(params![tenant, key], |r| r.get(0)).optional())
            .map_err(self.fail("reading the key-value space"))
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
        let mut conn = self.conn();
        let fail = self.fail("writing the key-value space");
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
