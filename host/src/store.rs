//! Where everything that must survive the process is kept, behind one trait: tenants, app
//! versions (with their module bytes), tokens, sessions' checkpoints, their inboxes of
//! acknowledged customer events, their released outputs, and tenants' key-value spaces.
//!
//! - [`MemoryStore`]: maps in memory (tests, benchmarks, the demo). Survives a host being dropped
//!   and rebuilt on it, not the process.
//! - [`SqliteStore`]: the embedded default, one file in WAL mode; a single node survives `kill -9`.
//! - [`PgStore`]: one PostgreSQL database that several hosts share (cluster mode): sessions in
//!   fixed shards, each owned through a lease whose epoch fences every write.
//!
//! Everything a session does is written through [`Store::commit`]: a batch of creations, event
//! appends and checkpoints in one transaction (one fsync for the whole group), in order, with a
//! result per write. Ownership is part of the shape: each session row has a fencing token, and a
//! checkpoint taken under a stale token is refused (`Fenced`) while the rest of its batch commits.
//!
//! A store never makes a restart impossible: a stored session that does not decode is set aside
//! (quarantined: the row is kept for a person to look at) and comes back as a failed session
//! saying why, instead of failing the load.

mod memory;
pub mod postgres;
mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::limits::TenantConfig;
use crate::session::{Counters, Session, SessionId, Status};
use std::collections::BTreeMap;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file is not a database, or not one this host can read.
    #[error("the file is not a readable Turnstile database (it was left untouched)")]
    NotADatabase {
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database failed its integrity check.
    #[error("the database is damaged ({report}); it was left untouched")]
    Damaged {
        /// What the check reported.
        report: String,
    },
    /// The database was written by a newer Turnstile.
    #[error(
        "the database has schema version {found}, newer than this Turnstile understands ({supported}); use a newer Turnstile"
    )]
    NewerSchema {
        /// Its version.
        found: usize,
        /// The newest this build reads.
        supported: usize,
    },
    /// A database operation failed (a full disk, an I/O error, a busy file).
    #[error("{op} failed")]
    Sqlite {
        /// What the store was doing.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A PostgreSQL operation failed (the server is down or unreachable, a lost connection, a
    /// full disk on the server).
    #[error("{op} failed")]
    Postgres {
        /// What the store was doing.
        op: &'static str,
        /// The cause.
        #[source]
        source: ::postgres::Error,
    },
    /// A commit's `COMMIT` got no answer and the server could not say afterwards whether it
    /// went through: its writes are neither retried (they may have landed) nor acknowledged
    /// (they may not have); their sessions are taken back from what the store holds.
    #[error("a commit may or may not have gone through (the server could not tell)")]
    CommitUnknown {
        /// The failure at `COMMIT`.
        #[source]
        source: Box<StoreError>,
    },
    /// Another node holds the database's shards (and this one was not asked to wait for them).
    #[error(
        "another host ({holder}) holds this database's shards; start this one as a standby (it waits for them) or stop that one"
    )]
    ShardsHeld {
        /// The node holding them.
        holder: String,
    },
    /// This host lost its hold on the database's shards to another host: it writes nothing more.
    #[error("this host no longer holds the database's shards (another host took them over)")]
    ClaimLost,
    /// A store URL that cannot be used.
    #[error("{problem}")]
    InvalidUrl {
        /// What is wrong with it.
        problem: String,
    },
    /// A record could not be encoded.
    #[error("encoding a {what}")]
    Encode {
        /// What kind of record.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record does not decode (other than a session's checkpoint, which is quarantined).
    #[error("a stored {what} does not decode")]
    Decode {
        /// What kind of record.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The store has no module for an app version it names.
    #[error("the store lacks the module of app version {0}")]
    MissingModule(String),
    /// The store's directory could not be made.
    #[error("{context}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the store may take the same write later: a full disk, an I/O error, a busy or
    /// locked file, a lost or refused connection, a server shutting down or out of resources.
    /// The host retries such writes and answers new work `store_unavailable` meanwhile; any
    /// other error is the write's own (refused for good).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sqlite { source, .. } => sqlite_unavailable(source),
            StoreError::Postgres { source, .. } => postgres_unavailable(source),
            StoreError::Io { .. } => true,
            _ => false,
        }
    }

    /// Whether the writes may have landed although the commit failed: they must not be tried
    /// again (one by one or later), or they could land twice.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, StoreError::CommitUnknown { .. })
    }
}

fn sqlite_unavailable(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, OutOfMemory, ReadOnly, SystemIoFailure,
    };
    matches!(
        error.sqlite_error_code(),
        Some(DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked | CannotOpen | ReadOnly | OutOfMemory)
    )
}

fn postgres_unavailable(error: &::postgres::Error) -> bool {
    match error.as_db_error() {
        // No answer from the server at all: a closed, reset or refused connection.
        None => true,
        // Connection exceptions (08), insufficient resources such as a full disk (53), operator
        // intervention such as a shutdown (57), system errors (58), serialisation failures (40),
        // a lock not had within `lock_timeout` (55P03).
        Some(db) => {
            let code = db.code().code();
            ["08", "53", "57", "58", "40", "55P03"].iter().any(|class| code.starts_with(class))
                || postgres::kills_connection(error)
        }
    }
}

/// What one tenant holds in the store: what its storage quotas are counted against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StorageUsage {
    /// Bytes of its key-value space (keys and values).
    pub kv_bytes: u64,
    /// Bytes of the outputs kept for its sessions (until they are purged).
    pub output_bytes: u64,
    /// Idempotency keys kept for its sessions' events.
    pub event_keys: u64,
    /// Bytes of the modules of every version of its apps.
    pub module_bytes: u64,
}

/// Adds up rows of (tenant, what: 0 kv bytes, 1 output bytes, 2 event keys, 3 module bytes,
/// amount), as the SQL stores' usage queries give them.
pub(crate) fn usage_of(rows: impl Iterator<Item = (String, i64, i64)>) -> BTreeMap<String, StorageUsage> {
    let mut usage: BTreeMap<String, StorageUsage> = BTreeMap::new();
    for (tenant, what, amount) in rows {
        let amount = u64::try_from(amount).unwrap_or(0);
        let tenant = usage.entry(tenant).or_default();
        match what {
            0 => tenant.kv_bytes += amount,
            1 => tenant.output_bytes += amount,
            2 => tenant.event_keys += amount,
            _ => tenant.module_bytes += amount,
        }
    }
    usage
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Its name.
    pub name: String,
    /// Its quota and weight.
    pub config: TenantConfig,
}

/// An API token of a tenant, as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id (shown in lists, used to revoke it).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// sha-256 of the token, hex.
    pub hash: String,
}

/// A version of a tenant's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// The tenant.
    pub tenant: String,
    /// The app's name.
    pub app: String,
    /// The version (a module hash).
    pub version: String,
}

/// A session as stored: who it belongs to, its last checkpoint, and its fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// Its app's name (the version is in the snapshot).
    pub app: String,
    /// The session at its last checkpoint.
    pub snapshot: Session,
    /// The fencing token its owner writes under.
    pub fence: u64,
}

/// A customer event acknowledged into a session's inbox and not yet taken by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    /// Its place in the session's inbox (increasing).
    pub seq: u64,
    /// The event.
    pub event: Vec<u8>,
    /// Its idempotency key, if it had one.
    pub key: Option<String>,
}

/// An acknowledged event the session ended without taking: reported back, never dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Unapplied {
    /// Its place in the session's inbox.
    pub seq: u64,
    /// Its idempotency key, if it had one.
    pub key: Option<String>,
}

/// A session with everything stored about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// The session.
    pub record: SessionRecord,
    /// Acknowledged events not yet taken, oldest first.
    pub inbox: Vec<InboxEvent>,
    /// Acknowledged events it ended without taking.
    pub unapplied: Vec<Unapplied>,
}

/// A stored session that could not be read, set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The session.
    pub session: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// Why it was set aside.
    pub reason: String,
}

/// Everything a host needs to resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    /// Tenants.
    pub tenants: Vec<TenantRecord>,
    /// App versions new sessions start on.
    pub apps: Vec<AppRecord>,
    /// Every version each app has had, oldest first.
    pub app_versions: Vec<AppRecord>,
    /// Module bytes by hash: every version an app or a session uses.
    pub modules: BTreeMap<String, Vec<u8>>,
    /// Sessions, finished ones included (quarantined ones as failed sessions saying why).
    pub sessions: Vec<StoredSession>,
    /// Tenants' API tokens (hashed).
    pub tokens: Vec<TokenRecord>,
    /// Sessions set aside by this load because their stored rows do not decode.
    pub quarantined: Vec<Quarantined>,
    /// The highest session id ever used, purged sessions included: ids are never used twice.
    pub last_session_id: u64,
}

/// What appending a customer event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// It is durable in the inbox at this sequence number.
    New(u64),
    /// An event with the same idempotency key was acknowledged before: nothing was added.
    Duplicate,
    /// An event with the same idempotency key was acknowledged before, and the session ended
    /// without taking it.
    NotApplied,
    /// The session has ended: the event was not added.
    SessionEnded,
}

/// The atomic record of one completed action.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The session.
    pub session: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// The session after the action (state, next step, counters).
    pub snapshot: Session,
    /// Outputs the action released, in order.
    pub outputs: Vec<String>,
    /// Key-value writes of the action.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
    /// The inbox event the action took, if it was woken by one.
    pub consumed: Option<u64>,
    /// The fencing token the session is owned under.
    pub fence: u64,
}

/// The idempotency key a session was started with, and a digest of what it was asked to start:
/// a retry under the same key finds the session it started, and must ask for the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartKey {
    /// The key (its tenant's own: two tenants may use the same).
    pub key: String,
    /// sha-256 of the request (app, entry action, input), hex.
    pub request: String,
}

/// One write of a commit batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new session, unless its tenant already started one with the same key.
    Create {
        /// The session.
        record: SessionRecord,
        /// The key it is started under, if any.
        key: Option<StartKey>,
    },
    /// A customer event for a session's inbox, with its idempotency key.
    Append {
        /// The session.
        session: SessionId,
        /// Its tenant (the host settles the tenant's storage with it, whatever became of the
        /// session meanwhile; the store does not read it).
        tenant: String,
        /// The event.
        event: Vec<u8>,
        /// Its idempotency key.
        key: Option<String>,
    },
    /// A checkpoint. One whose session is finished also reports the events left in its inbox
    /// as not applied.
    Checkpoint(Checkpoint),
}

impl Write {
    /// The session it writes.
    pub fn session(&self) -> SessionId {
        match self {
            Write::Create { record, .. } => record.id,
            Write::Append { session, .. } => *session,
            Write::Checkpoint(checkpoint) => checkpoint.session,
        }
    }
}

/// What one write of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The session was created.
    Created,
    /// Its tenant had started a session with the same key before (kept until that session is
    /// purged): nothing was written.
    AlreadyStarted {
        /// The session that key started.
        session: SessionId,
        /// Whether it was asked for the same app, entry action and input.
        same_request: bool,
    },
    /// The event was appended (or not: see [`Appended`]).
    Appended(Appended),
    /// The checkpoint was committed.
    Committed,
    /// The checkpoint was refused: the session is owned under a newer fencing token (or is not
    /// in this store).
    Fenced,
}

/// Opens the store a URL names: `memory:`, `sqlite://PATH` or `postgres://…` (see [`PgStore`];
/// the store then holds the database's shards for this process, and is refused while another
/// host holds them).
pub fn open_store(url: &str) -> Result<std::sync::Arc<dyn Store>, Error> {
    if url == "memory:" {
        return Ok(std::sync::Arc::new(MemoryStore::default()));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(SqliteStore::open(std::path::Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The one host acting for the database: refused while another holds it (`turnstile
        // serve` waits as a standby instead).
        let store = std::sync::Arc::new(PgStore::open(url)?);
        let policy = postgres::ClaimPolicy {
            node: postgres::ClaimPolicy::default_node(),
            lease: std::time::Duration::from_secs(3),
            wait: false,
            address: None,
        };
        store.claim_all(&policy, |_| {}, || {})?;
        return Ok(store);
    }
    Err(Error::InvalidConfig {
        field: "store",
        problem: format!("unknown store URL `{url}`: use `memory:`, `sqlite://PATH` or `postgres://USER@HOST/DB`"),
    })
}

/// A place to keep what must survive.
pub trait Store: Send + Sync {
    /// Everything stored, to resume from.
    fn load(&self) -> Result<Image, StoreError>;
    /// One session as [`Store::load`] would give it back (`None` if it is not stored): what a
    /// host takes back after a checkpoint of it failed, from its last committed one.
    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError>;
    /// Creates or updates a tenant.
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    /// Deletes a tenant with its apps, sessions (their inboxes and outputs), tokens and key-value
    /// space.
    fn delete_tenant(&self, name: &str) -> Result<(), StoreError>;
    /// Stores a tenant's API token (its hash).
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Removes a token; false when there was none with that id for that tenant.
    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    /// Records an app's current version (and adds it to the app's versions), storing the module's
    /// bytes if they are new.
    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError>;
    /// Commits a batch of writes atomically, in order (one transaction: all or none), with one
    /// result per write. A checkpoint under a stale fencing token is refused on its own.
    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError>;
    /// A session's released outputs numbered after `after`, oldest first, at most `limit`.
    fn outputs(&self, session: SessionId, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// The bytes of the module `hash` (an app version), if they are stored.
    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The session `tenant` started under idempotency key `key`, with the digest of its request
    /// ([`StartKey::request`]), if it is still kept.
    fn started_with(&self, tenant: &str, key: &str) -> Result<Option<(SessionId, String)>, StoreError>;
    /// The value under `key` in `tenant`'s key-value space.
    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes finished sessions past their retention with everything kept for them (inbox,
    /// keys, outputs); sessions that are not finished in the store are left alone. Returns the
    /// ones it deleted. Their ids stay used.
    fn purge(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError>;
    /// Sets keys in `tenant`'s key-value space outside any action (an operator seeding data).
    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError>;
    /// What each tenant holds in the store now (tenants holding nothing may be left out).
    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError>;
}

/// The session a quarantined row comes back as: failed, saying why, so that its tenant sees it
/// and no restart trips over it again. `stored` is the row's text, from which the app version is
/// taken if that much can be read.
pub(crate) fn quarantined_session(stored: &str, reason: &str) -> Session {
    let app_version = serde_json::from_str::<serde_json::Value>(stored)
        .ok()
        .and_then(|v| v.get("app").and_then(serde_json::Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let failure = Failure::new(
        FailureKind::Quarantined,
        "",
        format!("its stored checkpoint could not be read and was set aside: {reason}"),
    );
    Session {
        app: app_version,
        status: Status::Failed { failure: failure.clone() },
        state: Vec::new(),
        counters: Counters::default(),
        last_failure: Some(failure),
        finished_ms: None,
    }
}
