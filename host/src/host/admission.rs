//! Admission: whether a new session may start — the store takes writes, the tenant is not
//! suspended, the input fits, the tenant is within its open and finished sessions, the app's
//! queue has room — and the entry it starts with (its version's code loaded if need be). A start
//! under an idempotency key that started a session before finds that session instead, whatever
//! the quotas say now.

use super::kernel::Kernel;
use super::lifecycle::Lifecycle;
use super::sessions::SessionEntry;
use super::tenants::Tenant;
use super::views::Started;
use crate::error::Error;
use crate::session::{Session, SessionId};
use crate::store::{SessionRecord, StartKey, Written};
use sha2::{Digest, Sha256};
use std::sync::Arc;

impl Kernel {
    /// Starts a session of `tenant`'s `app` at `entry_action`, or, under a key that started one
    /// before (and is still kept), finds it; answers once the new session is durable.
    pub(crate) fn start(
        &self,
        tenant: &Arc<Tenant>,
        app: &str,
        entry_action: &str,
        input: Vec<u8>,
        key: Option<&str>,
    ) -> Result<Started, Error> {
        let key = key.map(|key| StartKey { key: key.to_owned(), request: request_digest(app, entry_action, &input) });
        let _turn = key.as_ref().map(|key| tenant.start_turn(&key.key));
        if let Some(key) = &key {
            // An earlier start under the key whose commit had an unknown outcome is found too, if
            // it landed: the host takes such a session back on its own (`recovery.rs`).
            if let Some((session, request)) = self.store().started_with(tenant.name(), &key.key)? {
                return started_before(key, session, request == key.request);
            }
        }
        let (entry, record) = self.new_entry(tenant, app, entry_action, input)?;
        let id = record.id;
        match (self.create(entry, record, key.clone())?, key) {
            (Written::AlreadyStarted { session, same_request }, Some(key)) => {
                started_before(&key, session, same_request)
            }
            _ => Ok(Started { session: id, before: false }),
        }
    }

    /// A new session's entry, or why it can't be.
    pub(crate) fn new_entry(
        &self,
        tenant: &Arc<Tenant>,
        app: &str,
        entry_action: &str,
        input: Vec<u8>,
    ) -> Result<(SessionEntry, SessionRecord), Error> {
        self.health().check()?;
        let policy = tenant.policy();
        let app_entry = tenant.app(app).ok_or_else(|| Error::not_found("app", app))?;
        if policy.suspended {
            return Err(Error::Suspended { tenant: tenant.name().to_string() });
        }
        if input.len() > policy.limits.max_input_bytes {
            return Err(Error::EventTooLarge { size: input.len(), limit: policy.limits.max_input_bytes });
        }
        if tenant.finished_sessions() >= policy.max_finished_sessions {
            return Err(Error::Quota {
                owner: tenant.name().to_string(),
                what: "finished sessions held until their retention passes",
                count: tenant.finished_sessions(),
            });
        }
        let version = self.code(&app_entry.current.hash)?;
        let session = Session::start(&version, entry_action, input)?;
        self.dispatcher().has_room(app_entry.ix).map_err(Error::QueueFull)?;
        if !tenant.open_session(policy.max_sessions) {
            if tenant.is_closed() {
                return Err(Error::not_found("tenant", tenant.name()));
            }
            return Err(Error::Quota {
                owner: tenant.name().to_string(),
                what: "open sessions",
                count: tenant.open_sessions(),
            });
        }
        let id = self.sessions().next_id();
        let record = SessionRecord {
            id,
            tenant: tenant.name().to_string(),
            app: app.to_owned(),
            snapshot: session.clone(),
            fence: 0,
        };
        let entry = SessionEntry {
            tenant: tenant.clone(),
            app: app_entry.name.clone(),
            app_ix: app_entry.ix,
            version: version.hash().to_owned(),
            code: Some(version),
            life: Lifecycle::creating(id, session),
        };
        Ok((entry, record))
    }
}

/// What a start under `key` that found `session` answers: that session, if it was asked for the
/// same app, entry and input; otherwise a refusal naming it.
pub(crate) fn started_before(key: &StartKey, session: SessionId, same_request: bool) -> Result<Started, Error> {
    if same_request {
        Ok(Started { session, before: true })
    } else {
        Err(Error::KeyReused { key: key.key.clone(), session })
    }
}

/// sha-256 of a start request, hex: each part's length before it, so that no two requests share
/// a digest by moving bytes between parts.
fn request_digest(app: &str, entry_action: &str, input: &[u8]) -> String {
    let mut digest = Sha256::new();
    for part in [app.as_bytes(), entry_action.as_bytes(), input] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    crate::app::hex(&digest.finalize())
}
