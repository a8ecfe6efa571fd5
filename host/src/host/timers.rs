//! Everything that must happen at a time: wait timeouts of sessions and the wake-up of sleeping
//! actions. One ordered map and one thread for the whole host, not a task per session, so
//! 100 000 waiting sessions cost an entry each. The workers also fire what is due between their
//! actions (one atomic read when nothing is): on a saturated pool the timer thread would wait
//! for a core, and timers would fire late, in bursts.
//!
//! A wait's timer is never cancelled in place: each session counts its waits, and a timer whose
//! count no longer matches (the customer answered first) is ignored when it comes due.

use crate::error::Error;
use crate::sandbox::ActionTask;
use crate::scheduler::Dispatch;
use crate::session::SessionId;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// Something due at a time.
pub(crate) enum Due {
    /// Session `session`'s wait number `seq` times out.
    Wait { session: SessionId, seq: u64 },
    /// A sleeping action wakes.
    Wake(Dispatch, ActionTask),
}

#[derive(Default)]
struct State {
    /// By due time (and an arrival number, to keep equal times apart).
    due: BTreeMap<(Instant, u64), Due>,
    arrivals: u64,
}

/// The timers of a host.
pub(crate) struct Timers {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    /// When the earliest timer is due, in ns since `epoch()` (`u64::MAX`: none).
    earliest: AtomicU64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            state: Mutex::default(),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            earliest: AtomicU64::new(u64::MAX),
        }
    }
}

/// The instant timers count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms `due` at `at`.
    pub(crate) fn arm(&self, at: Instant, due: Due) {
        let mut state = self.lock();
        state.arrivals += 1;
        let arrival = state.arrivals;
        let earliest = state.due.first_key_value().is_none_or(|((first, _), _)| at < *first);
        state.due.insert((at, arrival), due);
        if earliest {
            self.earliest.store(nanos(at), Ordering::Release);
        }
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Takes what is due at `now`, oldest first, and notes when the next one is.
    fn take_due(&self, state: &mut State, now: Instant) -> Vec<Due> {
        let mut fired = Vec::new();
        while let Some(entry) = state.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fired.push(entry.remove());
        }
        let next = state.due.first_key_value().map_or(u64::MAX, |((at, _), _)| nanos(*at));
        self.earliest.store(next, Ordering::Release);
        fired
    }

    /// Fires what is due now, if anything (cheap when nothing is: one atomic read). For workers,
    /// between their actions.
    pub(crate) fn fire_due(&self, fire: impl Fn(Due)) {
        let now = Instant::now();
        if self.earliest.load(Ordering::Acquire) > nanos(now) {
            return;
        }
        let fired = self.take_due(&mut self.lock(), now);
        fired.into_iter().for_each(fire);
    }

    /// Stops the timer thread.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.lock());
        self.changed.notify_all();
    }

    /// Starts the timer thread: it sleeps until the earliest due time (or until a sooner one is
    /// armed) and hands what came due to `fire`, outside its lock.
    pub(crate) fn spawn(self: &Arc<Self>, fire: impl Fn(Due) + Send + 'static) -> Result<JoinHandle<()>, Error> {
        let timers = self.clone();
        thread::Builder::new()
            .name("turnstile-timers".into())
            .spawn(move || {
                let mut state = timers.lock();
                loop {
                    if timers.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let now = Instant::now();
                    let fired = timers.take_due(&mut state, now);
                    if !fired.is_empty() {
                        drop(state);
                        fired.into_iter().for_each(&fire);
                        state = timers.lock();
                        continue;
                    }
                    state = match state.due.first_key_value().map(|((at, _), _)| *at) {
                        Some(at) => {
                            let wait = at.saturating_duration_since(now);
                            timers.changed.wait_timeout(state, wait).unwrap_or_else(PoisonError::into_inner).0
                        }
                        None => timers.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                    };
                }
            })
            .map_err(|e| Error::io("starting the timer thread", e))
    }
}
