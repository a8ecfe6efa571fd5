//! The host's kernel: the concepts put together (tenants, tokens, sessions, the dispatcher, the
//! commit queue, timers, the bus) and the paths through them: an action from dispatch to commit,
//! an event or a new session from the caller to the store and back, a committed group's results
//! carried out. Each path takes one lock at a time, in the order `host.rs` writes down, and
//! carries out a transition's effects after letting go of the session's lock.

use super::bus::{Bus, SessionEvent};
use super::commit::{CommitQueue, Ticket};
use super::dispatch::{Dispatcher, Work};
use super::health::StoreHealth;
use super::lifecycle::{Effects, Phase};
use super::recovery::Recovery;
use super::retention::Retention;
use super::sessions::{SessionEntry, Sessions};
use super::storage::{stored_by, written_by};
use super::tenants::{Admin, AppEntry, Tenant, Tenants};
use super::timers::{Due, Timers};
use super::tokens::Tokens;
use super::views::{Delivery, SessionView};
use crate::app::ModuleInfo;
use crate::error::Error;
use crate::limits::TenantConfig;
use crate::runtime::Runtime;
use crate::sandbox::{ActionCall, ActionOutcome, Usage};
use crate::scheduler::{Bounds, Dispatch};
use crate::session::{SessionId, Status, now_ms};
use crate::store::{Appended, SessionRecord, StartKey, StorageUsage, Store, Write, Written};
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Everything a host is made of.
pub(crate) struct Kernel {
    runtime: Runtime,
    store: Arc<dyn Store>,
    tenants: Tenants,
    tokens: Tokens,
    sessions: Sessions,
    /// Each on cache lines of its own: both workers lock them on every action (see `sessions`).
    dispatcher: CachePadded<Dispatcher>,
    commits: CachePadded<CommitQueue>,
    health: Arc<StoreHealth>,
    timers: Arc<Timers>,
    bus: Bus,
    max_inbox: usize,
    quarantined: AtomicU64,
    /// Writes refused because another host holds their session's shard now.
    fenced: AtomicU64,
    retention: Retention,
    /// Sessions whose checkpoint failed, to be taken back from the store.
    recovery: Recovery,
}

impl Kernel {
    pub(crate) fn new(
        runtime: Runtime,
        store: Arc<dyn Store>,
        bounds: Bounds,
        max_inbox: usize,
        retention: Duration,
    ) -> Kernel {
        let preemption = runtime.preemption();
        let health = Arc::new(StoreHealth::default());
        Kernel {
            runtime,
            store,
            tenants: Tenants::default(),
            tokens: Tokens::default(),
            sessions: Sessions::default(),
            dispatcher: CachePadded::new(Dispatcher::new(bounds, preemption)),
            commits: CachePadded::new(CommitQueue::new(health.clone())),
            health,
            timers: Arc::default(),
            bus: Bus::default(),
            max_inbox,
            quarantined: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            retention: Retention::new(retention),
            recovery: Recovery::default(),
        }
    }

    pub(crate) fn retention(&self) -> &Retention {
        &self.retention
    }

    pub(crate) fn commits(&self) -> &CommitQueue {
        &self.commits
    }

    pub(crate) fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    pub(crate) fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub(crate) fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    pub(crate) fn timers(&self) -> &Arc<Timers> {
        &self.timers
    }

    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(crate) fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Sessions set aside at start because their stored rows did not decode.
    pub(crate) fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Writes refused as fenced, and the group commits so far.
    pub(crate) fn commit_figures(&self) -> (u64, crate::metrics::CommitStats) {
        (self.fenced.load(Ordering::Relaxed), self.commits.stats())
    }

    pub(crate) fn count_quarantined(&self, n: u64) {
        self.quarantined.fetch_add(n, Ordering::Relaxed);
    }

    /// Registers a tenant (the caller has stored it).
    pub(crate) fn register_tenant(&self, admin: &Admin<'_>, name: &str, config: TenantConfig) -> Arc<Tenant> {
        let policy = Arc::new(config);
        let ix = self.dispatcher.with(|s| s.add_tenant(policy.clone(), Instant::now()));
        let tenant = Arc::new(Tenant::new(name, ix, policy, &self.store));
        self.tenants.insert(admin, tenant.clone());
        tenant
    }

    /// Makes `version` the current version of `tenant`'s `app` (the caller has stored it).
    pub(crate) fn register_app(&self, admin: &Admin<'_>, tenant: &Tenant, app: &str, version: Arc<ModuleInfo>) {
        let hash = version.hash.clone();
        let (ix, mut versions) = match tenant.app(app) {
            Some(existing) => (existing.ix, existing.versions.clone()),
            None => (self.dispatcher.with(|s| s.add_app(tenant.ix())), Vec::new()),
        };
        versions.retain(|v| *v != hash);
        versions.push(hash);
        tenant.put_app(admin, AppEntry { name: app.into(), ix, current: version, versions });
    }

    /// The tenant `name` and its session `id` (not found if it is another tenant's).
    fn own<'a>(
        shard: &'a mut super::sessions::Shard,
        tenant: &str,
        id: SessionId,
    ) -> Result<&'a mut SessionEntry, Error> {
        match shard.get_mut(&id) {
            Some(entry) if &**entry.tenant.name() == tenant => Ok(entry),
            _ => Err(Error::not_found("session", id)),
        }
    }

    /// Carries out a transition's effects (the checkpoint, if any, was queued under the lock).
    pub(crate) fn carry_out(&self, tenant: &Tenant, app_ix: crate::scheduler::AppIx, id: SessionId, effects: Effects) {
        if let Some((due_ms, seq)) = effects.arm {
            let after = Duration::from_millis(due_ms.saturating_sub(now_ms()));
            let at =
                Instant::now().checked_add(after).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
            self.timers.arm(at, Due::Wait { session: id, seq });
        }
        // Counted before it is told, so whoever sees the end also sees it counted.
        if let Some(finished_ms) = effects.finished {
            self.retention.finished(id, tenant.policy().retention, Some(finished_ms));
            tenant.close_session();
            tenant.hold_finished();
            self.dispatcher.with(|s| s.counters_mut(tenant.ix()).sessions_finished += 1);
        }
        if let Some(why) = effects.take_back {
            self.recovery.push(id, why);
        }
        let (started, finished) = effects.landed_unheard;
        if started || finished {
            self.dispatcher.with(|s| {
                let counters = s.counters_mut(tenant.ix());
                counters.sessions_started += u64::from(started);
                counters.sessions_finished += u64::from(finished);
            });
        }
        if let Some((first_output, outputs, status)) = effects.publish
            && self.bus.wants(id)
        {
            let event = SessionEvent { session: id, tenant: tenant.name().to_string(), status, outputs, first_output };
            self.bus.publish(event);
        }
        // Queued last: whatever its next action publishes comes after what this one does.
        if effects.push {
            self.dispatcher.push(app_ix, id);
        }
    }

    /// Runs `transition` on session `id` under its shard's lock, queues the checkpoint it makes
    /// (still under the lock, so a session's writes stay in order), and carries out the rest.
    fn transition(
        &self,
        id: SessionId,
        ticket: Option<Arc<Ticket>>,
        transition: impl FnOnce(&mut SessionEntry) -> Effects,
    ) {
        let mut shard = self.sessions.shard(id);
        let Some(entry) = shard.get_mut(&id) else { return };
        let mut effects = transition(entry);
        if effects.finished.is_some() {
            // Its compiled code is held while it is open, no longer (modules.rs evicts it).
            entry.code = None;
        }
        if let Some(checkpoint) = effects.checkpoint.take() {
            self.commits.enqueue(Write::Checkpoint(checkpoint), ticket);
        }
        let (tenant, app_ix) = (entry.tenant.clone(), entry.app_ix);
        drop(shard);
        self.carry_out(&tenant, app_ix, id, effects);
    }

    /// Commits what is queued unless someone else is.
    pub(crate) fn drive_commits(&self) {
        self.commits.drive(self.store.as_ref(), &|writes, tickets, result| self.committed(writes, tickets, result));
    }

    /// Commits what is queued unless someone else is, even while the store is down: the retry
    /// thread, and the host's last flush when it stops.
    pub(crate) fn retry_commits(&self) {
        self.commits.retry(self.store.as_ref(), &|writes, tickets, result| self.committed(writes, tickets, result));
    }

    /// Waits for a write's commit (leading commits meanwhile if need be).
    fn wait_for(&self, ticket: &Arc<Ticket>) -> Result<Written, Error> {
        self.commits
            .wait(ticket, self.store.as_ref(), &|writes, tickets, result| self.committed(writes, tickets, result))
    }

    /// Carries out a committed group: each write's session moves on, each caller is answered.
    fn committed(&self, writes: Vec<Write>, tickets: Vec<Option<Arc<Ticket>>>, results: Vec<Result<Written, Error>>) {
        let mut results = results.into_iter();
        let mut failed = None;
        let count = writes.len();
        for (write, ticket) in writes.into_iter().zip(tickets) {
            let written = match results.next() {
                Some(Ok(written)) => Ok(written),
                Some(Err(error)) => {
                    failed.get_or_insert_with(|| (0usize, error.chain())).0 += 1;
                    Err(error)
                }
                None => Err(Error::ShuttingDown),
            };
            let answer = self.apply_write(write, written);
            if let Some(ticket) = ticket {
                ticket.settle(answer);
            }
        }
        if let Some((failed, first)) = failed {
            tracing::error!(writes = count, failed, error = %first, "writes failed to commit");
        }
    }

    /// Carries out one committed (or failed) write; the answer for the caller waiting for it.
    fn apply_write(&self, write: Write, written: Result<Written, Error>) -> Result<Written, Error> {
        if matches!(written, Ok(Written::Fenced)) {
            self.fenced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(session = %write.session(), "a write was refused (fenced): another node holds its shard");
        }
        // A creation or an event refused because this host no longer holds the session's shard
        // (another host took it over) was not written: never acknowledged.
        let written = match (&write, written) {
            (Write::Create { .. } | Write::Append { .. }, Ok(Written::Fenced)) => {
                Err(Error::Fenced { session: write.session() })
            }
            (_, written) => written,
        };
        match write {
            Write::Create { record, .. } => {
                let id = record.id;
                match written {
                    Ok(written @ Written::Created) => {
                        let tenant = record.tenant;
                        self.transition(id, None, |entry| entry.life.created(&tenant));
                        if let Some(tenant) = self.tenants.get(&tenant) {
                            self.dispatcher.with(|s| s.counters_mut(tenant.ix()).sessions_started += 1);
                        }
                        Ok(written)
                    }
                    // Its outcome unknown: taken back from what the store holds (run if it landed,
                    // dropped if not); a retry under its key finds it meanwhile.
                    Err(Error::Store(error)) if error.is_ambiguous() => {
                        let failed = Error::Store(error);
                        self.transition(id, None, |entry| entry.life.commit_failed(&failed));
                        Err(failed)
                    }
                    // Never durable: the session does not exist (its tenant's key found another, or
                    // the write failed and is not acknowledged).
                    written => {
                        if let Some(entry) = super::sessions::release(&mut self.sessions.shard(id), id) {
                            entry.tenant.close_session();
                        }
                        written
                    }
                }
            }
            Write::Append { session, tenant, event, key } => {
                // The key's reservation is settled by its tenant, even if the session is gone
                // (purged while the append was on its way).
                if key.is_some()
                    && let Some(owner) = self.tenants.get(&tenant)
                {
                    match written {
                        Ok(Written::Appended(Appended::New(_))) => owner.storage().reserved_committed(ONE_KEY),
                        _ => owner.storage().reserved_gone(ONE_KEY),
                    }
                }
                let mut answer = Err(Error::not_found("session", session));
                match written {
                    Ok(Written::Appended(appended)) => self.transition(session, None, |entry| {
                        let (result, effects) = entry.life.event_appended(appended, event, key);
                        answer = result.map(Written::Appended);
                        effects
                    }),
                    Ok(other) => answer = Ok(other),
                    Err(error) => {
                        self.transition(session, None, |entry| {
                            entry.life.event_refused();
                            Effects::default()
                        });
                        answer = Err(error);
                    }
                }
                answer
            }
            Write::Checkpoint(checkpoint) => {
                let id = checkpoint.session;
                let (answer, error) = match written {
                    Ok(Written::Fenced) => (Err(Error::Fenced { session: id }), Some(Error::Fenced { session: id })),
                    Ok(written) => (Ok(written), None),
                    Err(Error::Store(error)) => (Err(Error::Store(error.clone())), Some(Error::Store(error))),
                    Err(error) => (Err(Error::ShuttingDown), Some(error)),
                };
                // Its writes' reservation is settled by its tenant, whatever became of the session.
                let stored = stored_by(&checkpoint);
                if let Some(owner) = self.tenants.get(&checkpoint.tenant) {
                    match error {
                        None => owner.storage().reserved_committed(stored),
                        Some(_) => owner.storage().reserved_gone(stored),
                    }
                }
                let tenant = checkpoint.tenant;
                let outputs = checkpoint.outputs;
                self.transition(id, None, |entry| match &error {
                    None => entry.life.committed(&tenant, outputs),
                    Some(error) => entry.life.commit_failed(error),
                });
                answer
            }
        }
    }

    /// Starts a session whose record is built: what its commit wrote, once it is durable (or
    /// once the store found the session its key started before).
    pub(crate) fn create(
        &self,
        entry: SessionEntry,
        record: SessionRecord,
        key: Option<StartKey>,
    ) -> Result<Written, Error> {
        let id = record.id;
        let ticket = Arc::new(Ticket::default());
        {
            let mut shard = self.sessions.shard(id);
            super::sessions::hold(&mut shard, id, entry);
            self.commits.enqueue(Write::Create { record, key }, Some(ticket.clone()));
        }
        // A create that failed was closed where its commit failed (`apply_write`), once.
        self.wait_for(&ticket)
    }

    /// Delivers an event: acknowledged once durable in the inbox of a session that had not ended.
    pub(crate) fn deliver(
        &self,
        tenant: &str,
        id: SessionId,
        event: Vec<u8>,
        key: Option<String>,
    ) -> Result<Delivery, Error> {
        let ticket = self.submit_event(tenant, id, event, key)?;
        self.delivery(id, &ticket)
    }

    /// Queues an event's append (checked against the session first); its ticket is answered once
    /// the append is committed ([`Kernel::delivery`]).
    pub(crate) fn submit_event(
        &self,
        tenant: &str,
        id: SessionId,
        event: Vec<u8>,
        key: Option<String>,
    ) -> Result<Arc<Ticket>, Error> {
        self.health.check()?;
        let ticket = Arc::new(Ticket::default());
        let mut shard = self.sessions.shard(id);
        let entry = Self::own(&mut shard, tenant, id)?;
        if key.is_some() {
            entry.tenant.storage().reserve_event_key(tenant, &entry.tenant.policy())?;
        }
        // The key's room goes back if the event is not queued after all.
        let unreserve = |entry: &SessionEntry| {
            if key.is_some() {
                entry.tenant.storage().reserved_gone(ONE_KEY);
            }
        };
        let needs_slot = entry.life.accept_event(self.max_inbox, key.is_some()).inspect_err(|_| unreserve(entry))?;
        if needs_slot && let Err(full) = self.dispatcher.has_room(entry.app_ix) {
            unreserve(entry);
            entry.life.event_refused();
            return Err(Error::QueueFull(full));
        }
        let tenant = tenant.to_owned();
        self.commits.enqueue(Write::Append { session: id, tenant, event, key }, Some(ticket.clone()));
        Ok(ticket)
    }

    /// Waits for a submitted event's append to commit: what delivering it did.
    pub(crate) fn delivery(&self, id: SessionId, ticket: &Arc<Ticket>) -> Result<Delivery, Error> {
        match self.wait_for(ticket)? {
            Written::Appended(Appended::New(_)) => Ok(Delivery::Accepted),
            Written::Appended(Appended::Duplicate) => Ok(Delivery::Duplicate),
            Written::Appended(Appended::NotApplied) => Err(Error::NotApplied { session: id }),
            _ => Err(Error::SessionState { status: "done", request: "take a customer event" }),
        }
    }

    /// Cancels a session; answers once its cancellation is durable (or, for a busy session, once
    /// it is recorded to take effect when its action is done).
    pub(crate) fn cancel(&self, tenant: &str, id: SessionId) -> Result<(), Error> {
        self.health.check()?;
        let ticket = Arc::new(Ticket::default());
        let waits = {
            let mut shard = self.sessions.shard(id);
            let entry = Self::own(&mut shard, tenant, id)?;
            let mut effects = entry.life.cancel(tenant)?;
            let waits = effects.checkpoint.is_some();
            if let Some(checkpoint) = effects.checkpoint.take() {
                self.commits.enqueue(Write::Checkpoint(checkpoint), Some(ticket.clone()));
            }
            waits
        };
        if waits {
            self.wait_for(&ticket)?;
        }
        Ok(())
    }

    /// A session of `tenant` as it stands.
    pub(crate) fn view(&self, tenant: &str, id: SessionId) -> Result<SessionView, Error> {
        let mut shard = self.sessions.shard(id);
        let entry = Self::own(&mut shard, tenant, id)?;
        Ok(SessionView::of(id, entry))
    }

    /// A session of `tenant` as it stands, and its events from now on (none missed: the watch
    /// starts under the session's lock; one published meanwhile repeats outputs already counted,
    /// which the reader skips by number).
    pub(crate) fn watch(
        &self,
        tenant: &str,
        id: SessionId,
    ) -> Result<(SessionView, tokio::sync::mpsc::Receiver<SessionEvent>), Error> {
        let (send, receive) = tokio::sync::mpsc::channel(super::bus::WATCH_BUFFER);
        let mut shard = self.sessions.shard(id);
        let entry = Self::own(&mut shard, tenant, id)?;
        if entry.life.is_open() || matches!(entry.life.phase(), Phase::Committing | Phase::TakingBack) {
            self.bus.watch(id, send);
        }
        Ok((SessionView::of(id, entry), receive))
    }

    /// The next thing for a worker to do (`None`: the host stops).
    pub(crate) fn next_work(&self) -> Option<Work> {
        self.dispatcher.next()
    }

    /// What a dispatched action needs, or `None` when its session has nothing to run after all.
    pub(crate) fn prepare(&self, dispatch: &Dispatch) -> Option<ActionCall> {
        let mut shard = self.sessions.shard(dispatch.session);
        let entry = shard.get_mut(&dispatch.session)?;
        let limits = entry.tenant.policy().limits.clone();
        let due = entry.life.start_action(limits.max_actions_per_session)?;
        Some(ActionCall {
            app: entry.code.clone()?,
            action: due.action,
            input: due.input.into(),
            state: due.state.into(),
            kv: entry.tenant.kv().clone(),
            limits: Arc::new(limits),
            fuel: dispatch.fuel,
        })
    }

    /// A dispatched action is done (or had nothing to run: `None`): its slot is released, its
    /// checkpoint queued and committed (by this worker, unless another is committing).
    pub(crate) fn finish(&self, dispatch: Dispatch, outcome: Option<ActionOutcome>) {
        let usage = outcome.as_ref().map_or(Usage::default(), |o| o.usage);
        let latency = Instant::now().saturating_duration_since(dispatch.ready_at);
        let id = dispatch.session;
        let tenant_ix = dispatch.tenant;
        self.dispatcher.complete(dispatch, &usage);
        let mut failed = None;
        self.transition(id, None, |entry| {
            let error_action = entry.code.as_ref().and_then(|app| app.error_action().map(str::to_owned));
            let tenant = entry.tenant.name().clone();
            let ran = outcome.is_some();
            let mut outcome = outcome;
            // Writes that would take the tenant past a storage quota are not kept; the others
            // take their room now, before their checkpoint is queued.
            let mut reserved = StorageUsage::default();
            if let Some(done) = &mut outcome
                && let Ok(effects) = &done.result
                && let Status::Ready { action, .. } = &entry.life.session().status
            {
                let adds = written_by(effects);
                match entry.tenant.storage().reserve_effects(|| entry.tenant.policy(), action, adds) {
                    Ok(()) => reserved = adds,
                    Err(refused) => done.result = Err(refused),
                }
            }
            if let Some(Err(failure)) = outcome.as_ref().map(|o| &o.result) {
                failed = Some(failure.kind);
            }
            let effects = entry.life.action_done(error_action.as_deref(), &tenant, outcome, now_ms());
            // What the checkpoint does not carry after all (the action failed on) is not held.
            let queued = effects.checkpoint.as_ref().map(stored_by).unwrap_or_default();
            entry.tenant.storage().reserved_gone(StorageUsage {
                kv_bytes: reserved.kv_bytes.saturating_sub(queued.kv_bytes),
                output_bytes: reserved.output_bytes.saturating_sub(queued.output_bytes),
                ..StorageUsage::default()
            });
            if !ran && let Status::Failed { failure } = &entry.life.session().status {
                failed = Some(failure.kind);
            }
            effects
        });
        self.dispatcher.with(|s| {
            let counters = s.counters_mut(tenant_ix);
            counters.latency.record(latency);
            if let Some(kind) = failed {
                *counters.failures.entry(kind).or_default() += 1;
            }
        });
        self.drive_commits();
    }

    /// Something came due on the timer thread.
    pub(crate) fn fire(&self, due: Due) {
        match due {
            Due::Wait { session, seq } => self.transition(session, None, |entry| entry.life.timer_fired(seq)),
            Due::Wake(dispatch, task) => self.dispatcher.wake(dispatch, task),
        }
    }

    /// Whether no session is queued, running or committing, and nothing waits for the store.
    pub(crate) fn is_settled(&self) -> bool {
        let mut busy = false;
        self.sessions.each(|_, entry| {
            busy |= matches!(
                entry.life.phase(),
                Phase::Creating | Phase::Queued | Phase::Running | Phase::Committing | Phase::TakingBack
            );
        });
        !busy && self.commits.is_idle()
    }
}

/// One idempotency key, as storage counts it.
const ONE_KEY: StorageUsage = StorageUsage { kv_bytes: 0, output_bytes: 0, event_keys: 1, module_bytes: 0 };
