//! [`Host`], the embeddable multi-tenant host: tenants with quotas and weights, apps with
//! versions, sessions created and fed customer events, all run by one shared pool of workers.
//!
//! One lock guards the scheduling state (scheduler, sessions, timers); it is held only for
//! bookkeeping, never while an action runs. The flow of one action:
//! 1. A session becomes ready (created, an event arrived, its timer fired, or its last action said
//!    `goto`) and its next action is queued on its app's pending queue (bounded: `queue_full`).
//! 2. A worker asks the scheduler for the next action (weighted DRR over tenants, never past an
//!    app's `max_in_flight`, skipping throttled tenants), and runs it *outside* the lock.
//! 3. When it completes, the worker frees the app's slot in the action list first, so the app's
//!    next pending action can go while this one is still being committed, then commits the
//!    checkpoint to the store, and only then releases the outputs and schedules the next step.

use crate::abi::KvRead;
use crate::app::App;
use crate::error::Error;
use crate::failure::Failure;
use crate::limits::Limits;
use crate::local::now_ms;
use crate::metrics::{MetricsSnapshot, TenantMetrics};
use crate::pool;
use crate::runtime::{CompileSource, Runtime, RuntimeConfig};
use crate::scheduler::{AppIx, Dispatch, QueueFull, Scheduler, SessionId, TenantIx, TokenBucket};
use crate::session::{Counters, Session, Status};
use crate::store::{Checkpoint, MemoryStore, Store};
use crate::timers::Timers;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

/// How a host is set up.
#[derive(Clone)]
pub struct HostConfig {
    /// The engine, default limits and deploy caps.
    pub runtime: RuntimeConfig,
    /// Worker threads of the shared pool (each runs one action at a time).
    pub workers: usize,
    /// Bound of one app's pending queue.
    pub max_pending_per_app: usize,
    /// Bound of all pending queues together.
    pub max_pending_total: usize,
    /// Customer events one session may hold while it is busy.
    pub max_inbox: usize,
    /// Where checkpoints and key-value spaces go.
    pub store: Arc<dyn Store>,
}

impl Default for HostConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        HostConfig {
            runtime: RuntimeConfig::default(),
            workers,
            max_pending_per_app: 10_000,
            max_pending_total: 200_000,
            max_inbox: 16,
            store: Arc::new(MemoryStore::default()),
        }
    }
}

/// A tenant's quota and share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Its share of the pool relative to other tenants' weights (1..=1000).
    pub weight: u32,
    /// Fuel its actions may burn per second, sustained.
    pub fuel_per_second: u64,
    /// Fuel it may burn in a burst (at least one action's cap).
    pub fuel_burst: u64,
    /// Actions of one of its apps in the action list at once.
    pub max_in_flight: u32,
    /// Sessions it may have open (not finished) at once.
    pub max_sessions: u64,
    /// What each of its actions may use.
    pub limits: Limits,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            weight: 1,
            fuel_per_second: 10_000_000_000,
            fuel_burst: 1_000_000_000,
            max_in_flight: 1,
            max_sessions: 100_000,
            limits: Limits::default(),
        }
    }
}

/// A session as its tenant may read it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// Its id.
    pub id: SessionId,
    /// The app it runs.
    pub app: String,
    /// The app version it is pinned to.
    pub version: String,
    /// Where it is.
    pub status: Status,
    /// What it has used.
    pub counters: Counters,
    /// Its latest failure.
    pub last_failure: Option<Failure>,
    /// Every output released so far, in order.
    pub outputs: Vec<String>,
}

/// Something that happened to a session, for subscribers (the demo's simulated customers, the
/// API's output streams).
#[derive(Debug, Clone)]
pub struct SessionEvent {
    /// The session.
    pub session: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// Its status after the action.
    pub status: Status,
    /// Outputs the action released.
    pub outputs: Vec<String>,
}

/// A deployed app version, as deploy reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppVersion {
    /// The app's name.
    pub app: String,
    /// The version (module sha-256, hex).
    pub version: String,
    /// Its actions.
    pub actions: Vec<String>,
    /// Whether deploying compiled anything.
    pub source: CompileSource,
}

pub(crate) struct TenantEntry {
    pub(crate) ix: TenantIx,
    pub(crate) config: TenantConfig,
    pub(crate) limits: Arc<Limits>,
    pub(crate) kv: Arc<dyn KvRead>,
    apps: HashMap<String, AppIx>,
    open_sessions: u64,
}

pub(crate) struct AppEntry {
    pub(crate) name: String,
    pub(crate) current: Arc<App>,
    versions: Vec<Arc<App>>,
}

pub(crate) struct SessionEntry {
    pub(crate) tenant: TenantIx,
    pub(crate) app: AppIx,
    pub(crate) version: Arc<App>,
    pub(crate) session: Session,
    inbox: VecDeque<Vec<u8>>,
    outputs: Vec<String>,
    /// Bumped whenever a wait ends, so a stale timer is recognised and ignored.
    pub(crate) wait_seq: u64,
}

/// Everything behind the host's lock.
pub(crate) struct State {
    pub(crate) scheduler: Scheduler,
    pub(crate) tenants: HashMap<String, TenantEntry>,
    tenant_names: Vec<String>,
    pub(crate) apps: Vec<AppEntry>,
    pub(crate) sessions: HashMap<SessionId, SessionEntry>,
    pub(crate) timers: Timers,
    next_session: u64,
    pub(crate) shutting_down: bool,
    subscribers: Vec<mpsc::Sender<SessionEvent>>,
    max_inbox: usize,
}

/// What the pool's workers and the timer thread share with the host.
pub(crate) struct Shared {
    pub(crate) runtime: Runtime,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: Mutex<State>,
    /// Signalled when work may be runnable (workers wait on it).
    pub(crate) work: Condvar,
    /// Signalled when the earliest timer changes or the host shuts down (the timer thread waits).
    pub(crate) timer_changed: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The multi-tenant host. Dropping it stops the pool after the actions in flight complete.
pub struct Host {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A tenant's view of its key-value space in the store.
struct TenantKv {
    store: Arc<dyn Store>,
    tenant: String,
}

impl KvRead for TenantKv {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        // A store that cannot answer makes the key look absent to the action; the failure is the
        // store's to report, on the commit that follows.
        self.store.kv_get(&self.tenant, key).ok().flatten()
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(Error::InvalidName { what, name: name.to_owned() }) }
}

impl Host {
    /// Builds the engine and starts the pool's workers and the timer thread.
    pub fn new(mut config: HostConfig) -> Result<Host, Error> {
        if config.workers == 0 {
            return Err(Error::Config("the pool needs at least one worker".into()));
        }
        let workers = u32::try_from(config.workers).unwrap_or(u32::MAX);
        config.runtime.engine.pool_instances = config.runtime.engine.pool_instances.max(workers);
        let shared = Arc::new(Shared {
            runtime: Runtime::new(config.runtime)?,
            store: config.store,
            state: Mutex::new(State {
                scheduler: Scheduler::new(config.max_pending_per_app, config.max_pending_total),
                tenants: HashMap::new(),
                tenant_names: Vec::new(),
                apps: Vec::new(),
                sessions: HashMap::new(),
                timers: Timers::default(),
                next_session: 1,
                shutting_down: false,
                subscribers: Vec::new(),
                max_inbox: config.max_inbox,
            }),
            work: Condvar::new(),
            timer_changed: Condvar::new(),
        });
        let mut threads = Vec::new();
        for n in 0..config.workers {
            threads.push(pool::spawn_worker(shared.clone(), n)?);
        }
        threads.push(crate::timers::spawn(shared.clone())?);
        Ok(Host { shared, threads })
    }

    /// The runtime (engine, deployed modules) this host runs on.
    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// Adds a tenant.
    pub fn create_tenant(&self, name: &str, config: TenantConfig) -> Result<(), Error> {
        check_name("tenant", name)?;
        self.check_tenant_config(&config)?;
        let mut state = self.shared.lock();
        if state.tenants.contains_key(name) {
            return Err(Error::Conflict(format!("tenant `{name}` already exists")));
        }
        let bucket = TokenBucket::new(config.fuel_per_second, config.fuel_burst, Instant::now());
        let ix = state.scheduler.add_tenant(name, config.weight, config.limits.fuel_per_action, bucket);
        let kv: Arc<dyn KvRead> = Arc::new(TenantKv { store: self.shared.store.clone(), tenant: name.to_owned() });
        let limits = Arc::new(config.limits.clone());
        state.tenant_names.push(name.to_owned());
        state
            .tenants
            .insert(name.to_owned(), TenantEntry { ix, config, limits, kv, apps: HashMap::new(), open_sessions: 0 });
        Ok(())
    }

    /// Changes a tenant's quota and weight; actions already running keep the limits they started with.
    pub fn update_tenant(&self, name: &str, config: TenantConfig) -> Result<(), Error> {
        self.check_tenant_config(&config)?;
        let mut state = self.shared.lock();
        let state = &mut *state;
        let tenant = state.tenants.get_mut(name).ok_or_else(|| Error::NotFound(format!("tenant `{name}`")))?;
        let slot = &mut state.scheduler.tenants[tenant.ix];
        slot.weight = config.weight;
        slot.fuel_per_action = config.limits.fuel_per_action;
        slot.bucket.set(config.fuel_per_second, config.fuel_burst);
        for &app in tenant.apps.values() {
            state.scheduler.apps[app].max_in_flight = config.max_in_flight.max(1);
        }
        tenant.limits = Arc::new(config.limits.clone());
        tenant.config = config;
        self.shared.work.notify_all();
        Ok(())
    }

    fn check_tenant_config(&self, config: &TenantConfig) -> Result<(), Error> {
        if !(1..=1000).contains(&config.weight) {
            return Err(Error::Config(format!("weight {} is outside 1..=1000", config.weight)));
        }
        if config.fuel_burst < config.limits.fuel_per_action {
            return Err(Error::Config(format!(
                "the fuel burst ({}) must hold at least one action's fuel ({})",
                config.fuel_burst, config.limits.fuel_per_action
            )));
        }
        if config.fuel_per_second == 0 || config.max_in_flight == 0 {
            return Err(Error::Config("fuel per second and max in flight must be positive".into()));
        }
        let pool_slot = self.shared.runtime.max_memory_bytes();
        if config.limits.memory_bytes > pool_slot {
            return Err(Error::Config(format!(
                "the memory limit ({} bytes) is above the pool's slot size ({pool_slot} bytes)",
                config.limits.memory_bytes
            )));
        }
        Ok(())
    }

    /// Seeds keys in a tenant's key-value space.
    pub fn kv_put(&self, tenant: &str, writes: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<(), Error> {
        if !self.shared.lock().tenants.contains_key(tenant) {
            return Err(Error::NotFound(format!("tenant `{tenant}`")));
        }
        self.shared.store.kv_put(tenant, writes.into_iter().collect())
    }

    /// Deploys a version of a tenant's app; new sessions of the app start on it, sessions already
    /// running stay on the version they started with.
    pub fn deploy(&self, tenant: &str, app: &str, bytes: &[u8]) -> Result<AppVersion, Error> {
        check_name("app", app)?;
        if !self.shared.lock().tenants.contains_key(tenant) {
            return Err(Error::NotFound(format!("tenant `{tenant}`")));
        }
        // Compiling happens outside the lock: the pool keeps running meanwhile.
        let deployment = self.shared.runtime.deploy(bytes)?;
        let version = deployment.app;
        let mut state = self.shared.lock();
        let state = &mut *state;
        let entry = state.tenants.get_mut(tenant).ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`")))?;
        let ix = match entry.apps.get(app) {
            Some(&ix) => ix,
            None => {
                let ix = state.scheduler.add_app(entry.ix, entry.config.max_in_flight);
                state.apps.push(AppEntry { name: app.to_owned(), current: version.clone(), versions: Vec::new() });
                entry.apps.insert(app.to_owned(), ix);
                ix
            }
        };
        let app_entry = &mut state.apps[ix];
        if !app_entry.versions.iter().any(|v| v.hash() == version.hash()) {
            app_entry.versions.push(version.clone());
        }
        app_entry.current = version.clone();
        Ok(AppVersion {
            app: app.to_owned(),
            version: version.hash().to_owned(),
            actions: version.info().actions.clone(),
            source: deployment.source,
        })
    }

    /// Starts a session of the app's current version at `entry`.
    pub fn start_session(&self, tenant: &str, app: &str, entry: &str, input: Vec<u8>) -> Result<SessionId, Error> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let owner = state.tenants.get_mut(tenant).ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`")))?;
        let &app_ix = owner.apps.get(app).ok_or_else(|| Error::NotFound(format!("app `{app}`")))?;
        if input.len() > owner.limits.max_input_bytes {
            return Err(Error::EventTooLarge { size: input.len(), limit: owner.limits.max_input_bytes });
        }
        if owner.open_sessions >= owner.config.max_sessions {
            return Err(Error::Quota(format!("tenant `{tenant}` already has {} open sessions", owner.open_sessions)));
        }
        let version = state.apps[app_ix].current.clone();
        let session = Session::start(&version, entry, input)?;
        state.scheduler.has_room(app_ix).map_err(queue_full)?;
        let id = SessionId(state.next_session);
        state.next_session += 1;
        owner.open_sessions += 1;
        let tenant_ix = owner.ix;
        state.scheduler.tenants[tenant_ix].counters.sessions_started += 1;
        state.sessions.insert(
            id,
            SessionEntry {
                tenant: tenant_ix,
                app: app_ix,
                version,
                session,
                inbox: VecDeque::new(),
                outputs: Vec::new(),
                wait_seq: 0,
            },
        );
        state.scheduler.push(app_ix, id, Instant::now());
        self.shared.work.notify_one();
        Ok(id)
    }

    /// Delivers a customer event. A waiting session runs its awaited action with it; a busy one
    /// keeps it in its inbox (bounded) for its next wait.
    pub fn deliver(&self, tenant: &str, session: SessionId, event: Vec<u8>) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let owner = state.tenants.get(tenant).ok_or_else(|| Error::NotFound(format!("tenant `{tenant}`")))?;
        let tenant_ix = owner.ix;
        if event.len() > owner.limits.max_input_bytes {
            return Err(Error::EventTooLarge { size: event.len(), limit: owner.limits.max_input_bytes });
        }
        let entry = match state.sessions.get_mut(&session) {
            Some(entry) if entry.tenant == tenant_ix => entry,
            _ => return Err(Error::NotFound(format!("session {session}"))),
        };
        match &entry.session.status {
            Status::Done { .. } | Status::Failed { .. } => {
                Err(Error::SessionState { status: entry.session.status.name(), request: "take a customer event" })
            }
            Status::Waiting { .. } => {
                state.scheduler.has_room(entry.app).map_err(queue_full)?;
                entry.session.deliver(event)?;
                entry.wait_seq += 1;
                state.scheduler.push(entry.app, session, Instant::now());
                self.shared.work.notify_one();
                Ok(())
            }
            Status::Ready { .. } => {
                if entry.inbox.len() >= state.max_inbox {
                    return Err(Error::QueueFull(format!(
                        "session {session} already holds {} undelivered events",
                        state.max_inbox
                    )));
                }
                entry.inbox.push_back(event);
                Ok(())
            }
        }
    }

    /// Reads a session of `tenant` (not found if it is another tenant's).
    pub fn session(&self, tenant: &str, session: SessionId) -> Result<SessionView, Error> {
        let state = self.shared.lock();
        let tenant_ix = state.tenants.get(tenant).map(|t| t.ix);
        match state.sessions.get(&session) {
            Some(entry) if Some(entry.tenant) == tenant_ix => {
                let app = &state.apps[entry.app];
                Ok(SessionView {
                    id: session,
                    app: app.name.clone(),
                    version: entry.version.hash().to_owned(),
                    status: entry.session.status.clone(),
                    counters: entry.session.counters.clone(),
                    last_failure: entry.session.last_failure.clone(),
                    outputs: entry.outputs.clone(),
                })
            }
            _ => Err(Error::NotFound(format!("session {session}"))),
        }
    }

    /// Events of every session from now on (one receiver per call).
    pub fn subscribe(&self) -> mpsc::Receiver<SessionEvent> {
        let (send, receive) = mpsc::channel();
        self.shared.lock().subscribers.push(send);
        receive
    }

    /// The figures of every tenant now.
    pub fn metrics(&self) -> MetricsSnapshot {
        let state = self.shared.lock();
        let tenants = state
            .tenant_names
            .iter()
            .filter_map(|name| state.tenants.get(name).map(|t| (name, t.ix)))
            .map(|(name, ix)| {
                let slot = &state.scheduler.tenants[ix];
                TenantMetrics::new(name, slot.weight, &slot.counters, slot.queue_depth, slot.in_flight)
            })
            .collect();
        MetricsSnapshot {
            tenants,
            queue_depth: u64::try_from(state.scheduler.pending_total()).unwrap_or(u64::MAX),
            sessions: u64::try_from(state.sessions.len()).unwrap_or(u64::MAX),
            waiting: state.sessions.values().filter(|s| matches!(s.session.status, Status::Waiting { .. })).count()
                as u64,
        }
    }

    /// The most actions of `tenant`'s `app` that were ever in the action list at once.
    pub fn peak_in_flight(&self, tenant: &str, app: &str) -> Option<u32> {
        let state = self.shared.lock();
        let &ix = state.tenants.get(tenant)?.apps.get(app)?;
        Some(state.scheduler.apps[ix].peak_in_flight)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shared.lock().shutting_down = true;
        self.shared.work.notify_all();
        self.shared.timer_changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn queue_full(full: QueueFull) -> Error {
    Error::QueueFull(match full {
        QueueFull::App(limit) => format!("the app already has {limit} actions pending"),
        QueueFull::Total(limit) => format!("the host already has {limit} actions pending"),
    })
}

/// What booking an action changed that the caller must act on.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// A timer was armed that is now the earliest: the timer thread must wake sooner.
    pub(crate) timer_first: bool,
}

/// What a worker needs to run a dispatched action.
pub(crate) struct Job {
    pub(crate) app: Arc<App>,
    pub(crate) action: String,
    pub(crate) input: Vec<u8>,
    pub(crate) state: Vec<u8>,
    pub(crate) kv: Arc<dyn KvRead>,
    pub(crate) limits: Arc<Limits>,
}

impl State {
    /// Takes what the dispatched action needs from its session, or `None` when the session has
    /// nothing due after all (its loop guard just ended it).
    pub(crate) fn prepare(&mut self, dispatch: &Dispatch) -> Option<Job> {
        let tenant_name = &self.tenant_names[dispatch.tenant];
        let tenant = self.tenants.get(tenant_name)?;
        let entry = self.sessions.get_mut(&dispatch.session)?;
        let (action, input) = entry.session.due(tenant.limits.max_actions_per_session)?;
        Some(Job {
            app: entry.version.clone(),
            action: action.to_owned(),
            input: input.to_vec(),
            state: entry.session.state.clone(),
            kv: tenant.kv.clone(),
            limits: tenant.limits.clone(),
        })
    }

    /// Books a completed (or skipped) action: frees its slot, applies the outcome to the session,
    /// commits the checkpoint, releases outputs and schedules what comes next.
    pub(crate) fn finish(
        &mut self,
        store: &dyn Store,
        dispatch: &Dispatch,
        outcome: Option<crate::sandbox::ActionOutcome>,
        now: Instant,
    ) -> Finished {
        // The slot goes back first: the app's next action may start while this one commits.
        let fuel = outcome.as_ref().map_or(0, |o| o.fuel);
        self.scheduler.complete(dispatch, fuel);
        let mut finished = Finished::default();
        let Some(entry) = self.sessions.get_mut(&dispatch.session) else { return finished };
        let tenant = &mut self.scheduler.tenants[dispatch.tenant];
        let mut outputs = Vec::new();
        if outcome.is_none()
            && let Status::Failed { failure } = &entry.session.status
        {
            // Ended by its loop guard before the action could run.
            *tenant.counters.failures.entry(failure.kind).or_default() += 1;
        }
        if let Some(outcome) = outcome {
            tenant.counters.latency.record(now.saturating_duration_since(dispatch.ready_at));
            if let Err(failure) = &outcome.result {
                *tenant.counters.failures.entry(failure.kind).or_default() += 1;
            }
            let released = entry.session.apply(&entry.version, outcome.fuel, outcome.result, now_ms());
            let checkpoint = Checkpoint {
                session: dispatch.session,
                tenant: tenant.name.clone(),
                snapshot: entry.session.clone(),
                outputs: released.outputs,
                kv_writes: released.kv_writes,
            };
            outputs = checkpoint.outputs.clone();
            if let Err(error) = store.commit(vec![checkpoint]) {
                // Nothing is released from an action whose checkpoint did not commit.
                let failure =
                    Failure::new(crate::failure::FailureKind::Trap, "", format!("checkpoint failed: {error}"));
                entry.session.status = Status::Failed { failure };
                outputs.clear();
            }
        }
        entry.outputs.extend(outputs.iter().cloned());
        // A session that now waits takes the next event of its inbox at once.
        if matches!(entry.session.status, Status::Waiting { .. })
            && let Some(event) = entry.inbox.pop_front()
            && entry.session.deliver(event).is_ok()
        {
            entry.wait_seq += 1;
        }
        match &entry.session.status {
            Status::Ready { .. } => self.scheduler.push(dispatch.app, dispatch.session, now),
            Status::Waiting { wait, .. } => {
                entry.wait_seq += 1;
                if let Some(ms) = wait.timeout_ms {
                    let at = now + std::time::Duration::from_millis(ms);
                    finished.timer_first = self.timers.arm(at, dispatch.session, entry.wait_seq);
                }
            }
            Status::Done { .. } | Status::Failed { .. } => {
                tenant.counters.sessions_finished += 1;
                entry.inbox.clear();
                if let Some(owner) = self.tenants.get_mut(&self.tenant_names[dispatch.tenant]) {
                    owner.open_sessions = owner.open_sessions.saturating_sub(1);
                }
            }
        }
        if !self.subscribers.is_empty() {
            let event = SessionEvent {
                session: dispatch.session,
                tenant: self.tenant_names[dispatch.tenant].clone(),
                status: entry.session.status.clone(),
                outputs,
            };
            self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        }
        finished
    }

    /// A timer fired: if the session still waits on that very wait, its timeout action is queued.
    pub(crate) fn fire_timer(&mut self, session: SessionId, seq: u64, now: Instant) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else { return false };
        if entry.wait_seq != seq || entry.session.time_out().is_err() {
            return false;
        }
        entry.wait_seq += 1;
        self.scheduler.push(entry.app, session, now);
        true
    }
}
