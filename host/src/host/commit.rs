//! Group commit of everything a session writes — new sessions, customer events and checkpoints —
//! leader/follower style, with no thread of its own.
//!
//! A write is queued (under its session's lock, so one session's writes reach the store in the
//! order they happened). Whoever finds no commit under way becomes the leader: it takes the
//! whole queue, commits it as one batch (one transaction, one fsync), has the results carried
//! out, and goes on while writes keep arriving. A worker that completed an action queues its
//! checkpoint and goes straight back to running actions if someone else leads; a caller that
//! needs its write durable before it answers (a new session, an event: acknowledged only once
//! committed) waits for its ticket. A leader hands over to a waiting caller as soon as it may (a
//! worker at once, a caller once its own write is done), waking that one caller only: every
//! waiter sleeps on its own ticket, so a group commit wakes the callers it answered and no more.
//! A caller whose write is done and who finds no one to hand over to leads on only until the next
//! worker comes by and relieves it: under a steady load the queue never empties, and a caller
//! (an HTTP request) must not be kept leading for as long as the load lasts.
//!
//! A dedicated writer thread would add a thread hop to every action; on a loaded machine that hop
//! is a scheduling delay, during which the session is not ready to run.
//!
//! When the store is unavailable (see `health.rs`) a failed group's creations and events, and
//! those queued behind it, are answered with the outage at once; its checkpoints go back to the
//! head of the queue, in order, for the retry thread, and workers stop leading until the store
//! takes writes again.

use super::health::StoreHealth;
use crate::error::Error;
use crate::metrics::CommitStats;
use crate::store::{Store, StoreError, Write, Written};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Where a caller waiting for its write learns the outcome (or that it is to lead).
#[derive(Default)]
pub(crate) struct Ticket {
    state: Mutex<TicketState>,
    changed: Condvar,
}

#[derive(Default)]
enum TicketState {
    #[default]
    Waiting,
    /// The previous leader handed over: this caller leads the next group.
    Lead,
    Done(Result<Written, Error>),
    /// The caller has its answer and is gone.
    Taken,
}

impl Ticket {
    fn lock(&self) -> MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the caller.
    pub(crate) fn settle(&self, outcome: Result<Written, Error>) {
        *self.lock() = TicketState::Done(outcome);
        self.changed.notify_one();
    }

    /// Sleeps until it is no longer waiting: answered, or asked to lead.
    fn await_turn(&self) -> MutexGuard<'_, TicketState> {
        let mut state = self.lock();
        while matches!(*state, TicketState::Waiting) {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state
    }

    fn is_settled(&self) -> bool {
        matches!(*self.lock(), TicketState::Done(_) | TicketState::Taken)
    }

    /// Asks this caller to lead, unless it has its answer already; true if it will.
    fn hand_over(&self) -> bool {
        let mut state = self.lock();
        if matches!(*state, TicketState::Waiting) {
            *state = TicketState::Lead;
            self.changed.notify_one();
            true
        } else {
            false
        }
    }
}

/// A write waiting for its commit, and the ticket of the caller waiting for it (if any).
struct Queued {
    write: Write,
    ticket: Option<Arc<Ticket>>,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    committing: bool,
    /// Callers asleep on their tickets, oldest first (they can lead).
    waiters: VecDeque<Arc<Ticket>>,
    /// A caller leads with its own write done and writes still queued: the next worker to come
    /// by takes over, so that a caller is never kept leading for as long as the load lasts.
    relief_wanted: bool,
    /// The worker waiting to take over from such a caller.
    relief: Option<Arc<Ticket>>,
}

/// The writes waiting for the next group commit.
pub(crate) struct CommitQueue {
    state: Mutex<State>,
    health: Arc<StoreHealth>,
    /// Groups committed, their writes and latency (for the metrics).
    stats: Mutex<CommitStats>,
}

/// What carries out a committed group's results: every write's effects, every ticket settled.
pub(crate) type Apply<'a> = &'a dyn Fn(Vec<Write>, Vec<Option<Arc<Ticket>>>, Vec<Result<Written, Error>>);

/// Commits a group as one transaction; if that fails, each write on its own, so that one write
/// the store refuses (a full quota, a value it can't take) fails only its own session, not every
/// tenant's whose writes happened to share its group (but never a group that may have landed:
/// [`StoreError::is_ambiguous`]). `Err` when the store is unavailable: nothing of the group was
/// written.
fn commit_group(store: &dyn Store, writes: &[Write]) -> Result<Vec<Result<Written, Error>>, StoreError> {
    match store.commit(writes) {
        Ok(written) => Ok(written.into_iter().map(Ok).collect()),
        Err(error) if error.is_unavailable() => Err(error),
        Err(error) if writes.len() == 1 => Ok(vec![Err(error.into())]),
        Err(error) if error.is_ambiguous() => {
            let error = Arc::new(error);
            Ok(writes.iter().map(|_| Err(Error::Store(error.clone()))).collect())
        }
        Err(error) => {
            tracing::warn!(writes = writes.len(), error = %error, "a group commit failed: committing its writes one by one");
            // Once one of a session's writes fails, its later writes in the group are not sent:
            // they followed from it (an event after a refused checkpoint would otherwise land in
            // the inbox of a session the store still thinks open).
            let mut failed = HashSet::new();
            let results = writes
                .iter()
                .map(|write| {
                    if failed.contains(&write.session()) {
                        return Err(
                            StoreError::Damaged { report: "an earlier write of this session failed".into() }.into()
                        );
                    }
                    let result = store.commit(std::slice::from_ref(write)).and_then(|written| {
                        written
                            .into_iter()
                            .next()
                            .ok_or_else(|| StoreError::Damaged { report: "a commit answered nothing".into() })
                    });
                    if result.is_err() {
                        failed.insert(write.session());
                    }
                    result.map_err(Error::from)
                })
                .collect();
            Ok(results)
        }
    }
}

impl CommitQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn new(health: Arc<StoreHealth>) -> CommitQueue {
        CommitQueue { state: Mutex::default(), health, stats: Mutex::default() }
    }

    fn record(&self, writes: usize, took: Duration) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.groups += 1;
        stats.writes += u64::try_from(writes).unwrap_or(u64::MAX);
        stats.latency.record(took);
    }

    /// The group commits so far.
    pub(crate) fn stats(&self) -> CommitStats {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
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

    /// Commits what is queued unless another thread already is (a worker after its action). A
    /// caller leading only because no one else was is relieved: this worker waits for the group
    /// under way and takes the lead from there.
    pub(crate) fn drive(&self, store: &dyn Store, apply: Apply<'_>) {
        if self.health.retrying() {
            return;
        }
        let mut state = self.lock();
        if !state.committing {
            self.lead(state, store, apply, None);
            return;
        }
        if !state.relief_wanted || state.relief.is_some() {
            return;
        }
        state.relief_wanted = false;
        let baton = Arc::new(Ticket::default());
        state.relief = Some(baton.clone());
        drop(state);
        let mine = baton.await_turn();
        if let TicketState::Lead = *mine {
            drop(mine);
            let state = self.lock();
            self.lead(state, store, apply, None);
        }
    }

    /// Commits what is queued unless another thread already is: the retry thread, while the
    /// store is down (and the host's last flush).
    pub(crate) fn retry(&self, store: &dyn Store, apply: Apply<'_>) {
        let state = self.lock();
        if !state.committing {
            self.lead(state, store, apply, None);
        }
    }

    /// Waits until `ticket` is settled, leading commits whenever no one else does.
    pub(crate) fn wait(&self, ticket: &Arc<Ticket>, store: &dyn Store, apply: Apply<'_>) -> Result<Written, Error> {
        loop {
            // While the store is down the retry thread leads: a caller would meet it at once.
            // (Once the host is closing that thread is gone: callers lead, and are answered.)
            let retrying = self.health.retrying() && !self.health.closing();
            let state = self.lock();
            if !state.committing && !state.queue.is_empty() && !retrying {
                self.lead(state, store, apply, Some(ticket));
            } else {
                let mut state = state;
                state.waiters.push_back(ticket.clone());
                drop(state);
                let mut mine = ticket.await_turn();
                if let TicketState::Lead = *mine {
                    *mine = TicketState::Waiting;
                    drop(mine);
                    let state = self.lock();
                    self.lead(state, store, apply, Some(ticket));
                }
            }
            let mut mine = ticket.lock();
            if let TicketState::Done(_) = *mine
                && let TicketState::Done(outcome) = std::mem::replace(&mut *mine, TicketState::Taken)
            {
                return outcome;
            }
        }
    }

    /// Leads commits while writes are queued; hands over to a waiting caller as soon as the
    /// leader's own write (if any) is done.
    fn lead<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        store: &dyn Store,
        apply: Apply<'_>,
        mine: Option<&Ticket>,
    ) {
        while !state.queue.is_empty() {
            state.committing = true;
            let group = std::mem::take(&mut state.queue);
            drop(state);
            let (writes, tickets): (Vec<Write>, Vec<Option<Arc<Ticket>>>) =
                group.into_iter().map(|q| (q.write, q.ticket)).unzip();
            let started = Instant::now();
            let outcome = commit_group(store, &writes);
            self.record(writes.len(), started.elapsed());
            match outcome {
                Ok(results) => {
                    // A group whose outcome the store could not tell is no sign it is back.
                    let unknown = results.iter().find_map(|r| match r {
                        Err(Error::Store(error)) if error.is_ambiguous() => Some(error.clone()),
                        _ => None,
                    });
                    match unknown {
                        Some(error) => drop(self.health.failed_with(error, false)),
                        None => self.health.committed(),
                    }
                    apply(writes, tickets, results);
                    state = self.lock();
                }
                Err(error) => {
                    // The retry thread (or the next caller) takes it from here.
                    self.keep_for_retry(error, writes, tickets, apply);
                    state = self.lock();
                    break;
                }
            }
            if !state.queue.is_empty() && mine.is_none_or(Ticket::is_settled) {
                // The new leader finds `committing` set and takes it from here.
                if mine.is_some()
                    && let Some(worker) = state.relief.take()
                    && worker.hand_over()
                {
                    return;
                }
                while let Some(waiter) = state.waiters.pop_front() {
                    if waiter.hand_over() {
                        return;
                    }
                }
                state.relief_wanted = mine.is_some();
            }
        }
        state.committing = false;
        state.relief_wanted = false;
        if let Some(worker) = state.relief.take() {
            // Nothing left to lead: the worker goes back to its actions.
            worker.settle(Ok(Written::Committed));
        }
        state.waiters.retain(|w| !w.is_settled());
    }

    /// The store is unavailable: answers the group's creations and events, and those queued
    /// behind it, with the outage; puts its checkpoints back at the head of the queue, in order,
    /// for the retry thread (answers them too when the host is closing: a restart resumes their
    /// sessions from their last checkpoint). A caller waiting for a kept checkpoint (a cancel)
    /// is answered with the outage at once rather than kept waiting for the store: not
    /// acknowledged, its cancel lands when the store is back.
    fn keep_for_retry(
        &self,
        error: StoreError,
        writes: Vec<Write>,
        tickets: Vec<Option<Arc<Ticket>>>,
        apply: Apply<'_>,
    ) {
        let closing = self.health.closing();
        let keeps = |write: &Write| !closing && matches!(write, Write::Checkpoint(_));
        let (mut kept, mut answered): (Vec<Queued>, Vec<Queued>) = writes
            .into_iter()
            .zip(tickets)
            .map(|(write, ticket)| Queued { write, ticket })
            .partition(|q| keeps(&q.write));
        let mut state = self.lock();
        for queued in std::mem::take(&mut state.queue) {
            if keeps(&queued.write) { kept.push(queued) } else { answered.push(queued) }
        }
        let retry = !kept.is_empty();
        let waiting: Vec<Arc<Ticket>> = kept.iter_mut().filter_map(|q| q.ticket.take()).collect();
        state.queue = kept;
        drop(state);
        let error = self.health.failed(error, retry);
        for ticket in waiting {
            ticket.settle(Err(Error::Store(error.clone())));
        }
        let results = answered.iter().map(|_| Err(Error::Store(error.clone()))).collect();
        let (writes, tickets) = answered.into_iter().map(|q| (q.write, q.ticket)).unzip();
        apply(writes, tickets, results);
    }
}
