//! Where everything that must survive the process is kept, behind one trait: tenants, app
//! versions (with their module bytes), sessions' checkpoints, their inboxes of acknowledged
//! customer events, their released outputs, and tenants' key-value spaces.
//!
//! - [`MemoryStore`]: maps in memory (tests, benchmarks, the demo). Survives a host being dropped
//!   and rebuilt on it, not the process.
//! - [`SqliteStore`]: the embedded default, one file in WAL mode; a single node survives `kill -9`.
//!
//! Ownership is part of the shape from the start: each session row has an owner and a fencing
//! token, and a checkpoint carries the token it was taken under; a store refuses a checkpoint
//! whose token is stale (a cluster store hands sessions of a dead node to another, with a new
//! token, so the old owner's late writes bounce).

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::error::Error;
use crate::host::TenantConfig;
use crate::scheduler::SessionId;
use crate::session::Session;
use std::collections::BTreeMap;

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

/// The current version of a tenant's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// The tenant.
    pub tenant: String,
    /// The app's name.
    pub app: String,
    /// The version new sessions start on (a module hash).
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

/// A customer event acknowledged into a session's inbox and not yet consumed by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    /// Its place in the session's inbox (increasing).
    pub seq: u64,
    /// The event.
    pub event: Vec<u8>,
}

/// A session with everything stored about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// The session.
    pub record: SessionRecord,
    /// Acknowledged events not yet consumed, oldest first.
    pub inbox: Vec<InboxEvent>,
    /// Outputs released so far, in order.
    pub outputs: Vec<String>,
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
    /// Sessions, finished ones included.
    pub sessions: Vec<StoredSession>,
    /// Tenants' API tokens (hashed).
    pub tokens: Vec<TokenRecord>,
}

/// What appending a customer event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// It is durable in the inbox at this sequence number.
    New(u64),
    /// An event with the same idempotency key was acknowledged before: nothing was added.
    Duplicate,
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
    /// The inbox event the action consumed, if it was woken by one.
    pub consumed: Option<u64>,
    /// The fencing token the session is owned under.
    pub fence: u64,
}

/// Opens the store a URL names: `memory:` or `sqlite://PATH`.
pub fn open_store(url: &str) -> Result<std::sync::Arc<dyn Store>, Error> {
    if url == "memory:" {
        return Ok(std::sync::Arc::new(MemoryStore::default()));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(std::sync::Arc::new(SqliteStore::open(std::path::Path::new(path))?));
    }
    Err(Error::Config(format!("unknown store URL `{url}`: use `memory:` or `sqlite://PATH`")))
}

/// A place to keep what must survive.
pub trait Store: Send + Sync {
    /// Everything stored, to resume from.
    fn load(&self) -> Result<Image, Error>;
    /// Creates or updates a tenant.
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), Error>;
    /// Deletes a tenant with its apps, sessions (their inboxes and outputs), tokens and key-value
    /// space.
    fn delete_tenant(&self, name: &str) -> Result<(), Error>;
    /// Stores a tenant's API token (its hash).
    fn put_token(&self, token: &TokenRecord) -> Result<(), Error>;
    /// Removes a token; false when there was none with that id for that tenant.
    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, Error>;
    /// Records an app's current version (and adds it to the app's versions), storing the module's
    /// bytes if they are new.
    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), Error>;
    /// Stores a new session.
    fn create_session(&self, session: &SessionRecord) -> Result<(), Error>;
    /// Appends a customer event to a session's inbox, durably; with an idempotency key, an event
    /// whose key was seen before for this session is acknowledged without being added again.
    fn append_event(&self, session: SessionId, event: &[u8], key: Option<&str>) -> Result<Appended, Error>;
    /// Whether an event with this idempotency key was acknowledged for this session.
    fn has_event_key(&self, session: SessionId, key: &str) -> Result<bool, Error>;
    /// Commits a group of checkpoints atomically (all or none), refusing any whose fencing token
    /// is stale.
    fn commit(&self, group: &[Checkpoint]) -> Result<(), Error>;
    /// The value under `key` in `tenant`'s key-value space.
    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Sets keys in `tenant`'s key-value space outside any action (an operator seeding data).
    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), Error>;
}
