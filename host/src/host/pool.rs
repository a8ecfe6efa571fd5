//! The shared pool of resources: worker threads, each running one action (or one slice of a
//! long one) at a time in a fresh instance. A worker takes the dispatcher's next pick, runs it
//! with no lock held, and hands the outcome back: done, preempted, or asleep.

use super::dispatch::Work;
use super::kernel::Kernel;
use super::timers::Due;
use crate::error::Error;
use crate::sandbox::Usage;
use crate::sandbox::{ActionTask, Attempt, Slice};
use crate::scheduler::Dispatch;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// Starts worker `n`.
pub(crate) fn spawn_worker(core: Arc<Kernel>, n: usize) -> Result<JoinHandle<()>, Error> {
    thread::Builder::new()
        .name(format!("turnstile-worker-{n}"))
        .spawn(move || work(&core))
        .map_err(|e| Error::io("starting a pool worker", e))
}

fn work(core: &Kernel) {
    while let Some(work) = core.next_work() {
        match work {
            Work::Run(dispatch) => match core.prepare(&dispatch) {
                None => core.finish(dispatch, None),
                Some(call) => match core.runtime().attempt(call) {
                    Attempt::Done(outcome) => core.finish(dispatch, Some(outcome)),
                    Attempt::Long(call, spent) => {
                        call.app.ran_long();
                        let task = core.runtime().start_task(call, spent);
                        run_slice(core, dispatch, task);
                    }
                },
            },
            Work::Resume(dispatch, task) => run_slice(core, dispatch, task),
        }
        core.fire_due_timers();
    }
}

/// Runs a task slice after slice while no other action waits for a worker, and hands it back
/// according to how it ended: done, preempted (someone waits), or asleep.
fn run_slice(core: &Kernel, dispatch: Dispatch, mut task: ActionTask) {
    let mut ran = Usage::default();
    loop {
        match task.run_slice() {
            Slice::Done(outcome) => {
                if outcome.usage.fuel < core.runtime().attempt_fuel() {
                    task.app().ran_short();
                }
                return core.finish(dispatch, Some(outcome));
            }
            Slice::Yielded(slice) => {
                ran = ran.plus(slice);
                core.fire_due_timers();
                if core.dispatcher().has_waiting() {
                    return core.suspend(dispatch, task, &ran);
                }
            }
            Slice::Sleeping { until, slice } => return core.sleep(dispatch, task, until, &ran.plus(slice)),
        }
    }
}

/// What a worker hands back besides a finished action.
impl Kernel {
    /// A preempted task goes back to its app.
    fn suspend(&self, dispatch: Dispatch, task: ActionTask, slice: &Usage) {
        self.dispatcher().suspend(dispatch, task, slice);
    }

    /// A task sleeps until `until`, off the workers.
    fn sleep(&self, mut dispatch: Dispatch, task: ActionTask, until: Instant, slice: &Usage) {
        self.dispatcher().sleep(&mut dispatch, slice);
        self.timers().arm(until, Due::Wake(dispatch, task));
    }

    /// Fires the timers that are due (a worker, between its actions).
    fn fire_due_timers(&self) {
        self.timers().fire_due(|due| self.fire(due));
    }
}
