//! Group commit of everything a session writes — new sessions, customer events and checkpoints —
//! leader/follower style, with no thread of its own.
//!
//! A write is queued (under its session's lock, so one session's writes reach the store in the
//! order they happened). Whoever finds no commit under way becomes the leader: it takes the
//! whole queue, commits it as one batch (one transaction, one fsync), has the results carried
//! out, and goes on while writes keep arriving. A worker that completed an action queues its
//! checkpoint and goes straight back to running actions if someone else leads; a caller that
//! needs its write durable before it answers (a new session, an event: acknowledged only once
//! committed) waits for its ticket, leading commits itself when no one else does. A leader whose
//! own write is done hands over to such a waiter rather than keep the caller it serves waiting.
//!
//! A dedicated writer thread would add a thread hop to every action; on a loaded machine that hop
//! is a scheduling delay, during which the session is not ready to run.

use crate::error::Error;
use crate::store::{Store, StoreError, Write, Written};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// A write waiting for its commit, and the ticket of the caller waiting for it (if any).
struct Queued {
    write: Write,
    ticket: Option<Arc<Ticket>>,
}

/// Where a caller waiting for its write finds the answer.
#[derive(Default)]
pub(crate) struct Ticket {
    outcome: Mutex<Option<Result<Written, Error>>>,
}

impl Ticket {
    /// Answers the caller.
    pub(crate) fn settle(&self, outcome: Result<Written, Error>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }

    fn take(&self) -> Option<Result<Written, Error>> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn is_settled(&self) -> bool {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    committing: bool,
    /// Callers waiting for a ticket (they can lead).
    waiting: usize,
}

/// The writes waiting for the next group commit.
#[derive(Default)]
pub(crate) struct CommitQueue {
    state: Mutex<State>,
    /// Signalled after every group (tickets settled, leadership free).
    done: Condvar,
}

/// What carries out a committed group's results: every write's effects, every ticket settled.
pub(crate) type Apply<'a> = &'a dyn Fn(Vec<Write>, Vec<Option<Arc<Ticket>>>, Result<Vec<Written>, StoreError>);

impl CommitQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a write (callers hold the session's lock).
    pub(crate) fn enqueue(&self, write: Write, ticket: Option<Arc<Ticket>>) {
        self.lock().queue.push(Queued { write, ticket });
    }

    /// Whether nothing is queued or being committed.
    pub(crate) fn is_idle(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && !state.committing
    }

    /// Commits what is queued unless another thread already is (a worker after its action).
    pub(crate) fn drive(&self, store: &dyn Store, apply: Apply<'_>) {
        drop(self.lead(self.lock(), store, apply, None));
    }

    /// Waits until `ticket` is settled, leading commits meanwhile whenever no one else does.
    pub(crate) fn wait(&self, ticket: &Ticket, store: &dyn Store, apply: Apply<'_>) -> Result<Written, Error> {
        let mut state = self.lock();
        loop {
            state = self.lead(state, store, apply, Some(ticket));
            if let Some(outcome) = ticket.take() {
                return outcome;
            }
            state.waiting += 1;
            state = self.done.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
    }

    /// Leads commits while writes are queued and no one else commits; a leader serving a caller
    /// whose write is done hands over to a waiting caller.
    fn lead<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        store: &dyn Store,
        apply: Apply<'_>,
        mine: Option<&Ticket>,
    ) -> MutexGuard<'a, State> {
        while !state.committing && !state.queue.is_empty() {
            state.committing = true;
            let group = std::mem::take(&mut state.queue);
            drop(state);
            let (writes, tickets): (Vec<Write>, Vec<Option<Arc<Ticket>>>) =
                group.into_iter().map(|q| (q.write, q.ticket)).unzip();
            let result = store.commit(&writes);
            apply(writes, tickets, result);
            state = self.lock();
            state.committing = false;
            self.done.notify_all();
            if mine.is_some_and(Ticket::is_settled) && state.waiting > 0 {
                break;
            }
        }
        state
    }
}
