//! Portable session snapshots: the whole durable image of one session at its last checkpoint
//! (app version, state, next step, counters, unconsumed inbox), written by one host's store and
//! resumed by another's — the "second environment" a session can move to.
//!
//! A snapshot names the app version by its module hash; the target must already hold that
//! version (deploy the same bytes there first), or the import is refused.

use crate::error::Error;
use crate::scheduler::SessionId;
use crate::session::Session;
use crate::store::{Appended, SessionRecord, Store};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// What a snapshot file says it is.
pub const SNAPSHOT_FORMAT: &str = "turnstile-session-snapshot";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

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
        let head: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Snapshot(format!("not JSON: {e}")))?;
        if head.get("format").and_then(serde_json::Value::as_str) != Some(SNAPSHOT_FORMAT) {
            return Err(Error::Snapshot(format!(
                "not a Turnstile session snapshot (no \"format\": \"{SNAPSHOT_FORMAT}\")"
            )));
        }
        match head.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(SNAPSHOT_VERSION) => {}
            Some(v) => {
                return Err(Error::Snapshot(format!(
                    "snapshot format version {v}; this Turnstile reads version {SNAPSHOT_VERSION}"
                )));
            }
            None => return Err(Error::Snapshot("the snapshot has no format version".into())),
        }
        serde_json::from_value(head).map_err(|e| Error::Snapshot(format!("malformed snapshot: {e}")))
    }
}

/// Takes the snapshot of a session from a store.
pub fn export_session(store: &dyn Store, session: SessionId) -> Result<Snapshot, Error> {
    let image = store.load()?;
    let stored = image
        .sessions
        .into_iter()
        .find(|s| s.record.id == session)
        .ok_or_else(|| Error::NotFound(format!("session {session}")))?;
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
        return Err(Error::Snapshot(format!(
            "this store lacks app version {version} of `{}`; deploy the same module here first",
            snapshot.app
        )));
    }
    if !image.tenants.iter().any(|t| t.name == snapshot.tenant) {
        return Err(Error::Snapshot(format!("this store has no tenant `{}`", snapshot.tenant)));
    }
    if !image.apps.iter().any(|a| a.tenant == snapshot.tenant && a.app == snapshot.app) {
        return Err(Error::Snapshot(format!("tenant `{}` has no app `{}` here", snapshot.tenant, snapshot.app)));
    }
    let events = snapshot
        .inbox
        .iter()
        .map(|e| STANDARD.decode(e).map_err(|e| Error::Snapshot(format!("an inbox event is not base64: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let id = SessionId(image.sessions.iter().map(|s| s.record.id.0).max().unwrap_or(0) + 1);
    store.create_session(&SessionRecord {
        id,
        tenant: snapshot.tenant.clone(),
        app: snapshot.app.clone(),
        snapshot: snapshot.snapshot.clone(),
        fence: 0,
    })?;
    for event in events {
        if store.append_event(id, &event, None)? == Appended::Duplicate {
            return Err(Error::Store("an imported event was taken for a duplicate".into()));
        }
    }
    Ok(id)
}
