//! A session's life in this host, as a state machine over plain data: each transition takes what
//! happened (created, an event appended, a timer fired, an action done, a checkpoint committed or
//! not, a cancel) and returns the [`Effects`] the caller carries out once it has let go of the
//! session's lock (queue its next action, commit a checkpoint, arm a timer, publish its outputs).
//! Nothing here takes a lock, touches the store or sends on a channel, so every race is a unit
//! test without threads.
//!
//! The durable state is the [`Session`] (status, state, counters); the [`Phase`] is where it is
//! in this process. The session runs ahead of what readers see while its checkpoint commits:
//! readers see the last committed status, and nothing of it is scheduled until the checkpoint
//! has landed, so an output is never seen before the state that produced it is durable.

use crate::error::Error;
use crate::error::QueueFull;
use crate::failure::{Failure, FailureKind};
use crate::sandbox::ActionOutcome;
use crate::session::{Session, SessionId, Status, now_ms};
use crate::store::{Appended, Checkpoint, InboxEvent, StoredSession, Unapplied};
use std::collections::VecDeque;

/// Where a session is in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Created, its record on its way to the store: nothing runs before it lands.
    Creating,
    /// Waiting for its customer (or its timer), nothing in flight.
    Idle,
    /// Its next action is in a pending queue.
    Queued,
    /// Its action is in the action list (on a worker, preempted or asleep).
    Running,
    /// Its checkpoint is on its way to the store.
    Committing,
    /// Finished (done, failed or cancelled), its last checkpoint committed.
    Finished,
    /// A checkpoint of it could not be committed: nothing of that action was released, and the
    /// host takes it back from its last committed checkpoint (`recovery.rs`).
    TakingBack,
    /// It could not be taken back either: it stops here, in this process; a restart resumes it
    /// from its last committed checkpoint.
    Stopped,
}

/// What the caller must carry out after a transition, in this order, once the session's lock is
/// released (the checkpoint is enqueued while it is still held, so checkpoints of one session
/// reach the store in order).
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Queue the session's next action.
    pub(crate) push: bool,
    /// Commit this checkpoint.
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Arm the wait's timer: (due, in ms since the epoch; the wait's number).
    pub(crate) arm: Option<(u64, u64)>,
    /// Outputs released and the status now visible, for subscribers: (first output's number − 1,
    /// outputs, status).
    pub(crate) publish: Option<(u64, Vec<String>, Status)>,
    /// The session has ended (at this time, ms since the epoch): count it finished, and purge
    /// it once its retention has passed.
    pub(crate) finished: Option<u64>,
    /// Its checkpoint failed (why): take it back from the store.
    pub(crate) take_back: Option<String>,
    /// Read back from the store, it had landed unheard: count it (started, finished).
    pub(crate) landed_unheard: (bool, bool),
}

/// Take-backs of a session in a row (each after a failed checkpoint, with no commit between):
/// the next failure gives it up.
const TAKE_BACKS: u32 = 3;

/// What a session taken back from the store keeps of the life it replaces.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Inherited {
    /// Its waits are numbered from here (past the old life's, whose timers may still fire).
    pub(crate) wait_seq: u64,
    /// A cancel accepted while its action ran: it ends cancelled, running nothing more.
    pub(crate) cancel: bool,
    /// Its checkpoints that failed in a row.
    pub(crate) take_backs: u32,
    /// It replaces a life whose checkpoint failed: its watchers hear where it stands.
    pub(crate) taken_back: bool,
    /// The life it replaces was heard to be created (a creation of unknown outcome was not):
    /// one read back otherwise landed unheard, and is counted started then.
    pub(crate) created: bool,
}

/// What the action due now needs from the session.
pub(crate) struct Due {
    pub(crate) action: String,
    pub(crate) input: Vec<u8>,
    pub(crate) state: Vec<u8>,
}

/// One session's life: its durable state and its phase here.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    id: SessionId,
    session: Session,
    /// The status as of the last committed checkpoint: what readers see.
    visible: Status,
    phase: Phase,
    /// Acknowledged events not yet taken, oldest first.
    inbox: VecDeque<InboxEvent>,
    /// The inbox event the running (or next) action takes.
    consumed: Option<Unapplied>,
    /// Cancelled while busy: whatever its action does, the session ends cancelled.
    cancel: bool,
    /// Events accepted for its inbox whose append has not committed yet.
    appends: u32,
    /// Bumped whenever a wait ends, so a stale timer is recognised and ignored.
    wait_seq: u64,
    fence: u64,
    /// Outputs released so far (their numbers are 1..=released).
    released: u64,
    /// Acknowledged events the session ended without taking.
    unapplied: Vec<Unapplied>,
    /// Its checkpoints that failed in a row.
    take_backs: u32,
    /// Its creation is known to have landed.
    created: bool,
}

impl Lifecycle {
    /// A new session, its record on its way to the store.
    pub(crate) fn creating(id: SessionId, session: Session) -> Lifecycle {
        Lifecycle {
            id,
            visible: session.status.clone(),
            session,
            phase: Phase::Creating,
            inbox: VecDeque::new(),
            consumed: None,
            cancel: false,
            appends: 0,
            wait_seq: 0,
            fence: 0,
            released: 0,
            unapplied: Vec::new(),
            take_backs: 0,
            created: false,
        }
    }

    /// A session as a store kept it; `effects` moves it on (queued, armed, or nothing).
    /// It keeps what it `inherited` of a life it replaces (nothing, loaded at a start).
    pub(crate) fn resumed(stored: StoredSession, inherited: Inherited) -> (Lifecycle, Effects) {
        let mut record = stored.record;
        let finished = record.snapshot.status.is_finished();
        if finished {
            // Kept by releases before finished sessions dropped it.
            record.snapshot.state = Vec::new();
        }
        let mut life = Lifecycle {
            id: record.id,
            visible: record.snapshot.status.clone(),
            released: record.snapshot.counters.outputs,
            session: record.snapshot,
            phase: if finished { Phase::Finished } else { Phase::Idle },
            inbox: stored.inbox.into(),
            consumed: None,
            cancel: false,
            appends: 0,
            wait_seq: inherited.wait_seq,
            fence: record.fence,
            unapplied: stored.unapplied,
            take_backs: inherited.take_backs,
            created: true,
        };
        let mut effects = match (finished, inherited.cancel) {
            (true, _) => Effects::default(),
            (false, true) => life.end_cancelled(&record.tenant),
            (false, false) => life.move_on(),
        };
        if inherited.taken_back {
            // Outputs of a commit that landed unheard are read from the store by their streams.
            effects.publish = Some((life.released, Vec::new(), life.visible().clone()));
            // Only a failed checkpoint or creation is taken back: an end read back is its final
            // checkpoint, landed unheard.
            effects.landed_unheard = (!inherited.created, finished);
        }
        (life, effects)
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The session as it stands (it runs ahead of [`Lifecycle::visible`] while committing).
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// The status readers see: the last committed one.
    pub(crate) fn visible(&self) -> &Status {
        if matches!(self.phase, Phase::Committing | Phase::TakingBack | Phase::Stopped) {
            &self.visible
        } else {
            &self.session.status
        }
    }

    /// What a life taken back from the store in its place keeps of it.
    pub(crate) fn inherited(&self) -> Inherited {
        Inherited {
            wait_seq: self.wait_seq + 1,
            cancel: self.cancel,
            take_backs: self.take_backs,
            taken_back: true,
            created: self.created,
        }
    }

    /// Whether events accepted for it have appends on their way to the store.
    pub(crate) fn appending(&self) -> bool {
        self.appends > 0
    }

    pub(crate) fn released(&self) -> u64 {
        self.released
    }

    pub(crate) fn unapplied(&self) -> &[Unapplied] {
        &self.unapplied
    }

    /// Whether it is waiting for a customer with nothing in flight.
    pub(crate) fn is_waiting(&self) -> bool {
        self.phase == Phase::Idle && matches!(self.session.status, Status::Waiting { .. })
    }

    /// Whether it is still open (not finished, not stopped or being taken back, not ending).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.phase, Phase::Finished | Phase::TakingBack | Phase::Stopped)
            && !self.session.status.is_finished()
    }

    /// Its record has landed: it may run.
    pub(crate) fn created(&mut self, tenant: &str) -> Effects {
        if self.phase != Phase::Creating {
            return Effects::default();
        }
        self.phase = Phase::Idle;
        self.created = true;
        if self.cancel {
            return self.end_cancelled(tenant);
        }
        self.move_on()
    }

    /// Takes an event for the inbox (its append is then committed and
    /// [`Lifecycle::event_appended`] called): refused if the session is over or ending, or its
    /// inbox is full. Ok(true) when the event will need a pending-queue slot (the session is
    /// waiting for it), so the caller checks the queues' room first. An event with an
    /// idempotency key for a session that is over goes to the store anyway, which knows whether
    /// it is a retry of one acknowledged before.
    pub(crate) fn accept_event(&mut self, max_inbox: usize, has_key: bool) -> Result<bool, Error> {
        // A session stopped here by a failed commit is not finished in the store: an event stored
        // for it now would be taken when it resumes elsewhere, after being reported not applied.
        match self.phase {
            Phase::TakingBack => return Err(Error::TakingBack { session: self.id }),
            Phase::Stopped => return Err(Error::SessionState { status: "stopped", request: "take a customer event" }),
            _ => {}
        }
        if has_key && (!self.is_open() || self.cancel) {
            return Ok(false);
        }
        if !self.is_open() || self.cancel {
            let status = if self.cancel { "cancelled" } else { self.session.status.name() };
            return Err(Error::SessionState { status, request: "take a customer event" });
        }
        let held = self.inbox.len() + usize::try_from(self.appends).unwrap_or(usize::MAX);
        if held >= max_inbox {
            return Err(Error::QueueFull(QueueFull::Inbox(max_inbox)));
        }
        self.appends += 1;
        Ok(self.is_waiting() && held == 0)
    }

    /// An accepted event's append was refused before it reached the store (the queues were full).
    pub(crate) fn event_refused(&mut self) {
        self.appends = self.appends.saturating_sub(1);
    }

    /// An accepted event's append has committed with `appended`. A new event goes to the inbox
    /// (and is taken at once if the session waits); one the session ended before taking is
    /// reported back as not applied.
    pub(crate) fn event_appended(
        &mut self,
        appended: Appended,
        event: Vec<u8>,
        key: Option<String>,
    ) -> (Result<Appended, Error>, Effects) {
        self.appends = self.appends.saturating_sub(1);
        match appended {
            // Durable in the inbox of a session open in the store: the life taken back from it
            // (once no append is on its way) takes the event, or, cancelled, reports it.
            Appended::New(_) if self.phase == Phase::TakingBack && self.cancel => {
                (Err(Error::NotApplied { session: self.id }), Effects::default())
            }
            Appended::New(_) if self.phase == Phase::TakingBack => (Ok(appended), Effects::default()),
            Appended::New(seq) if self.is_open() && !self.cancel => {
                self.inbox.push_back(InboxEvent { seq, event, key });
                let effects = if self.phase == Phase::Idle { self.move_on() } else { Effects::default() };
                (Ok(appended), effects)
            }
            // The session ended (or was cancelled) while the append was on its way: the store
            // moved the event to the session's unapplied events with the final checkpoint.
            Appended::New(seq) => {
                self.unapplied.push(Unapplied { seq, key });
                (Err(Error::NotApplied { session: self.id }), Effects::default())
            }
            Appended::NotApplied => (Err(Error::NotApplied { session: self.id }), Effects::default()),
            Appended::SessionEnded => (
                Err(Error::SessionState { status: self.session.status.name(), request: "take a customer event" }),
                Effects::default(),
            ),
            Appended::Duplicate => (Ok(appended), Effects::default()),
        }
    }

    /// Its wait's timer `seq` fired: if it still waits on that very wait, its timeout action is
    /// queued.
    pub(crate) fn timer_fired(&mut self, seq: u64) -> Effects {
        if self.phase != Phase::Idle || self.wait_seq != seq || self.session.time_out().is_err() {
            return Effects::default();
        }
        self.wait_seq += 1;
        self.phase = Phase::Queued;
        Effects { push: true, ..Effects::default() }
    }

    /// Its queued action was dispatched: what the action needs, or `None` when there is nothing
    /// to run after all (it was cancelled, or its loop guard just ended it); then
    /// [`Lifecycle::action_done`] is called with no outcome.
    pub(crate) fn start_action(&mut self, max_actions: u64) -> Option<Due> {
        self.phase = Phase::Running;
        if self.cancel {
            return None;
        }
        let state = self.session.state.clone();
        let (action, input) = self.session.due(max_actions)?;
        Some(Due { action: action.to_owned(), input: input.to_vec(), state })
    }

    /// Its action completed (or was skipped: `None`): the outcome is applied and its checkpoint
    /// goes to the store. Nothing is released yet.
    pub(crate) fn action_done(
        &mut self,
        error_action: Option<&str>,
        tenant: &str,
        outcome: Option<ActionOutcome>,
        now_ms: u64,
    ) -> Effects {
        let mut released = crate::session::Released::default();
        let ran = outcome.is_some();
        if let Some(outcome) = outcome {
            released = self.session.apply(error_action, &outcome.usage, outcome.result, now_ms);
        }
        if self.cancel {
            self.session.status = Status::Cancelled;
        }
        // Ended before its action ran (cancelled while queued, or stopped by its loop guard): the
        // event that action was to take was never applied, and is reported so, not consumed.
        if !ran
            && self.session.status.is_finished()
            && let Some(event) = self.consumed.take()
        {
            self.unapplied.push(event);
        }
        self.phase = Phase::Committing;
        let mut checkpoint = self.checkpoint(tenant);
        checkpoint.outputs = released.outputs;
        checkpoint.kv_writes = released.kv_writes;
        Effects { checkpoint: Some(checkpoint), ..Effects::default() }
    }

    /// Its checkpoint is committed: its outputs are released and it moves on.
    pub(crate) fn committed(&mut self, tenant: &str, outputs: Vec<String>) -> Effects {
        if self.phase != Phase::Committing {
            return Effects::default();
        }
        let first = self.released;
        self.released += u64::try_from(outputs.len()).unwrap_or(u64::MAX);
        self.visible = self.session.status.clone();
        self.take_backs = 0;
        self.phase = Phase::Idle;
        let mut effects = if self.session.status.is_finished() {
            self.phase = Phase::Finished;
            Effects { finished: Some(self.session.finished_ms.unwrap_or_else(now_ms)), ..Effects::default() }
        } else if self.cancel {
            self.end_cancelled(tenant)
        } else {
            self.move_on()
        };
        effects.publish = Some((first, outputs, self.visible.clone()));
        effects
    }

    /// Its checkpoint (or its creation, of unknown outcome) could not be committed: nothing of
    /// the action is released, and it is taken back from its last committed checkpoint, intact in
    /// the store (the action re-runs, unless a commit whose outcome was unknown had landed after
    /// all; a creation that did not land is dropped).
    /// A write refused as fenced, or the `TAKE_BACKS`th failure in a row, gives it up instead:
    /// another node runs it now, or its checkpoints are refused for good.
    pub(crate) fn commit_failed(&mut self, error: &Error) -> Effects {
        if self.phase != Phase::Committing && self.phase != Phase::Creating {
            return Effects::default();
        }
        self.phase = Phase::TakingBack;
        self.take_backs += 1;
        if matches!(error, Error::Fenced { .. }) {
            return self.stop(format!(
                "its checkpoint was refused ({}); the host that holds its shard now runs it from its last checkpoint",
                error.chain()
            ));
        }
        if self.take_backs > TAKE_BACKS {
            return self.give_up(&error.chain());
        }
        Effects { take_back: Some(error.chain()), ..Effects::default() }
    }

    /// It could not be taken back (its checkpoints keep failing, or it could not be read back): it
    /// stops here, in this process, and its watchers are told. A restart resumes it from its last
    /// committed checkpoint.
    pub(crate) fn give_up(&mut self, error: &str) -> Effects {
        if self.phase != Phase::TakingBack {
            return Effects::default();
        }
        self.stop(format!(
            "its checkpoint could not be committed ({error}); it resumes from its last checkpoint after a restart"
        ))
    }

    /// It stops here, failed, saying `message`, and its watchers are told.
    fn stop(&mut self, message: String) -> Effects {
        let failure = Failure::new(FailureKind::Trap, "", message);
        self.phase = Phase::Stopped;
        self.visible = Status::Failed { failure };
        Effects {
            finished: Some(now_ms()),
            publish: Some((self.released, Vec::new(), self.visible.clone())),
            ..Effects::default()
        }
    }

    /// Cancels it: an idle one ends now (its cancellation is a checkpoint of its own), a busy one
    /// when its action or checkpoint is done. Its inbox is reported back as not applied.
    pub(crate) fn cancel(&mut self, tenant: &str) -> Result<Effects, Error> {
        if self.phase == Phase::TakingBack {
            return Err(Error::TakingBack { session: self.id });
        }
        if !self.is_open() || self.cancel {
            let status = if self.cancel { "cancelled" } else { self.visible().name() };
            return Err(Error::SessionState { status, request: "be cancelled" });
        }
        self.cancel = true;
        if self.phase == Phase::Idle {
            return Ok(self.end_cancelled(tenant));
        }
        Ok(Effects::default())
    }

    /// Ends an idle session cancelled.
    fn end_cancelled(&mut self, tenant: &str) -> Effects {
        self.session.status = Status::Cancelled;
        self.wait_seq += 1;
        self.phase = Phase::Committing;
        Effects { checkpoint: Some(self.checkpoint(tenant)), ..Effects::default() }
    }

    /// Moves an idle session on: a ready one is queued; a waiting one takes the first event of
    /// its inbox (queued), or has its timer armed with what is left of its timeout.
    fn move_on(&mut self) -> Effects {
        if let Status::Waiting { .. } = self.session.status
            && let Some(event) = self.inbox.front()
            && self.session.deliver(event.event.clone()).is_ok()
        {
            self.consumed = self.inbox.pop_front().map(|e| Unapplied { seq: e.seq, key: e.key });
            self.wait_seq += 1;
            self.phase = Phase::Queued;
            return Effects { push: true, ..Effects::default() };
        }
        match &self.session.status {
            Status::Ready { .. } => {
                self.phase = Phase::Queued;
                Effects { push: true, ..Effects::default() }
            }
            Status::Waiting { wait, since_ms } => {
                self.phase = Phase::Idle;
                self.wait_seq += 1;
                let arm = wait.timeout_ms.map(|timeout| (since_ms.saturating_add(timeout), self.wait_seq));
                Effects { arm, ..Effects::default() }
            }
            Status::Done { .. } | Status::Failed { .. } | Status::Cancelled => {
                self.phase = Phase::Finished;
                Effects::default()
            }
        }
    }

    /// The checkpoint of the session as it stands, with nothing released. A finishing one
    /// reports the inbox back as not applied (the store does the same with the rows it holds).
    fn checkpoint(&mut self, tenant: &str) -> Checkpoint {
        if self.session.status.is_finished() {
            // Nothing reads a finished session's state again: neither memory nor the store keeps
            // it for the session's retention (a tenant's 64 KiB per finished session would add
            // up without bound).
            self.session.state = Vec::new();
            self.session.finished_ms.get_or_insert_with(now_ms);
            self.unapplied.extend(self.inbox.drain(..).map(|e| Unapplied { seq: e.seq, key: e.key }));
        }
        Checkpoint {
            session: self.id,
            tenant: tenant.to_owned(),
            snapshot: self.session.clone(),
            outputs: Vec::new(),
            kv_writes: Default::default(),
            consumed: self.consumed.take().map(|event| event.seq),
            fence: self.fence,
        }
    }
}

#[cfg(test)]
mod tests;
