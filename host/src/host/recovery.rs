//! Taking a session back after a checkpoint of it could not be committed: the store refused it,
//! or could not tell whether it landed (the connection was lost at COMMIT and the transaction's
//! fate could not be asked). Nothing of that action was released, so the session is read back
//! from the store, as a restart would read it, and goes on from its last committed checkpoint —
//! or from the failed one, if it landed after all. Meanwhile its requests are answered
//! `session_recovering` (503, try again). One thread of its own does this, off the path of
//! actions, waiting while the store is unavailable. A session whose checkpoints are refused time
//! after time is given up after `ATTEMPTS` take-backs in this process: it stops, failed, its
//! watchers are told, and a restart resumes it.

use super::kernel::Kernel;
use super::lifecycle::Phase;
use crate::error::Error;
use crate::session::SessionId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Take-backs of one session in this process before it is given up.
const ATTEMPTS: u32 = 3;
/// How long a take-back the store could not answer waits before it is tried again.
const PAUSE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    /// Sessions to take back, with why their checkpoint failed.
    queue: VecDeque<(SessionId, String)>,
    /// Take-backs so far, by session.
    attempts: HashMap<SessionId, u32>,
    stopping: bool,
}

/// The sessions waiting to be taken back.
#[derive(Default)]
pub(crate) struct Recovery {
    state: Mutex<State>,
    changed: Condvar,
}

impl Recovery {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Session `id`'s checkpoint failed (`why`): take it back.
    pub(crate) fn push(&self, id: SessionId, why: String) {
        self.lock().queue.push_back((id, why));
        self.changed.notify_one();
    }

    /// Ends the thread (what is still queued resumes after a restart).
    pub(crate) fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// The next session to take back and whether it may be tried again; `None` once stopping.
    fn next(&self) -> Option<(SessionId, String, bool)> {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return None;
            }
            if let Some((id, why)) = state.queue.pop_front() {
                let attempts = state.attempts.entry(id).or_default();
                *attempts += 1;
                return Some((id, why, *attempts <= ATTEMPTS));
            }
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Puts a take-back that failed back, and waits a moment (less if stopping); one the store
    /// could not answer is not counted.
    fn again_later(&self, id: SessionId, why: String, counted: bool) {
        let mut state = self.lock();
        if !counted && let Some(attempts) = state.attempts.get_mut(&id) {
            *attempts -= 1;
        }
        state.queue.push_back((id, why));
        let _ = self.changed.wait_timeout_while(state, PAUSE, |s| !s.stopping);
    }
}

impl Kernel {
    /// Takes session `id` back from the store, if it is still waiting for that; `Err` if the
    /// store could not be read (or its code loaded), to be tried again.
    fn take_back_failed(&self, id: SessionId) -> Result<(), Error> {
        let (wait_seq, cancelling) = {
            let shard = self.sessions().shard(id);
            match shard.get(&id) {
                Some(entry) if entry.life.phase() == Phase::TakingBack => {
                    (entry.life.wait_seq(), entry.life.cancelling())
                }
                _ => return Ok(()),
            }
        };
        // Asked even while the store's health is in doubt: an unknown outcome leaves it so until
        // the next commit lands, and this read is what can settle it.
        let stored = self.store().session(id)?;
        // Nothing else moves a session being taken back: it is still as it was looked at.
        let Some(stored) = stored else {
            // Gone from the store (its tenant deleted meanwhile): gone here too.
            if let Some(entry) = super::sessions::release(&mut self.sessions().shard(id), id) {
                entry.tenant.close_session();
            }
            return Ok(());
        };
        let tenant = self.sessions().shard(id).get(&id).map(|entry| entry.tenant.clone());
        // Its timers may still fire: its waits are numbered on past theirs.
        super::resume::resume_session(self, stored, wait_seq + 1, &mut |hash| self.code(hash))?;
        // Counted open again by the resume: the life it replaced is no longer.
        if let Some(tenant) = tenant {
            tenant.close_session();
            // A cancel accepted while its action ran still stands.
            if cancelling
                && let Err(error) = self.cancel(tenant.name(), id)
                && !matches!(error, Error::SessionState { .. })
            {
                tracing::warn!(session = %id, error = %error.chain(), "a cancel accepted before the take-back was lost");
            }
        }
        tracing::info!(session = %id, "a session whose checkpoint failed was taken back from the store");
        Ok(())
    }

    /// Gives session `id` up: it stops here, failed, saying `why`.
    fn give_up(&self, id: SessionId, why: &str) {
        tracing::error!(session = %id, error = why, "a session's checkpoints keep failing: it stops until a restart");
        let mut shard = self.sessions().shard(id);
        let Some(entry) = shard.get_mut(&id) else { return };
        let effects = entry.life.give_up(why);
        let (tenant, app_ix) = (entry.tenant.clone(), entry.app_ix);
        drop(shard);
        self.carry_out(&tenant, app_ix, id, effects);
    }
}

/// Starts the thread that takes sessions back until the host stops.
pub(crate) fn spawn(kernel: Arc<Kernel>) -> Result<JoinHandle<()>, Error> {
    thread::Builder::new()
        .name("turnstile-recovery".into())
        .spawn(move || {
            while let Some((id, why, may_try)) = kernel.recovery().next() {
                if !may_try {
                    kernel.give_up(id, &why);
                    continue;
                }
                if let Err(error) = kernel.take_back_failed(id) {
                    tracing::warn!(session = %id, error = %error.chain(), "taking a session back failed: trying again");
                    let unavailable = matches!(&error, Error::Store(e) if e.is_unavailable());
                    kernel.recovery().again_later(id, why, !unavailable);
                }
            }
        })
        .map_err(|e| Error::io("starting the recovery thread", e))
}
