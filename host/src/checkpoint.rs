//! Group commit of checkpoints, leader/follower style, with no thread of its own.
//!
//! A worker that completes an action queues its checkpoint. If no commit is under way, that worker
//! becomes the committer: it takes the whole queue, commits it as one group (one transaction, so
//! one fsync, for every action that completed meanwhile), releases each action's outputs and
//! moves each session on, and repeats while checkpoints keep arriving. The other workers queue
//! theirs and go straight back to running actions. A dedicated writer thread would add a thread
//! hop to every action; on a loaded machine that hop is a scheduling delay, and a session waiting
//! on it is not ready to run, which hands its share of the pool to tenants with long actions.
//!
//! A session waits for its checkpoint — nothing of it is scheduled until the checkpoint has
//! landed — so an output is never seen before the state that produced it is durable.

use crate::host::{Shared, State};
use std::sync::MutexGuard;
use std::time::Instant;

/// Commits queued checkpoints unless another worker already is; returns the lock.
pub(crate) fn commit_queued<'a>(shared: &'a Shared, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    while !state.commit_in_progress && !state.commit_queue.is_empty() {
        state.commit_in_progress = true;
        let group = std::mem::take(&mut state.commit_queue);
        drop(state);
        let result = shared.store.commit(&group);
        state = shared.lock();
        state.commit_in_progress = false;
        let now = Instant::now();
        match result {
            Ok(()) => {
                for checkpoint in group {
                    state.committed(checkpoint, now, shared);
                }
            }
            Err(error) => {
                eprintln!("turnstile: committing {} checkpoints failed: {error}", group.len());
                for checkpoint in group {
                    state.not_committed(checkpoint, &error);
                }
            }
        }
    }
    state
}
