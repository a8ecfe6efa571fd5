//! Portable session snapshots: the whole durable image of one session at its last checkpoint
//! (app version, state, next step, counters, unconsumed inbox), written by one host's store and
//! resumed by another's — the "second environment" a session can move to.
//!
//! A snapshot names the app version by its module hash; the target must already hold that
//! version (deploy the same bytes there first), or the import is refused.

use crate::error::Error;
use crate::session::{Session, SessionId};
use crate::store::{Appended, SessionRecord, Store, Write, Written};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// What a snapshot file says it is.
pub const SNAPSHOT_FORMAT: &str = "turnstile-session-snapshot";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Why a snapshot can't be read or resumed here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The text is not JSON.
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    /// It is JSON but not a session snapshot.
    #[error("not a Turnstile session snapshot (no \"format\": \"{SNAPSHOT_FORMAT}\")")]
    NotASnapshot,
    /// It has no format version.
    #[error("the snapshot has no format version")]
    NoVersion,
    /// It is of another format version.
    #[error("snapshot format version {found}; this Turnstile reads version {SNAPSHOT_VERSION}")]
    OtherVersion {
        /// Its version.
        found: u64,
    },
    /// It does not have the shape of a snapshot.
    #[error("malformed snapshot")]
    Malformed(#[source] serde_json::Error),
    /// The store lacks the app version the session is pinned to.
    #[error("this store lacks app version {version} of `{app}`; deploy the same module here first")]
    MissingVersion {
        /// The version (module hash).
        version: String,
        /// The app.
        app: String,
    },
    /// The store has no such tenant.
    #[error("this store has no tenant `{0}`")]
    NoTenant(String),
    /// The tenant has no such app here.
    #[error("tenant `{tenant}` has no app `{app}` here")]
    NoApp {
        /// The tenant.
        tenant: String,
        /// The app.
        app: String,
    },
    /// An inbox event is not base64.
    #[error("an inbox event is not base64")]
    BadInbox(#[source] base64::DecodeError),
    /// The store did not take the session as a new one.
    #[error("the store refused the imported session or one of its events")]
    Refused,
}

/// One session, portable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// The format version.
    pub version: u32,
    /// The session's id where it was exported.
    pub session: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its app's name.
    pub app: String,
    /// The session at its last checkpoint; `app` inside it is the app version (module hash).
    pub snapshot: Session,
    /// Acknowledged customer events it has not consumed yet, base64, oldest first.
    pub inbox: Vec<String>,
}

impl Snapshot {
    /// Parses a snapshot, refusing anything that is not one, or is of a newer format.
    pub fn parse(text: &str) -> Result<Snapshot, Error> {
        let head: serde_json::Value = serde_json::from_str(text).map_err(SnapshotError::NotJson)?;
        if head.get("format").and_then(serde_json::Value::as_str) != Some(SNAPSHOT_FORMAT) {
            return Err(SnapshotError::NotASnapshot.into());
        }
        match head.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(SNAPSHOT_VERSION) => {}
            Some(found) => return Err(SnapshotError::OtherVersion { found }.into()),
            None => return Err(SnapshotError::NoVersion.into()),
        }
        Ok(serde_json::from_value(head).map_err(SnapshotError::Malformed)?)
    }
}

/// Takes the snapshot of a session from a store.
pub fn export_session(store: &dyn Store, session: SessionId) -> Result<Snapshot, Error> {
    let image = store.load()?;
    let stored = image
        .sessions
        .into_iter()
        .find(|s| s.record.id == session)
        .ok_or_else(|| Error::not_found("session", session))?;
    Ok(Snapshot {
        format: SNAPSHOT_FORMAT.to_owned(),
        version: SNAPSHOT_VERSION,
        session: session.0,
        tenant: stored.record.tenant,
        app: stored.record.app,
        snapshot: stored.record.snapshot,
        inbox: stored.inbox.iter().map(|e| STANDARD.encode(&e.event)).collect(),
    })
}

/// Resumes a snapshot in a store, as a new session of the same tenant and app; returns its id.
/// The tenant, the app and the app version must exist there. A host on that store picks the
/// session up when it (re)starts.
pub fn import_session(store: &dyn Store, snapshot: &Snapshot) -> Result<SessionId, Error> {
    let image = store.load()?;
    let version = &snapshot.snapshot.app;
    if !image.modules.contains_key(version) {
        return Err(SnapshotError::MissingVersion { version: version.clone(), app: snapshot.app.clone() }.into());
    }
    if !image.tenants.iter().any(|t| t.name == snapshot.tenant) {
        return Err(SnapshotError::NoTenant(snapshot.tenant.clone()).into());
    }
    if !image.apps.iter().any(|a| a.tenant == snapshot.tenant && a.app == snapshot.app) {
        return Err(SnapshotError::NoApp { tenant: snapshot.tenant.clone(), app: snapshot.app.clone() }.into());
    }
    let events = snapshot
        .inbox
        .iter()
        .map(|e| STANDARD.decode(e).map_err(SnapshotError::BadInbox))
        .collect::<Result<Vec<_>, _>>()?;
    let id = SessionId(image.last_session_id + 1);
    let record = SessionRecord {
        id,
        tenant: snapshot.tenant.clone(),
        app: snapshot.app.clone(),
        snapshot: snapshot.snapshot.clone(),
        fence: 0,
    };
    let mut batch = vec![Write::Create { record, key: None }];
    batch.extend(events.into_iter().map(|event| Write::Append {
        session: id,
        tenant: snapshot.tenant.clone(),
        event,
        key: None,
    }));
    let written = store.commit(&batch)?;
    let refused = written.iter().any(|w| !matches!(w, Written::Created | Written::Appended(Appended::New(_))));
    if refused {
        return Err(SnapshotError::Refused.into());
    }
    Ok(id)
}
