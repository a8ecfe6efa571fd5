//! Retention: a finished session (done, failed, cancelled) is kept, with its outputs, inbox and
//! idempotency keys, for its tenant's retention period (the host's unless the tenant has its
//! own), counted from when it finished (stored with its last checkpoint, so restarts do not
//! reset it), then purged from memory and from the store by one thread of its own, in batches,
//! off the path of actions (`housekeeping.rs`). A purged session answers `not_found` like one
//! that never existed, and its id is never used again. This module is the queue of what comes
//! due when.

use crate::session::{SessionId, now_ms};
use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
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
    pub(crate) fn next_batch(&self, longest: Duration) -> Option<Vec<SessionId>> {
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
    pub(crate) fn retry(&self, batch: Vec<SessionId>) {
        let Some(due) = Instant::now().checked_add(RETRY) else { return };
        self.lock().due.extend(batch.into_iter().map(|id| (due, id)));
    }
}
