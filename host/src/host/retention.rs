//! Retention: a finished session (done, failed, cancelled) is kept, with its outputs, inbox and
//! idempotency keys, for its tenant's retention period (the host's unless the tenant has its
//! own), counted from when it finished (stored with its last checkpoint, so restarts do not
//! reset it), then purged from memory and from the store by one thread of its own, in batches,
//! off the path of actions. A purged session answers `not_found` like one that never existed,
//! and its id is never used again.

use super::kernel::Kernel;
use super::storage::REMEASURE;
use super::tenants::Tenant;
use crate::error::Error;
use crate::session::{SessionId, now_ms};
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Sessions purged in one store transaction, at most.
const BATCH: usize = 256;
/// How long a batch the store could not purge waits before it is tried again.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Queue {
    /// Sessions by the time they are due.
    due: BTreeSet<(Instant, SessionId)>,
    stopping: bool,
}

/// The finished sessions waiting out their retention.
pub(crate) struct Retention {
    period: Duration,
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Retention {
    pub(crate) fn new(period: Duration) -> Retention {
        Retention { period, queue: Mutex::default(), changed: Condvar::new() }
    }

    /// The host's retention (tenants without one of their own).
    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Session `id` finished at `finished_ms` (ms since the epoch; `None`: now): purge it once
    /// `period` (the host's when `None`) has passed since.
    pub(crate) fn finished(&self, id: SessionId, period: Option<Duration>, finished_ms: Option<u64>) {
        let age = finished_ms.map_or(Duration::ZERO, |at| Duration::from_millis(now_ms().saturating_sub(at)));
        let due = Instant::now().checked_add(period.unwrap_or(self.period).saturating_sub(age));
        // A period too long to represent: kept for ever.
        if let Some(due) = due {
            self.lock().due.insert((due, id));
            self.changed.notify_one();
        }
    }

    /// Ends the purging thread.
    pub(crate) fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// The next batch that is due, waiting for it at most `longest` (then an empty batch);
    /// `None` once stopping.
    fn next_batch(&self, longest: Duration) -> Option<Vec<SessionId>> {
        let mut queue = self.lock();
        let until = Instant::now() + longest;
        loop {
            if queue.stopping {
                return None;
            }
            let now = Instant::now();
            if now >= until {
                return Some(Vec::new());
            }
            match queue.due.first() {
                Some((due, _)) if *due <= now => {
                    let mut batch = Vec::new();
                    while batch.len() < BATCH
                        && let Some(&(due, id)) = queue.due.first()
                        && due <= now
                    {
                        queue.due.pop_first();
                        batch.push(id);
                    }
                    return Some(batch);
                }
                due => {
                    let wait = due.map_or(until, |(due, _)| (*due).min(until)).saturating_duration_since(now);
                    queue = self.changed.wait_timeout(queue, wait).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }

    /// Puts a batch back to be tried again later (the store failed).
    fn retry(&self, batch: Vec<SessionId>) {
        let Some(due) = Instant::now().checked_add(RETRY) else { return };
        self.lock().due.extend(batch.into_iter().map(|id| (due, id)));
    }
}

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
            if shard.get(&id).is_some_and(|entry| entry.life.session().status.is_finished()) {
                shard.remove(&id);
            }
        }
    }
}

/// Starts the thread that purges what is due, and measures each tenant's storage again every
/// `storage::REMEASURE` (what purges freed shows then).
pub(crate) fn spawn(kernel: Arc<Kernel>) -> Result<JoinHandle<()>, Error> {
    thread::Builder::new()
        .name("turnstile-retention".into())
        .spawn(move || {
            let mut measured = Instant::now();
            while let Some(batch) = kernel.retention().next_batch(REMEASURE) {
                if measured.elapsed() >= REMEASURE {
                    kernel.measure_storage();
                    measured = Instant::now();
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
