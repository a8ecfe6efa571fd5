//! Compiling deployed modules, bounded: one compile per module hash at a time (a deploy of bytes
//! already being compiled waits for that compile rather than start another), at most `slots`
//! compiles at once, each on one thread (the engine compiles a module's functions serially), and
//! each given `timeout`.
//!
//! A deploy's compile runs at background priority (`nice` 10): on a host busy with actions it
//! takes the CPU they leave, so a tenant deploying compile after compile slows other tenants'
//! customers by little. Its time is therefore judged by the CPU it had, not by the clock: a
//! compile that has had `timeout` of CPU is over its time — refused `compile_timeout`, and so is
//! every later deploy of the same bytes, at once — and a deploy waits for that, or for its
//! compile's end, at most [`PATIENCE`] × `timeout` on the clock: a compile still short of its CPU
//! then was held back by actions; it goes on, and its deploy is answered `compile_delayed`, to be
//! sent again (once the compile has ended, it finds its result in the compile cache). Stored
//! modules loaded again compile at normal priority: sessions wait for them.
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
use crate::sandbox::thread_cpu_time;
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
    /// The thread it runs on.
    thread: Option<rustix::process::Pid>,
    outcome: Option<Outcome>,
}

impl Flight {
    fn begin(&self) {
        let mut state = lock(&self.state);
        state.began = Some(Instant::now());
        state.thread = Some(rustix::thread::gettid());
        self.changed.notify_all();
    }

    fn finish(&self, outcome: Outcome) {
        let mut state = lock(&self.state);
        if state.outcome.is_none() {
            state.outcome = Some(outcome);
        }
        self.changed.notify_all();
    }

    /// Waits for the outcome, or, with a `limit`, until the compile has had that much CPU or
    /// has run [`PATIENCE`] times as long on the clock (the wait for a slot counts for neither).
    fn wait(&self, limit: Option<Duration>) -> Waited {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = state.outcome.as_ref() {
                return Waited::Done(outcome.clone());
            }
            state = match (state.began, limit) {
                (None, _) | (_, None) => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                (Some(began), Some(limit)) => {
                    let ran = began.elapsed();
                    // Where the system does not say, the clock stands in for the CPU.
                    let had = state.thread.and_then(cpu_time).unwrap_or(ran);
                    if had >= limit {
                        return Waited::OverTime { had };
                    }
                    let Some(patience) = (limit * PATIENCE).checked_sub(ran).filter(|d| !d.is_zero()) else {
                        return Waited::HeldBack { had };
                    };
                    // Its CPU time grows no faster than the clock: no need to look sooner.
                    let next = (limit - had).min(patience);
                    self.changed.wait_timeout(state, next).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

fn timed_out(limit: Duration) -> DeployError {
    DeployError::CompileTimeout { seconds: limit.as_secs().max(1) }
}

/// How a wait for a compile ended.
enum Waited {
    Done(Outcome),
    /// It has had its time limit of CPU.
    OverTime {
        had: Duration,
    },
    /// It ran [`PATIENCE`] times its limit on the clock with less CPU than that.
    HeldBack {
        had: Duration,
    },
}

/// How many times its CPU limit a deploy waits on the clock for a compile held back by actions.
const PATIENCE: u32 = 3;

/// The CPU time the thread `thread` of this process has had, if the system says (Linux's
/// per-thread scheduler statistics).
fn cpu_time(thread: rustix::process::Pid) -> Option<Duration> {
    let stats = std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", thread.as_raw_nonzero())).ok()?;
    stats.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
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
    /// Whether its compiles run at background priority.
    background: bool,
}

/// The `nice` value of a deploy's compile thread: a CFS weight of 110 against a worker's 1024,
/// so a compile beside two busy workers has about a tenth of a core.
const BACKGROUND_NICE: i32 = 10;

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
    /// The compiler of deploys: `slots` at once, each given `timeout`, at background priority.
    pub(crate) fn deploys(slots: usize, timeout: Duration) -> Compiler {
        Compiler::new(slots, Some(timeout), true)
    }

    /// The compiler of stored modules loaded again: `slots` at once, each as long as it takes.
    pub(crate) fn loads(slots: usize) -> Compiler {
        Compiler::new(slots, None, false)
    }

    fn new(slots: usize, timeout: Option<Duration>, background: bool) -> Compiler {
        Compiler {
            free: Mutex::new(slots.max(1)),
            freed: Condvar::new(),
            flights: Mutex::default(),
            timed_out: Mutex::default(),
            timeout,
            background,
        }
    }

    /// Why the module `hash` is refused without a compile, if it is: its compile ran out of
    /// time before. Asked before anything compiled is looked up: a compile over its time still
    /// runs to its end, and what it made is kept, but it is never deployed.
    pub(crate) fn refusal(&self, hash: &str) -> Option<DeployError> {
        let limit = self.timeout?;
        lock(&self.timed_out).contains(hash).then(|| timed_out(limit))
    }

    /// The compile of the module `hash` by `job`: this caller's own, or the one already under
    /// way; with a time limit, refused past it (and so are these bytes from then on).
    pub(crate) fn compile(self: &Arc<Self>, hash: &str, job: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
        if let Some(refused) = self.refusal(hash) {
            return Err(refused);
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
        let limit = self.timeout.unwrap_or_default();
        match flight.wait(self.timeout) {
            Waited::Done(outcome) => outcome,
            Waited::HeldBack { had } => {
                tracing::info!(
                    module = hash,
                    ?had,
                    "a compile held back by actions: its deploy is answered; it goes on"
                );
                Err(DeployError::CompileDelayed)
            }
            Waited::OverTime { had } => {
                tracing::warn!(module = hash, seconds = limit.as_secs(), ?had, "a compile ran out of time");
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
            if compiler.background
                && let Err(error) =
                    rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE)
            {
                tracing::warn!(%error, "could not lower a compile thread's priority");
            }
            let before = thread_cpu_time();
            finished.begin();
            finished.finish(job());
            if let Some(limit) = compiler.timeout
                && thread_cpu_time().saturating_sub(before) > limit
            {
                lock(&compiler.timed_out).insert(key.clone());
            }
            lock(&compiler.flights).remove(&key);
        };
        if let Err(error) = std::thread::Builder::new().name("turnstile-compile".into()).spawn(run) {
            // The closure went with the error, and its slot with it.
            flight.finish(Err(DeployError::Compile(format!("could not start a compile thread: {error}"))));
            lock(&self.flights).remove(hash);
        }
    }
}
