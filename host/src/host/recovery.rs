//! Taking a session back after a checkpoint of it could not be committed: the store refused it,
//! or could not tell whether it landed (the connection was lost at COMMIT and the transaction's
//! fate could not be asked), or a new session's creation had such an unknown outcome. Nothing
//! of that action was released, so the session is read back from the store, as a restart would
//! read it, and goes on from its last committed checkpoint — or from the failed one, if it
//! landed after all (a creation that did not land is dropped). Meanwhile its requests are
//! answered `session_recovering` (503, try again). One thread of its own does this, off the
//! path of actions: it waits for the appends of events accepted for the session to land first
//! (the store's inbox then holds them), and while the store is unavailable. A session whose
//! checkpoint fails again after `lifecycle::TAKE_BACKS` take-backs in a row, or that cannot be
//! read back, is given up: it stops, failed, its watchers are told, and a restart resumes it. A
//! creation that did not land tells its watchers so.

use super::bus::SessionEvent;
use super::kernel::Kernel;
use super::lifecycle::Phase;
use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::session::{SessionId, Status};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a take-back that must wait (for the store, or for appends on their way) waits
/// before it is tried again.
const PAUSE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct State {
    /// Sessions to take back, with why their checkpoint failed.
    queue: VecDeque<(SessionId, String)>,
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

    /// The next session to take back; `None` once stopping.
    fn next(&self) -> Option<(SessionId, String)> {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return None;
            }
            if let Some(next) = state.queue.pop_front() {
                return Some(next);
            }
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Puts a take-back that must wait back, and waits a moment (less if stopping).
    fn again_later(&self, id: SessionId, why: String) {
        let mut state = self.lock();
        state.queue.push_back((id, why));
        let _ = self.changed.wait_timeout_while(state, PAUSE, |s| !s.stopping);
    }
}

/// What became of one try.
enum TakeBack {
    /// Done (or no longer wanted).
    Done,
    /// Not yet: appends of its events are on their way, or the store is unavailable.
    Later,
}

impl Kernel {
    /// Takes session `id` back from the store, if it is still waiting for that.
    fn take_back_failed(&self, id: SessionId) -> Result<TakeBack, Error> {
        let inherited = {
            let shard = self.sessions().shard(id);
            match shard.get(&id) {
                // Its events' appends land first: the store's inbox then holds every one of them.
                Some(entry) if entry.life.phase() == Phase::TakingBack && entry.life.appending() => {
                    return Ok(TakeBack::Later);
                }
                Some(entry) if entry.life.phase() == Phase::TakingBack => entry.life.inherited(),
                _ => return Ok(TakeBack::Done),
            }
        };
        // Asked even while the store's health is in doubt: an unknown outcome leaves it so until
        // the next commit lands, and this read is what can settle it.
        let stored = match self.store().session(id) {
            Err(error) if error.is_unavailable() => return Ok(TakeBack::Later),
            stored => stored?,
        };
        // Nothing else moves a session being taken back: it is still as it was looked at.
        let Some(stored) = stored else {
            // A creation that did not land (or its tenant deleted meanwhile): gone here too, and
            // whoever watched it is told.
            if let Some(entry) = super::sessions::release(&mut self.sessions().shard(id), id) {
                entry.tenant.close_session();
                if self.bus().wants(id) {
                    let failure = Failure::new(FailureKind::Trap, "", "its creation did not land: start it again");
                    self.bus().publish(SessionEvent {
                        session: id,
                        tenant: entry.tenant.name().to_string(),
                        status: Status::Failed { failure },
                        outputs: Vec::new(),
                        first_output: 0,
                    });
                }
            }
            return Ok(TakeBack::Done);
        };
        let tenant = self.sessions().shard(id).get(&id).map(|entry| entry.tenant.clone());
        // Its life here is no longer counted open (the resume counts the one read back): closed
        // first, so that no start meanwhile is refused for a quota one session fills twice.
        if let Some(tenant) = &tenant {
            tenant.close_session();
        }
        let resumed = super::resume::resume_session(self, stored, inherited, &mut |hash| self.code(hash));
        if resumed.is_err()
            && let Some(tenant) = &tenant
        {
            tenant.resumed_open();
        }
        match resumed {
            Err(Error::Store(error)) if error.is_unavailable() => return Ok(TakeBack::Later),
            resumed => resumed?,
        }
        tracing::info!(session = %id, "a session whose checkpoint failed was taken back from the store");
        Ok(TakeBack::Done)
    }

    /// Gives session `id` up: it stops here, failed, saying `why`.
    fn give_up(&self, id: SessionId, why: &str) {
        tracing::error!(session = %id, error = why, "a session could not be taken back: it stops until a restart");
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
            while let Some((id, why)) = kernel.recovery().next() {
                match kernel.take_back_failed(id) {
                    Ok(TakeBack::Done) => {}
                    Ok(TakeBack::Later) => kernel.recovery().again_later(id, why),
                    Err(error) => kernel.give_up(id, &format!("{why}; reading it back failed: {}", error.chain())),
                }
            }
        })
        .map_err(|e| Error::io("starting the recovery thread", e))
}
