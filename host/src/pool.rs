//! The shared pool of resources: worker threads, each running one action at a time in a fresh
//! instance. A worker takes the scheduler's next pick, runs it outside the host's lock, and books
//! the outcome.

use crate::error::Error;
use crate::host::Shared;
use crate::scheduler::Pick;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// Starts worker `n`.
pub(crate) fn spawn_worker(shared: Arc<Shared>, n: usize) -> Result<JoinHandle<()>, Error> {
    thread::Builder::new()
        .name(format!("turnstile-worker-{n}"))
        .spawn(move || work(&shared))
        .map_err(|e| Error::io("starting a pool worker", e))
}

fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.shutting_down {
            return;
        }
        let now = Instant::now();
        state = match state.scheduler.pick(now) {
            Pick::Run(dispatch) => {
                let job = state.prepare(&dispatch);
                drop(state);
                let outcome = job.map(|job| {
                    shared.runtime.run_action(
                        &job.app,
                        &job.action,
                        job.input,
                        job.state,
                        job.kv,
                        &job.limits,
                        job.fuel,
                    )
                });
                let mut state = shared.lock();
                state.finish(&dispatch, outcome, Instant::now());
                let state = crate::checkpoint::commit_queued(shared, state);
                // More runnable work than this worker can take next: wake another.
                if state.scheduler.pending_total() > 1 {
                    shared.work.notify_one();
                }
                state
            }
            Pick::WaitUntil(at) => {
                shared.work.wait_timeout(state, at.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0
            }
            Pick::Idle => shared.work.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
