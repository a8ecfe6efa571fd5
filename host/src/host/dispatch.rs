//! The one global lock on the hot path: the scheduler, and the condition the workers wait on.
//! Every call here is O(1) bookkeeping (a pick scans only the few tenants ahead of the first
//! that may run); nothing runs, allocates a sandbox, touches the store or sends on a channel
//! while it is held.

use crate::error::QueueFull;
use crate::runtime::Preemption;
use crate::sandbox::{ActionTask, Usage};
use crate::scheduler::AppIx;
use crate::scheduler::{Bounds, Dispatch, Pick, Scheduler};
use crate::session::SessionId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// What a worker is given to do.
pub(crate) enum Work {
    /// Start this action.
    Run(Dispatch),
    /// Resume this preempted (or woken) action.
    Resume(Dispatch, ActionTask),
}

/// The scheduler behind its lock, and the workers' wake-up.
pub(crate) struct Dispatcher {
    scheduler: Mutex<Scheduler<ActionTask>>,
    work: Condvar,
    stopping: AtomicBool,
    /// Actions waiting for a worker, as of the last change: read without the lock by a worker
    /// deciding whether its preempted task should hand over or simply go on.
    waiting: AtomicUsize,
    /// Workers waiting on `work`: changed and read only under the lock, so a change of work
    /// wakes a worker only when one sleeps (a condvar's notify is a system call even when no
    /// one waits, and the saturated hot path made two or three an action).
    idle: AtomicUsize,
    preemption: Preemption,
}

/// The dispatcher's lock, which publishes the waiting count when it is let go.
struct Locked<'a> {
    scheduler: MutexGuard<'a, Scheduler<ActionTask>>,
    dispatcher: &'a Dispatcher,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Scheduler<ActionTask>;
    fn deref(&self) -> &Self::Target {
        &self.scheduler
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.scheduler
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.dispatcher.preemption.publish(self.scheduler.waiting(), &self.dispatcher.waiting);
    }
}

impl Dispatcher {
    pub(crate) fn new(bounds: Bounds, preemption: Preemption) -> Dispatcher {
        Dispatcher {
            scheduler: Mutex::new(Scheduler::new(bounds)),
            work: Condvar::new(),
            stopping: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            preemption,
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked { scheduler: self.scheduler.lock().unwrap_or_else(PoisonError::into_inner), dispatcher: self }
    }

    /// Whether any action waits for a worker (without taking the lock).
    pub(crate) fn has_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Runs `f` on the scheduler, under its lock (for tenants' and apps' bookkeeping and reads).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Scheduler<ActionTask>) -> R) -> R {
        f(&mut self.lock())
    }

    /// Blocks until there is something to run, or the host stops (`None`).
    pub(crate) fn next(&self) -> Option<Work> {
        let mut scheduler = self.scheduler.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return None;
            }
            let now = Instant::now();
            let picked = scheduler.pick(now);
            self.preemption.publish(scheduler.waiting(), &self.waiting);
            self.idle.fetch_add(1, Ordering::Relaxed);
            scheduler = match picked {
                Pick::Run(dispatch) => {
                    self.idle.fetch_sub(1, Ordering::Relaxed);
                    return Some(Work::Run(dispatch));
                }
                Pick::Resume(dispatch, task) => {
                    self.idle.fetch_sub(1, Ordering::Relaxed);
                    return Some(Work::Resume(dispatch, task));
                }
                Pick::WaitUntil(at) => {
                    self.work
                        .wait_timeout(scheduler, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                Pick::Idle => self.work.wait(scheduler).unwrap_or_else(|e| e.into_inner()),
            };
            self.idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether one more new action fits the app's pending queue and the host's.
    pub(crate) fn has_room(&self, app: AppIx) -> Result<(), QueueFull> {
        self.lock().has_room(app)
    }

    /// Changes the scheduler under its lock, then wakes a worker if one sleeps (after the lock
    /// is let go, so the woken worker does not wait for it) and `wake` says the change may have
    /// made work runnable.
    fn change(&self, f: impl FnOnce(&mut Scheduler<ActionTask>) -> bool) {
        let mut scheduler = self.lock();
        let wake = f(&mut scheduler) && self.idle.load(Ordering::Relaxed) > 0;
        drop(scheduler);
        if wake {
            self.work.notify_one();
        }
    }

    /// Queues a session's next action and wakes a worker.
    pub(crate) fn push(&self, app: AppIx, session: SessionId) {
        self.change(|s| {
            s.push(app, session, Instant::now());
            true
        });
    }

    /// A preempted action goes back to its app.
    pub(crate) fn suspend(&self, dispatch: Dispatch, task: ActionTask, slice: &Usage) {
        self.change(|s| {
            s.suspend(dispatch, task, slice);
            true
        });
    }

    /// An action went to sleep: it keeps its place, off the workers.
    pub(crate) fn sleep(&self, dispatch: &mut Dispatch, slice: &Usage) {
        self.change(|s| {
            s.sleep(dispatch, slice);
            true
        });
    }

    /// A sleeping action is due.
    pub(crate) fn wake(&self, dispatch: Dispatch, task: ActionTask) {
        self.change(|s| {
            s.wake(dispatch, task);
            true
        });
    }

    /// An action completed: its slot in the action list is released first, so the app's next
    /// action may start while this one's checkpoint commits.
    pub(crate) fn complete(&self, dispatch: Dispatch, total: &Usage) {
        self.change(|s| {
            s.complete(dispatch, total);
            s.pending_total() > 0
        });
    }

    /// Wakes every worker (a policy changed: something may have become runnable).
    pub(crate) fn wake_all(&self) {
        self.work.notify_all();
    }

    /// Stops handing out work: workers return from [`Dispatcher::next`].
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        // Taking the lock orders the flag before any worker's next wait.
        drop(self.lock());
        self.work.notify_all();
    }
}
