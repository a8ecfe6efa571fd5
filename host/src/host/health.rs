//! Whether the store takes writes. An outage starts when a group commit fails with an error the
//! store may recover from (a full disk, an I/O error, a lost connection: [`StoreError::is_unavailable`])
//! and ends when a commit goes through. Meanwhile:
//! - the commit queue keeps the checkpoints it could not commit, in order, and the retry thread
//!   tries them again after a growing pause (10 ms doubling to 1 s), so that no session is lost
//!   or stopped by a store that comes back;
//! - new work (a session, an event, a cancel) is refused at once with `store_unavailable`
//!   rather than queued behind them: nothing is acknowledged that was not committed, and no
//!   caller waits for an outage to end;
//! - `/readyz` and the metrics say so.
//!
//! With no checkpoint left to retry (the outage was met by an event's append) the outage is
//! over once [`QUIET`] has passed without a failure: the next write finds out.

use crate::error::Error;
use crate::store::StoreError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long after a failed commit new work is still refused without trying the store.
pub(crate) const QUIET: Duration = Duration::from_secs(2);
/// The first pause before a retry, doubled after each failure up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The store's health, shared by the commit queue, the kernel's entry points and the retry
/// thread.
#[derive(Default)]
pub(crate) struct StoreHealth {
    state: Mutex<State>,
    wake: Condvar,
    /// An outage is under way (a fast check for the hot path).
    down: AtomicBool,
    /// Group commits that failed because the store was unavailable, ever.
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    outage: Option<Outage>,
    /// Checkpoints wait for a retry.
    retry_wanted: bool,
    /// Retries so far in this outage (the pause grows with them).
    attempts: u32,
    closing: bool,
}

struct Outage {
    since: Instant,
    last_failure: Instant,
    error: Arc<StoreError>,
}

/// An outage as readers see it.
#[derive(Debug, Clone)]
pub struct StoreOutage {
    /// How long the store has been failing.
    pub failing_for: Duration,
    /// The last error (for the operator's log, not for tenants).
    pub error: Arc<StoreError>,
}

impl StoreHealth {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A group commit failed with `error` (one the store may recover from); `retry` if it kept
    /// checkpoints to try again. Returns the error, shared, to answer the group's callers with.
    pub(crate) fn failed(&self, error: StoreError, retry: bool) -> Arc<StoreError> {
        self.failed_with(Arc::new(error), retry)
    }

    /// [`StoreHealth::failed`] with an error already shared (a commit the store could not tell
    /// the outcome of: an outage, though nothing is kept to retry).
    pub(crate) fn failed_with(&self, error: Arc<StoreError>, retry: bool) -> Arc<StoreError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut state = self.lock();
        match &mut state.outage {
            Some(outage) => {
                outage.last_failure = now;
                outage.error = error.clone();
            }
            None => {
                tracing::error!(error = %Error::Store(error.clone()).chain(),
                    "the store is unavailable: new work is refused and checkpoints are retried until it is back");
                state.outage = Some(Outage { since: now, last_failure: now, error: error.clone() });
                self.down.store(true, Ordering::Release);
            }
        }
        state.retry_wanted |= retry;
        self.wake.notify_all();
        error
    }

    /// A group commit went through: the outage, if any, is over.
    pub(crate) fn committed(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if let Some(outage) = state.outage.take() {
            tracing::info!(after_ms = outage.since.elapsed().as_millis(), "the store takes writes again");
        }
        state.retry_wanted = false;
        state.attempts = 0;
        self.down.store(false, Ordering::Release);
    }

    /// The outage under way, if any (one whose last failure is [`QUIET`] old with nothing
    /// left to retry is over: the next write finds out).
    pub(crate) fn outage(&self) -> Option<StoreOutage> {
        if !self.down.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        let outage = state.outage.as_ref()?;
        let current = state.retry_wanted || outage.last_failure.elapsed() < QUIET;
        current.then(|| StoreOutage { failing_for: outage.since.elapsed(), error: outage.error.clone() })
    }

    /// Refuses new work while the store is down (`store_unavailable`, whatever the failure that
    /// began the outage: an unknown outcome is one too).
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.outage() {
            Some(outage) => Err(Error::StoreDown(outage.error)),
            None => Ok(()),
        }
    }

    /// Whether checkpoints wait for the retry thread (workers then leave commits to it rather
    /// than each meeting the failing store after every action).
    pub(crate) fn retrying(&self) -> bool {
        self.down.load(Ordering::Acquire) && self.lock().retry_wanted
    }

    /// Whether the host is closing (a failing group is then answered rather than kept).
    pub(crate) fn closing(&self) -> bool {
        self.lock().closing
    }

    /// Failed group commits so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The retry thread's wait: until checkpoints want a retry, then the pause before it.
    /// False once the host closes.
    pub(crate) fn next_retry(&self) -> bool {
        let mut state = self.lock();
        while !state.closing && !state.retry_wanted {
            state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        let pause = FIRST_PAUSE.saturating_mul(1u32 << state.attempts.min(16)).min(LONGEST_PAUSE);
        state.attempts = state.attempts.saturating_add(1);
        let until = Instant::now() + pause;
        while !state.closing {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.wake.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        !state.closing
    }

    /// The host is closing: the retry thread ends, failing groups are answered.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }
}

/// Starts the retry thread: while the store is down it calls `retry` (commit what is kept)
/// after each pause; it ends when the host closes.
pub(crate) fn spawn_retry(
    health: Arc<StoreHealth>,
    retry: impl Fn() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("turnstile-commit-retry".into())
        .spawn(move || {
            while health.next_retry() {
                retry();
            }
        })
        .map_err(|e| Error::io("starting the commit retry thread", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// New work is refused as unavailable (nothing written, try again) whatever began the
    /// outage, a commit whose outcome is unknown included, until a commit goes through.
    #[test]
    fn new_work_is_refused_as_unavailable_until_a_commit_goes_through() {
        let health = StoreHealth::default();
        health.check().expect("no outage");
        let lost = StoreError::Damaged { report: "no answer to COMMIT".into() };
        let unknown = Arc::new(StoreError::CommitUnknown { source: Box::new(lost) });
        assert!(!unknown.is_unavailable(), "the outcome is unknown, not the store unavailable");
        health.failed_with(unknown, false);
        let refused = health.check().expect_err("refused meanwhile");
        assert_eq!(refused.code(), "store_unavailable", "{}", refused.chain());
        health.committed();
        health.check().expect("taken again");
    }
}
