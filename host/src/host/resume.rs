//! A host built on a store that already holds data resumes it: tenants, apps with their
//! versions, tokens, and every session — ready ones queued again (those caught mid-action re-run
//! from their last checkpoint), waiting ones given their inbox or their timer re-armed with what
//! is left of it, finished ones kept for their readers. Sessions the store set aside (rows that
//! did not decode) come back failed, saying why, and are logged and counted.

use super::kernel::Kernel;
use super::lifecycle::{Effects, Inherited, Lifecycle};
use super::sessions::SessionEntry;
use crate::app::{App, ModuleInfo};
use crate::error::Error;
use crate::session::SessionId;
use crate::store::{Image, StoreError, StoredSession, Write};
use std::collections::HashMap;
use std::sync::Arc;

/// Rebuilds the host's state from what the store holds.
pub(crate) fn resume(core: &Kernel, image: Image) -> Result<(), Error> {
    let bytes = |hash: &str| image.modules.get(hash).ok_or_else(|| StoreError::MissingModule(hash.to_owned()));
    // Each app version is read (not compiled) once; only the versions of open sessions are
    // compiled now, the others when a session needs them. Both without the deploy caps and time
    // limit: a version accepted once stays loadable.
    let mut read: HashMap<String, Arc<ModuleInfo>> = HashMap::new();
    let mut info = |hash: &str| -> Result<Arc<ModuleInfo>, Error> {
        if let Some(info) = read.get(hash) {
            return Ok(info.clone());
        }
        let info = Arc::new(core.runtime().inspect_stored(bytes(hash)?)?);
        read.insert(hash.to_owned(), info.clone());
        Ok(info)
    };
    let admin = core.tenants().admin();
    for tenant in &image.tenants {
        core.register_tenant(&admin, &tenant.name, tenant.config.clone());
    }
    // Versions in the order they were deployed, then the current ones (a redeploy of an older
    // version makes it current again).
    for app in image.app_versions.iter().chain(&image.apps) {
        let Some(tenant) = core.tenants().get(&app.tenant) else { continue };
        core.register_app(&admin, &tenant, &app.app, info(&app.version)?);
    }
    drop(admin);
    for token in &image.tokens {
        if let Some(tenant) = core.tenants().get(&token.tenant) {
            core.tokens().insert(token.hash.clone(), token.id.clone(), tenant.name().clone());
        }
    }
    // Ids of purged sessions are never used again.
    core.sessions().observe_id(SessionId(image.last_session_id));
    for stored in image.sessions {
        resume_session(core, stored, Inherited::default(), &mut |hash| core.runtime().reload(bytes(hash)?))?;
    }
    for quarantined in &image.quarantined {
        tracing::error!(
            session = %quarantined.session,
            tenant = %quarantined.tenant,
            reason = %quarantined.reason,
            "a stored session could not be read: it was set aside and ends failed"
        );
    }
    core.count_quarantined(u64::try_from(image.quarantined.len()).unwrap_or(u64::MAX));
    Ok(())
}

/// Takes one stored session back: into the session table, queued, waiting or kept as it was
/// stored (`code_of` gives an open session's compiled code), keeping what it `inherited` of a
/// life it replaces. A session of a tenant or app that is gone is left alone.
pub(crate) fn resume_session(
    core: &Kernel,
    stored: StoredSession,
    inherited: Inherited,
    code_of: &mut dyn FnMut(&str) -> Result<Arc<App>, Error>,
) -> Result<(), Error> {
    let record = &stored.record;
    let id = record.id;
    core.sessions().observe_id(id);
    let Some(tenant) = core.tenants().get(&record.tenant) else { return Ok(()) };
    let Some(app) = tenant.app(&record.app) else { return Ok(()) };
    let open = !record.snapshot.status.is_finished();
    let version = record.snapshot.app.clone();
    let code = if open { Some(code_of(&version)?) } else { None };
    let finished_ms = record.snapshot.finished_ms;
    let (life, effects) = Lifecycle::resumed(stored, inherited);
    // Counters count what this host does from its start (as Prometheus expects of a
    // process): a session taken back from the store was not started here.
    if open {
        tenant.resumed_open();
    } else {
        // Its retention counts from when it finished (from this start for a session
        // finished before that was kept).
        core.retention().finished(id, tenant.policy().retention, finished_ms);
        tenant.hold_finished();
    }
    let entry = SessionEntry { tenant: tenant.clone(), app: app.name.clone(), app_ix: app.ix, version, code, life };
    core.adopt(id, entry, effects);
    Ok(())
}

impl Kernel {
    /// Holds a session read back from the store and carries out its first effects (the
    /// checkpoint of a cancel it inherited is queued under its shard's lock, then committed).
    pub(crate) fn adopt(&self, id: SessionId, entry: SessionEntry, mut effects: Effects) {
        let (tenant, app_ix) = (entry.tenant.clone(), entry.app_ix);
        let checkpoint = effects.checkpoint.take();
        let commit = checkpoint.is_some();
        {
            let mut shard = self.sessions().shard(id);
            super::sessions::hold(&mut shard, id, entry);
            if let Some(checkpoint) = checkpoint {
                self.commits().enqueue(Write::Checkpoint(checkpoint), None);
            }
        }
        self.carry_out(&tenant, app_ix, id, effects);
        if commit {
            self.drive_commits();
        }
    }
}
