//! The host's upkeep, off the path of actions, on one thread of its own: finished sessions
//! purged once their retention has passed (checked against their tenant's retention at that
//! moment, so an operator's change applies to sessions already finished), each tenant's
//! storage measured from the store again every `storage::REMEASURE`, and compiled modules left
//! unused for `module_idle` evicted (`modules.rs`).

use super::kernel::Kernel;
use super::storage::REMEASURE;
use super::tenants::Tenant;
use crate::error::Error;
use crate::session::{SessionId, now_ms};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

impl Kernel {
    /// Of sessions whose retention was due when it was counted, those still due under their
    /// tenant's retention now (an operator may have changed it since): the rest are counted
    /// again. Sessions no longer held (purged already) are left out.
    pub(crate) fn still_due(&self, batch: Vec<SessionId>) -> Vec<SessionId> {
        let now = now_ms();
        batch
            .into_iter()
            .filter(|&id| {
                let shard = self.sessions().shard(id);
                let Some(entry) = shard.get(&id) else { return false };
                let (retention, finished_ms) = (entry.tenant.policy().retention, entry.life.session().finished_ms);
                drop(shard);
                let period = retention.unwrap_or(self.retention().period());
                let due_ms =
                    finished_ms.map(|at| at.saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX)));
                match due_ms {
                    Some(due_ms) if due_ms > now => {
                        self.retention().finished(id, retention, finished_ms);
                        false
                    }
                    _ => true,
                }
            })
            .collect()
    }

    /// `tenant`'s retention changed: its finished sessions are counted again under the new one
    /// (an earlier count that comes due first is checked against it then).
    pub(crate) fn retention_changed(&self, tenant: &Tenant) {
        let retention = tenant.policy().retention;
        self.sessions().each(|id, entry| {
            if std::ptr::eq(Arc::as_ptr(&entry.tenant), tenant) && entry.life.session().status.is_finished() {
                self.retention().finished(id, retention, entry.life.session().finished_ms);
            }
        });
    }

    /// Drops purged sessions from memory (only finished ones: nothing else is ever purged).
    pub(crate) fn forget_finished(&self, sessions: &[SessionId]) {
        for &id in sessions {
            let mut shard = self.sessions().shard(id);
            if shard.get(&id).is_some_and(|entry| entry.life.session().status.is_finished())
                && let Some(entry) = super::sessions::release(&mut shard, id)
            {
                entry.tenant.purged();
            }
        }
    }

    /// Asks the store what each tenant holds (at start, then every `storage::REMEASURE`).
    pub(crate) fn measure_storage(&self) {
        match self.store().usage() {
            Ok(usage) => {
                for tenant in self.tenants().all() {
                    tenant.storage().measured(usage.get(&**tenant.name()).copied().unwrap_or_default());
                }
            }
            Err(error) => {
                tracing::warn!(%error, "measuring each tenant's storage failed: counting on from the last measure")
            }
        }
    }
}

/// Starts the thread that purges what is due, measures each tenant's storage again every
/// `storage::REMEASURE` (what purges freed shows then), and evicts modules unused for
/// `module_idle` (looked for every half of it, between 1 s and `REMEASURE`).
pub(crate) fn spawn(kernel: Arc<Kernel>, module_idle: Duration) -> Result<JoinHandle<()>, Error> {
    let evict_every = (module_idle / 2).clamp(Duration::from_secs(1), REMEASURE);
    thread::Builder::new()
        .name("turnstile-retention".into())
        .spawn(move || {
            let (mut measured, mut evicted) = (Instant::now(), Instant::now());
            while let Some(batch) = kernel.retention().next_batch(evict_every) {
                if measured.elapsed() >= REMEASURE {
                    kernel.measure_storage();
                    measured = Instant::now();
                }
                if evicted.elapsed() >= evict_every {
                    kernel.evict_idle_modules(module_idle);
                    evicted = Instant::now();
                }
                // Checked against the tenants' retention now: an operator may have changed it.
                let batch = kernel.still_due(batch);
                if batch.is_empty() {
                    continue;
                }
                // The store first: a session leaves memory only once it is gone for good.
                match kernel.store().purge(&batch) {
                    // Only what the store deleted: a session stopped by a failed commit is not
                    // finished there, and stays (it comes back at the next start).
                    Ok(purged) => kernel.forget_finished(&purged),
                    Err(error) => {
                        tracing::warn!(sessions = batch.len(), %error, "purging finished sessions failed: will retry");
                        kernel.retention().retry(batch);
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the retention thread", e))
}
