//! Admission: whether a new session may start — the store takes writes, the tenant is not
//! suspended, the input fits, the tenant is within its open and finished sessions, the app's
//! queue has room — and the entry it starts with (its version's code loaded if need be).

use super::kernel::Kernel;
use super::lifecycle::Lifecycle;
use super::sessions::SessionEntry;
use super::tenants::Tenant;
use crate::error::Error;
use crate::session::Session;
use crate::store::SessionRecord;
use std::sync::Arc;

impl Kernel {
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
