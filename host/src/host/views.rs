//! What the host shows of itself: sessions, tenants, apps and deploys as their readers see them.

use super::sessions::SessionEntry;
use crate::failure::Failure;
use crate::limits::TenantConfig;
use crate::runtime::CompileSource;
use crate::session::{Counters, SessionId, Status};
use crate::store::Unapplied;

/// A session as its tenant may read it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// Its id.
    pub id: SessionId,
    /// The app it runs.
    pub app: String,
    /// The app version it is pinned to.
    pub version: String,
    /// Where it is (as of its last committed checkpoint).
    pub status: Status,
    /// What it has used.
    pub counters: Counters,
    /// Its latest failure.
    pub last_failure: Option<Failure>,
    /// How many outputs it has released (numbered from 1; read them with `Host::outputs`).
    pub outputs: u64,
    /// Its state blob.
    pub state: Vec<u8>,
    /// Acknowledged events it ended without taking (reported back, never dropped).
    pub unapplied: Vec<Unapplied>,
}

impl SessionView {
    /// Session `id` as its tenant reads it.
    pub(crate) fn of(id: SessionId, entry: &SessionEntry) -> SessionView {
        let session = entry.life.session();
        SessionView {
            id,
            app: entry.app.to_string(),
            version: entry.version.clone(),
            status: entry.life.visible().clone(),
            counters: session.counters.clone(),
            last_failure: session.last_failure.clone(),
            outputs: entry.life.released(),
            state: session.state.clone(),
            unapplied: entry.life.unapplied().to_vec(),
        }
    }
}

/// What delivering a customer event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The event is durable in the session's inbox: the session takes it at its next wait (if it
    /// ends first, the event is listed in its unapplied events).
    Accepted,
    /// An event with the same idempotency key was acknowledged before: this one changed nothing.
    Duplicate,
}

/// What starting a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The session.
    pub session: SessionId,
    /// Whether it was started before, under the same idempotency key: this start changed nothing.
    pub before: bool,
}

/// One released output of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its number (from 1).
    pub number: u64,
    /// The output event (one JSON value).
    pub body: String,
}

/// A tenant as the operator sees it (the API's answer too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// Its quota, weight and whether it is suspended.
    pub config: TenantConfig,
    /// Sessions it has open.
    pub open_sessions: u64,
    /// Finished sessions it holds until their retention passes and they are purged.
    pub finished_sessions: u64,
    /// What it holds in the store, against its storage quotas.
    pub storage: crate::store::StorageUsage,
    /// Its apps, by name.
    pub apps: Vec<AppInfo>,
}

/// An app as its tenant sees it (the API's answer too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AppInfo {
    /// Its name.
    pub name: String,
    /// The version new sessions start on.
    pub version: String,
    /// That version's actions.
    pub actions: Vec<String>,
    /// Every version it has had, oldest first.
    pub versions: Vec<String>,
}

/// A deployed app version, as deploy reports it (the API's answer too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AppVersion {
    /// The app's name.
    pub app: String,
    /// The version (module sha-256, hex).
    pub version: String,
    /// Its actions.
    pub actions: Vec<String>,
    /// `AlreadyDeployed` if this tenant had deployed these bytes before, `Compiled` otherwise
    /// (whether another tenant's compile was reused is none of this tenant's business).
    #[serde(rename = "compiled")]
    pub source: CompileSource,
}
