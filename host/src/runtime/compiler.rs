//! Compiling deployed modules, bounded: one compile per module hash at a time (a deploy of bytes
//! already being compiled waits for that compile rather than start another), at most `slots`
//! compiles at once, each on one thread (the engine compiles a module's functions serially), and
//! each given `timeout`. A deploy whose compile runs longer is refused `compile_timeout`, and so
//! is every later deploy of the same bytes, at once.
//!
//! Wasmtime can't stop a compile under way, so a timed-out compile runs to its end on its own
//! thread, holding its slot; the deploy caps checked before it (compile cost per function and per
//! module, `DeployLimits`) keep that end seconds away. Stopping it sooner would take a compile
//! process of its own.
//!
//! Stored modules loaded again (at start, or after an eviction) go through a compiler of their
//! own, with its own slots and no time limit: a hundred sessions of an evicted module load it
//! once, and no deploy (a tenant's compile bomb) can hold a slot they wait for.

use crate::app::{App, DeployError};
use crate::runtime::CompileSource;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What a compile produced, shared by every deploy that waited for it.
pub(crate) type Outcome = Result<(Arc<App>, CompileSource), DeployError>;

/// One compile under way, and the deploys waiting for it.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

#[derive(Default)]
struct FlightState {
    /// When the compile got its slot and began.
    began: Option<Instant>,
    outcome: Option<Outcome>,
}

impl Flight {
    fn begin(&self) {
        lock(&self.state).began = Some(Instant::now());
        self.changed.notify_all();
    }

    fn finish(&self, outcome: Outcome) {
        let mut state = lock(&self.state);
        if state.outcome.is_none() {
            state.outcome = Some(outcome);
        }
        self.changed.notify_all();
    }

    /// Waits for the outcome until the compile has run for `timeout` (the wait for a slot does
    /// not count; no timeout: until it comes); `None` if it has not come by then.
    fn wait(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = state.outcome.as_ref() {
                return Some(outcome.clone());
            }
            state = match (state.began, timeout) {
                (None, _) | (_, None) => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                (Some(began), Some(timeout)) => {
                    let left = (began + timeout).checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
                    self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

/// Bounds and single-flights the compiles of one runtime.
pub(crate) struct Compiler {
    /// Compile slots free.
    free: Mutex<usize>,
    freed: Condvar,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Module hashes whose compile ran out of time: refused at once from now on.
    timed_out: Mutex<HashSet<String>>,
    /// How long a compile may take (none: as long as it takes).
    timeout: Option<Duration>,
}

/// Holds a compile slot; frees it when dropped (on the compile's own thread, at its end).
struct Slot(Arc<Compiler>);

impl Drop for Slot {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Compiler {
    pub(crate) fn new(slots: usize, timeout: Option<Duration>) -> Compiler {
        Compiler {
            free: Mutex::new(slots.max(1)),
            freed: Condvar::new(),
            flights: Mutex::default(),
            timed_out: Mutex::default(),
            timeout,
        }
    }

    /// The compile of the module `hash` by `job`: this caller's own, or the one already under
    /// way; with a time limit, refused past it (and so are these bytes from then on).
    pub(crate) fn compile(self: &Arc<Self>, hash: &str, job: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
        let timed_out = |limit: Duration| DeployError::CompileTimeout { seconds: limit.as_secs().max(1) };
        if let Some(limit) = self.timeout
            && lock(&self.timed_out).contains(hash)
        {
            return Err(timed_out(limit));
        }
        let (flight, lead) = {
            let mut flights = lock(&self.flights);
            match flights.get(hash) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    flights.insert(hash.to_owned(), flight.clone());
                    (flight, true)
                }
            }
        };
        if lead {
            self.start(hash, &flight, job);
        }
        match (flight.wait(self.timeout), self.timeout) {
            (Some(outcome), _) => outcome,
            (None, limit) => {
                let limit = limit.unwrap_or_default();
                tracing::warn!(module = hash, seconds = limit.as_secs(), "a compile ran out of time");
                lock(&self.timed_out).insert(hash.to_owned());
                flight.finish(Err(timed_out(limit)));
                Err(timed_out(limit))
            }
        }
    }

    /// Takes a slot (waiting for one, at most `timeout`) and runs `job` on a thread of its own.
    fn start(self: &Arc<Self>, hash: &str, flight: &Arc<Flight>, job: impl FnOnce() -> Outcome + Send + 'static) {
        {
            // A slot within the time one compile may take, or a refusal: a deploy never waits
            // without end behind compiles that ran out of time and still hold their slots.
            let deadline = self.timeout.map(|timeout| Instant::now() + timeout);
            let mut free = lock(&self.free);
            while *free == 0 {
                let Some(deadline) = deadline else {
                    free = self.freed.wait(free).unwrap_or_else(PoisonError::into_inner);
                    continue;
                };
                let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                    drop(free);
                    flight.finish(Err(DeployError::CompileBusy));
                    lock(&self.flights).remove(hash);
                    return;
                };
                free = self.freed.wait_timeout(free, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            *free -= 1;
        }
        let slot = Slot(self.clone());
        let (compiler, key, finished) = (self.clone(), hash.to_owned(), flight.clone());
        let run = move || {
            let _slot = slot;
            finished.begin();
            finished.finish(job());
            lock(&compiler.flights).remove(&key);
        };
        if let Err(error) = std::thread::Builder::new().name("turnstile-compile".into()).spawn(run) {
            // The closure went with the error, and its slot with it.
            flight.finish(Err(DeployError::Compile(format!("could not start a compile thread: {error}"))));
            lock(&self.flights).remove(hash);
        }
    }
}
