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
//!    next pending action can go while this one is being committed, applies the outcome to the
//!    session and hands the checkpoint to the checkpoint writer (`checkpoint.rs`).
//! 4. The writer commits checkpoints in groups; only then are the outputs released and the
//!    session's next step queued, or its timer armed.
//!
//! A host built on a store that already holds data resumes it: tenants, apps, and every session,
//! ready ones queued again (those caught mid-action re-run from their last checkpoint), waiting
//! ones re-armed with what is left of their timeout.

use crate::abi::KvRead;
use crate::app::App;
use crate::error::Error;
use crate::failure::Failure;
use crate::limits::Limits;
use crate::metrics::{MetricsSnapshot, TenantMetrics};
use crate::pool;
use crate::runtime::{CompileSource, Runtime, RuntimeConfig};
use crate::scheduler::{AppIx, Dispatch, QueueFull, Scheduler, SessionId, TenantIx, TokenBucket};
use crate::session::{Counters, Session, Status, now_ms};
use crate::store::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, MemoryStore, SessionRecord, Store, TenantRecord, TokenRecord,
};
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
    /// Where tenants, apps, checkpoints, inboxes and key-value spaces are kept; a store that
    /// already holds data is resumed from.
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Its share of the pool relative to other tenants' weights (1..=1000).
    pub weight: u32,
    /// Fuel its actions may burn per second, sustained.
    pub fuel_per_second: u64,
    /// Fuel it may burn in a burst (at least one action's cap).
    pub fuel_burst: u64,
    /// Actions of one of its apps in the action list at once.
    pub max_in_flight: u32,
    /// Actions of all its apps that may run at once (0: up to every worker). In any case a tenant
    /// never takes the last free worker while another tenant has work ready.
    pub max_concurrent: u32,
    /// Sessions it may have open (not finished) at once.
    pub max_sessions: u64,
    /// Apps it may have.
    pub max_apps: u32,
    /// Versions one of its apps may have.
    pub max_versions: u32,
    /// What each of its actions may use.
    pub limits: Limits,
    /// A suspended tenant's sessions and events are refused and its queued actions wait (set
    /// with [`Host::suspend_tenant`]).
    pub suspended: bool,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            weight: 1,
            fuel_per_second: 10_000_000_000,
            fuel_burst: 1_000_000_000,
            max_in_flight: 1,
            max_concurrent: 0,
            max_sessions: 100_000,
            max_apps: 100,
            max_versions: 100,
            limits: Limits::default(),
            suspended: false,
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
    /// Its state blob.
    pub state: Vec<u8>,
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
    /// How many outputs the session had released before these (the first of these is number
    /// `first_output + 1`).
    pub first_output: usize,
}

/// What delivering a customer event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The event is durable in the session's inbox and will be applied once.
    Accepted,
    /// An event with the same idempotency key was acknowledged before: this one changed nothing.
    Duplicate,
}

/// A tenant as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// Its name.
    pub name: String,
    /// Its quota, weight and whether it is suspended.
    pub config: TenantConfig,
    /// Sessions it has open.
    pub open_sessions: u64,
    /// Its apps, by name.
    pub apps: Vec<AppInfo>,
}

/// An app as its tenant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    /// Its name.
    pub name: String,
    /// The version new sessions start on.
    pub version: String,
    /// That version's actions.
    pub actions: Vec<String>,
    /// Every version it has had, oldest first.
    pub versions: Vec<String>,
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
    /// Every version, oldest first (hashes).
    versions: Vec<String>,
}

pub(crate) struct SessionEntry {
    pub(crate) tenant: TenantIx,
    pub(crate) app: AppIx,
    pub(crate) version: Arc<App>,
    pub(crate) session: Session,
    /// The status as of its last committed checkpoint: what readers see (the session itself
    /// runs ahead while a checkpoint is on its way, and its outputs are not released yet).
    visible: Status,
    /// Acknowledged events not yet consumed, oldest first.
    inbox: VecDeque<InboxEvent>,
    /// The inbox event the running (or next) action consumes.
    consumed: Option<u64>,
    /// Its last checkpoint is on its way to the store: nothing may be scheduled until it lands.
    committing: bool,
    /// Its next action is in a pending queue or running.
    scheduled: bool,
    /// Cancelled while busy: whatever its action does, the session ends cancelled.
    cancelled: bool,
    fence: u64,
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
    /// Watchers of single sessions (the API's output streams); dropped when the session ends.
    watchers: HashMap<SessionId, Vec<tokio::sync::mpsc::UnboundedSender<SessionEvent>>>,
    max_inbox: usize,
    /// Tenants' API tokens by hash: (token id, tenant).
    tokens: HashMap<String, (String, String)>,
    /// Checkpoints of completed actions waiting for the next group commit.
    pub(crate) commit_queue: Vec<Checkpoint>,
    /// A worker is committing a group (see `checkpoint.rs`).
    pub(crate) commit_in_progress: bool,
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

/// The multi-tenant host. Dropping it stops the pool after the actions in flight complete and
/// their checkpoints are committed.
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

fn not_found(what: &str) -> Error {
    Error::NotFound(what.to_owned())
}

impl Host {
    /// Builds the engine, resumes whatever the store holds, and starts the pool's workers and the
    /// timer thread.
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
                scheduler: Scheduler::new(config.workers, config.max_pending_per_app, config.max_pending_total),
                tenants: HashMap::new(),
                tenant_names: Vec::new(),
                apps: Vec::new(),
                sessions: HashMap::new(),
                timers: Timers::default(),
                next_session: 1,
                shutting_down: false,
                subscribers: Vec::new(),
                watchers: HashMap::new(),
                max_inbox: config.max_inbox,
                tokens: HashMap::new(),
                commit_queue: Vec::new(),
                commit_in_progress: false,
            }),
            work: Condvar::new(),
            timer_changed: Condvar::new(),
        });
        let image = shared.store.load()?;
        resume(&shared, image)?;
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
        self.shared.store.put_tenant(&TenantRecord { name: name.to_owned(), config: config.clone() })?;
        state.add_tenant(&self.shared.store, name, config);
        Ok(())
    }

    /// Suspends a tenant (its new sessions and events are refused, its queued actions wait) or
    /// lifts the suspension.
    pub fn suspend_tenant(&self, name: &str, suspended: bool) -> Result<(), Error> {
        let config = self.tenant(name)?.config;
        self.update_tenant(name, TenantConfig { suspended, ..config })
    }

    /// Deletes a tenant with everything it has: apps, finished sessions, key-value space. A
    /// tenant with open sessions is refused (cancel them, or let them finish, first).
    pub fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let tenant = state.tenants.get(name).ok_or_else(|| not_found(&format!("tenant `{name}`")))?;
        if tenant.open_sessions > 0 {
            return Err(Error::Conflict(format!(
                "tenant `{name}` has {} open sessions: cancel them (or let them finish) first",
                tenant.open_sessions
            )));
        }
        self.shared.store.delete_tenant(name)?;
        let ix = tenant.ix;
        state.tenants.remove(name);
        state.tokens.retain(|_, (_, owner)| owner != name);
        state.sessions.retain(|_, s| s.tenant != ix);
        let State { watchers, sessions, .. } = &mut *state;
        watchers.retain(|id, _| sessions.contains_key(id));
        Ok(())
    }

    /// Issues an API token for a tenant: returns its id and the token itself, which is shown this
    /// once (only its sha-256 is kept).
    pub fn issue_token(&self, tenant: &str) -> Result<(String, String), Error> {
        if !self.shared.lock().tenants.contains_key(tenant) {
            return Err(not_found(&format!("tenant `{tenant}`")));
        }
        let secret = random_hex(32)?;
        let token = format!("tst_{secret}");
        let hash = crate::app::module_hash(token.as_bytes());
        let id = format!("tok_{}", &random_hex(8)?);
        self.shared.store.put_token(&TokenRecord { id: id.clone(), tenant: tenant.to_owned(), hash: hash.clone() })?;
        self.shared.lock().tokens.insert(hash, (id.clone(), tenant.to_owned()));
        Ok((id, token))
    }

    /// Revokes a tenant's token.
    pub fn revoke_token(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if !self.shared.store.delete_token(tenant, id)? {
            return Err(not_found(&format!("token `{id}`")));
        }
        self.shared.lock().tokens.retain(|_, (token, _)| token != id);
        Ok(())
    }

    /// The tenant a token acts for, if it is a live token.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        let hash = crate::app::module_hash(token.as_bytes());
        self.shared.lock().tokens.get(&hash).map(|(_, tenant)| tenant.clone())
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> Vec<TenantInfo> {
        let state = self.shared.lock();
        let mut names: Vec<&String> = state.tenants.keys().collect();
        names.sort();
        names.into_iter().filter_map(|name| state.tenant_info(name)).collect()
    }

    /// One tenant.
    pub fn tenant(&self, name: &str) -> Result<TenantInfo, Error> {
        self.shared.lock().tenant_info(name).ok_or_else(|| not_found(&format!("tenant `{name}`")))
    }

    /// Changes a tenant's quota and weight; actions already running keep the limits they started with.
    pub fn update_tenant(&self, name: &str, config: TenantConfig) -> Result<(), Error> {
        self.check_tenant_config(&config)?;
        let mut state = self.shared.lock();
        let state = &mut *state;
        let tenant = state.tenants.get_mut(name).ok_or_else(|| not_found(&format!("tenant `{name}`")))?;
        self.shared.store.put_tenant(&TenantRecord { name: name.to_owned(), config: config.clone() })?;
        let slot = &mut state.scheduler.tenants[tenant.ix];
        slot.weight = config.weight;
        slot.suspended = config.suspended;
        slot.max_concurrent = config.max_concurrent;
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
        if config.max_apps == 0 || config.max_versions == 0 {
            return Err(Error::Config("max apps and max versions must be positive".into()));
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
            return Err(not_found(&format!("tenant `{tenant}`")));
        }
        self.shared.store.kv_put(tenant, writes.into_iter().collect())
    }

    /// Deploys a version of a tenant's app; new sessions of the app start on it, sessions already
    /// running stay on the version they started with.
    pub fn deploy(&self, tenant: &str, app: &str, bytes: &[u8]) -> Result<AppVersion, Error> {
        check_name("app", app)?;
        self.shared.lock().check_app_quota(tenant, app, &crate::app::module_hash(bytes))?;
        // Compiling and storing happen outside the lock: the pool keeps running meanwhile.
        let deployment = self.shared.runtime.deploy(bytes)?;
        let version = deployment.app;
        self.shared.lock().check_app_quota(tenant, app, version.hash())?;
        let record = AppRecord { tenant: tenant.to_owned(), app: app.to_owned(), version: version.hash().to_owned() };
        self.shared.store.put_app(&record, bytes)?;
        self.shared.lock().set_app(tenant, app, version.clone())?;
        Ok(AppVersion {
            app: app.to_owned(),
            version: version.hash().to_owned(),
            actions: version.info().actions.clone(),
            source: deployment.source,
        })
    }

    /// Starts a session of the app's current version at `entry`. It is stored before this returns.
    pub fn start_session(&self, tenant: &str, app: &str, entry: &str, input: Vec<u8>) -> Result<SessionId, Error> {
        let (record, tenant_ix, app_ix, version) = {
            let mut state = self.shared.lock();
            let state = &mut *state;
            let owner = state.tenants.get(tenant).ok_or_else(|| not_found(&format!("tenant `{tenant}`")))?;
            let &app_ix = owner.apps.get(app).ok_or_else(|| not_found(&format!("app `{app}`")))?;
            if owner.config.suspended {
                return Err(Error::Suspended(tenant.to_owned()));
            }
            if input.len() > owner.limits.max_input_bytes {
                return Err(Error::EventTooLarge { size: input.len(), limit: owner.limits.max_input_bytes });
            }
            if owner.open_sessions >= owner.config.max_sessions {
                return Err(Error::Quota(format!(
                    "tenant `{tenant}` already has {} open sessions",
                    owner.open_sessions
                )));
            }
            let version = state.apps[app_ix].current.clone();
            let session = Session::start(&version, entry, input)?;
            state.scheduler.has_room(app_ix).map_err(queue_full)?;
            let id = SessionId(state.next_session);
            state.next_session += 1;
            let record =
                SessionRecord { id, tenant: tenant.to_owned(), app: app.to_owned(), snapshot: session, fence: 0 };
            (record, owner.ix, app_ix, version)
        };
        // Durable before it is acknowledged; the store is written outside the lock.
        self.shared.store.create_session(&record)?;
        let mut state = self.shared.lock();
        let id = record.id;
        state.insert_session(tenant_ix, app_ix, version, record, Vec::new(), Vec::new());
        state.schedule(id, Instant::now(), &self.shared);
        Ok(id)
    }

    /// Delivers a customer event. It is acknowledged (this returns `Ok`) once it is durable in the
    /// session's inbox; the session's awaited action then runs with it, now or (if the session is
    /// busy) at its next wait. With an idempotency key, a retried delivery is acknowledged again
    /// but applied once.
    pub fn deliver(
        &self,
        tenant: &str,
        session: SessionId,
        event: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Delivery, Error> {
        {
            let state = self.shared.lock();
            let owner = state.tenants.get(tenant).ok_or_else(|| not_found(&format!("tenant `{tenant}`")))?;
            if owner.config.suspended {
                return Err(Error::Suspended(tenant.to_owned()));
            }
            if event.len() > owner.limits.max_input_bytes {
                return Err(Error::EventTooLarge { size: event.len(), limit: owner.limits.max_input_bytes });
            }
            let entry = match state.sessions.get(&session) {
                Some(entry) if entry.tenant == owner.ix => entry,
                _ => return Err(not_found(&format!("session {session}"))),
            };
            if entry.session.status.is_finished() {
                // A retry of an event acknowledged before the session ended is acknowledged again.
                if let Some(key) = idempotency_key
                    && self.shared.store.has_event_key(session, key)?
                {
                    return Ok(Delivery::Duplicate);
                }
                return Err(Error::SessionState {
                    status: entry.session.status.name(),
                    request: "take a customer event",
                });
            }
            if entry.inbox.len() >= state.max_inbox {
                return Err(Error::QueueFull(format!(
                    "session {session} already holds {} undelivered events",
                    state.max_inbox
                )));
            }
            if matches!(entry.session.status, Status::Waiting { .. }) {
                state.scheduler.has_room(entry.app).map_err(queue_full)?;
            }
        }
        let seq = match self.shared.store.append_event(session, &event, idempotency_key)? {
            Appended::Duplicate => return Ok(Delivery::Duplicate),
            Appended::New(seq) => seq,
        };
        let mut state = self.shared.lock();
        if let Some(entry) = state.sessions.get_mut(&session) {
            entry.inbox.push_back(InboxEvent { seq, event });
        }
        state.schedule(session, Instant::now(), &self.shared);
        Ok(Delivery::Accepted)
    }

    /// Cancels a session of `tenant`: it ends `cancelled` (an action already running completes
    /// first, and its effects are kept). Its inbox is dropped.
    pub fn cancel_session(&self, tenant: &str, session: SessionId) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let tenant_ix = state.tenants.get(tenant).map(|t| t.ix);
        let entry = match state.sessions.get_mut(&session) {
            Some(entry) if Some(entry.tenant) == tenant_ix => entry,
            _ => return Err(not_found(&format!("session {session}"))),
        };
        if entry.session.status.is_finished() || entry.cancelled {
            return Err(Error::SessionState { status: entry.session.status.name(), request: "be cancelled" });
        }
        entry.cancelled = true;
        entry.session.status = Status::Cancelled;
        if !entry.scheduled && !entry.committing {
            // Idle (waiting for the customer): its cancellation is a checkpoint of its own.
            state.checkpoint_idle(session);
            drop(crate::checkpoint::commit_queued(&self.shared, state));
        }
        // Otherwise its queued or running action's checkpoint records it.
        Ok(())
    }

    /// Reads a session of `tenant` (not found if it is another tenant's).
    pub fn session(&self, tenant: &str, session: SessionId) -> Result<SessionView, Error> {
        let state = self.shared.lock();
        let tenant_ix = state.tenants.get(tenant).map(|t| t.ix);
        match state.sessions.get(&session) {
            Some(entry) if Some(entry.tenant) == tenant_ix => Ok(state.view(session, entry)),
            _ => Err(not_found(&format!("session {session}"))),
        }
    }

    /// Every session of every tenant, by id, with its tenant's name: for operators' tools.
    pub fn sessions(&self) -> Vec<(String, SessionView)> {
        let state = self.shared.lock();
        let mut all: Vec<_> = state
            .sessions
            .iter()
            .map(|(&id, entry)| (state.tenant_names[entry.tenant].clone(), state.view(id, entry)))
            .collect();
        all.sort_by_key(|(_, view)| view.id);
        all
    }

    /// Blocks until no session is queued, running or being committed (every one waits for a
    /// customer or has finished).
    pub fn settle(&self) {
        let events = self.subscribe();
        loop {
            {
                let state = self.shared.lock();
                if state.commit_queue.is_empty() && state.sessions.values().all(|s| !s.scheduled && !s.committing) {
                    return;
                }
            }
            // Every commit sends an event; the timeout only guards against a missed one.
            let _ = events.recv_timeout(std::time::Duration::from_millis(50));
        }
    }

    /// A session of `tenant` as it stands, and its events from then on (none missed, none twice:
    /// both are taken under one lock). The receiver ends after the event that finishes the
    /// session; usable from async code without blocking a thread.
    pub fn watch_session(
        &self,
        tenant: &str,
        session: SessionId,
    ) -> Result<(SessionView, tokio::sync::mpsc::UnboundedReceiver<SessionEvent>), Error> {
        let mut state = self.shared.lock();
        let tenant_ix = state.tenants.get(tenant).map(|t| t.ix);
        let view = match state.sessions.get(&session) {
            Some(entry) if Some(entry.tenant) == tenant_ix => state.view(session, entry),
            _ => return Err(not_found(&format!("session {session}"))),
        };
        let (send, receive) = tokio::sync::mpsc::unbounded_channel();
        if !view.status.is_finished() || state.sessions.get(&session).is_some_and(|e| e.committing) {
            state.watchers.entry(session).or_default().push(send);
        }
        Ok((view, receive))
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
        // Whatever the workers queued last is committed before the host goes.
        drop(crate::checkpoint::commit_queued(&self.shared, self.shared.lock()));
    }
}

/// Rebuilds the host's state from what the store holds.
fn resume(shared: &Shared, image: Image) -> Result<(), Error> {
    let module = |hash: &str| -> Result<Arc<App>, Error> {
        let bytes = image
            .modules
            .get(hash)
            .ok_or_else(|| Error::Store(format!("the store lacks the module of app version {hash}")))?;
        Ok(shared.runtime.deploy(bytes)?.app)
    };
    let mut state = shared.lock();
    for tenant in &image.tenants {
        state.add_tenant(&shared.store, &tenant.name, tenant.config.clone());
    }
    // Versions in the order they were deployed, then the current ones (a redeploy of an older
    // version makes it current again).
    for app in image.app_versions.iter().chain(&image.apps) {
        state.set_app(&app.tenant, &app.app, module(&app.version)?)?;
    }
    for token in image.tokens {
        state.tokens.insert(token.hash, (token.id, token.tenant));
    }
    let now = Instant::now();
    for stored in image.sessions {
        let record = stored.record;
        let id = record.id;
        let tenant = state.tenants.get(&record.tenant).ok_or_else(|| {
            Error::Store(format!("session {id} belongs to tenant `{}`, which the store lacks", record.tenant))
        })?;
        let &app_ix = tenant.apps.get(&record.app).ok_or_else(|| {
            Error::Store(format!("session {id} belongs to app `{}`, which the store lacks", record.app))
        })?;
        let tenant_ix = tenant.ix;
        let version = module(&record.snapshot.app)?;
        state.next_session = state.next_session.max(id.0 + 1);
        state.insert_session(tenant_ix, app_ix, version, record, stored.inbox, stored.outputs);
        state.schedule(id, now, shared);
    }
    Ok(())
}

/// `bytes` random bytes from the operating system, as hex.
fn random_hex(bytes: usize) -> Result<String, Error> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(crate::app::hex(&buf))
}

fn queue_full(full: QueueFull) -> Error {
    Error::QueueFull(match full {
        QueueFull::App(limit) => format!("the app already has {limit} actions pending"),
        QueueFull::Total(limit) => format!("the host already has {limit} actions pending"),
    })
}

/// What a worker needs to run a dispatched action.
pub(crate) struct Job {
    pub(crate) app: Arc<App>,
    /// The fuel the scheduler reserved for it: what the sandbox gets.
    pub(crate) fuel: u64,
    pub(crate) action: String,
    pub(crate) input: Vec<u8>,
    pub(crate) state: Vec<u8>,
    pub(crate) kv: Arc<dyn KvRead>,
    pub(crate) limits: Arc<Limits>,
}

impl State {
    fn tenant_info(&self, name: &str) -> Option<TenantInfo> {
        let tenant = self.tenants.get(name)?;
        let mut apps: Vec<AppInfo> = tenant
            .apps
            .iter()
            .map(|(app, &ix)| AppInfo {
                name: app.clone(),
                version: self.apps[ix].current.hash().to_owned(),
                actions: self.apps[ix].current.info().actions.clone(),
                versions: self.apps[ix].versions.clone(),
            })
            .collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Some(TenantInfo {
            name: name.to_owned(),
            config: tenant.config.clone(),
            open_sessions: tenant.open_sessions,
            apps,
        })
    }

    fn view(&self, id: SessionId, entry: &SessionEntry) -> SessionView {
        SessionView {
            id,
            app: self.apps[entry.app].name.clone(),
            version: entry.version.hash().to_owned(),
            // While a checkpoint is on its way, readers see the last committed status: the
            // outputs of the step after it are not released yet.
            status: if entry.committing { entry.visible.clone() } else { entry.session.status.clone() },
            counters: entry.session.counters.clone(),
            last_failure: entry.session.last_failure.clone(),
            outputs: entry.outputs.clone(),
            state: entry.session.state.clone(),
        }
    }

    fn add_tenant(&mut self, store: &Arc<dyn Store>, name: &str, config: TenantConfig) {
        let bucket = TokenBucket::new(config.fuel_per_second, config.fuel_burst, Instant::now());
        let ix = self.scheduler.add_tenant(name, config.weight, config.limits.fuel_per_action, bucket);
        self.scheduler.tenants[ix].suspended = config.suspended;
        self.scheduler.tenants[ix].max_concurrent = config.max_concurrent;
        let kv: Arc<dyn KvRead> = Arc::new(TenantKv { store: store.clone(), tenant: name.to_owned() });
        let limits = Arc::new(config.limits.clone());
        self.tenant_names.push(name.to_owned());
        self.tenants
            .insert(name.to_owned(), TenantEntry { ix, config, limits, kv, apps: HashMap::new(), open_sessions: 0 });
    }

    /// Refuses a deploy that would take a tenant past its apps or an app past its versions.
    fn check_app_quota(&self, tenant: &str, app: &str, hash: &str) -> Result<(), Error> {
        let entry = self.tenants.get(tenant).ok_or_else(|| not_found(&format!("tenant `{tenant}`")))?;
        match entry.apps.get(app) {
            None if entry.apps.len() >= usize::try_from(entry.config.max_apps).unwrap_or(usize::MAX) => {
                Err(Error::Quota(format!("tenant `{tenant}` already has {} apps, its limit", entry.apps.len())))
            }
            Some(&ix)
                if !self.apps[ix].versions.iter().any(|v| v == hash)
                    && self.apps[ix].versions.len()
                        >= usize::try_from(entry.config.max_versions).unwrap_or(usize::MAX) =>
            {
                Err(Error::Quota(format!(
                    "app `{app}` already has {} versions, the tenant's limit",
                    self.apps[ix].versions.len()
                )))
            }
            _ => Ok(()),
        }
    }

    fn set_app(&mut self, tenant: &str, app: &str, version: Arc<App>) -> Result<(), Error> {
        let entry = self.tenants.get_mut(tenant).ok_or_else(|| not_found(&format!("tenant `{tenant}`")))?;
        let hash = version.hash().to_owned();
        let ix = match entry.apps.get(app) {
            Some(&ix) => {
                self.apps[ix].current = version;
                ix
            }
            None => {
                let ix = self.scheduler.add_app(entry.ix, entry.config.max_in_flight);
                self.apps.push(AppEntry { name: app.to_owned(), current: version, versions: Vec::new() });
                entry.apps.insert(app.to_owned(), ix);
                ix
            }
        };
        let versions = &mut self.apps[ix].versions;
        versions.retain(|v| *v != hash);
        versions.push(hash);
        Ok(())
    }

    fn insert_session(
        &mut self,
        tenant: TenantIx,
        app: AppIx,
        version: Arc<App>,
        record: SessionRecord,
        inbox: Vec<InboxEvent>,
        outputs: Vec<String>,
    ) {
        let finished = record.snapshot.status.is_finished();
        let slot = &mut self.scheduler.tenants[tenant];
        slot.counters.sessions_started += 1;
        if finished {
            slot.counters.sessions_finished += 1;
        } else if let Some(owner) = self.tenants.get_mut(&self.tenant_names[tenant]) {
            owner.open_sessions += 1;
        }
        self.sessions.insert(
            record.id,
            SessionEntry {
                tenant,
                app,
                version,
                visible: record.snapshot.status.clone(),
                session: record.snapshot,
                inbox: inbox.into(),
                consumed: None,
                committing: false,
                scheduled: false,
                cancelled: false,
                fence: record.fence,
                outputs,
                wait_seq: 0,
            },
        );
    }

    /// Moves an idle session on: a waiting one takes the first event of its inbox (or has its
    /// timer armed, with what is left of its timeout), a ready one is queued. A session whose
    /// checkpoint is being committed, or that is queued or running, is left alone.
    pub(crate) fn schedule(&mut self, id: SessionId, now: Instant, shared: &Shared) {
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        if entry.committing || entry.scheduled {
            return;
        }
        if let Status::Waiting { .. } = entry.session.status
            && let Some(event) = entry.inbox.pop_front()
        {
            if entry.session.deliver(event.event).is_ok() {
                entry.consumed = Some(event.seq);
                entry.wait_seq += 1;
                entry.scheduled = true;
                self.scheduler.push(entry.app, id, now);
                shared.work.notify_one();
            }
            return;
        }
        match &entry.session.status {
            Status::Ready { .. } => {
                entry.scheduled = true;
                self.scheduler.push(entry.app, id, now);
                shared.work.notify_one();
            }
            Status::Waiting { wait, since_ms } => {
                entry.wait_seq += 1;
                if let Some(timeout) = wait.timeout_ms {
                    let remaining = (since_ms + timeout).saturating_sub(now_ms());
                    if self.timers.arm(now + std::time::Duration::from_millis(remaining), id, entry.wait_seq) {
                        shared.timer_changed.notify_one();
                    }
                }
            }
            Status::Done { .. } | Status::Failed { .. } | Status::Cancelled => {}
        }
    }

    /// Takes what the dispatched action needs from its session, or `None` when the session has
    /// nothing due after all (its loop guard just ended it).
    pub(crate) fn prepare(&mut self, dispatch: &Dispatch) -> Option<Job> {
        let tenant_name = &self.tenant_names[dispatch.tenant];
        let tenant = self.tenants.get(tenant_name)?;
        let entry = self.sessions.get_mut(&dispatch.session)?;
        let (action, input) = entry.session.due(tenant.limits.max_actions_per_session)?;
        Some(Job {
            app: entry.version.clone(),
            fuel: dispatch.fuel,
            action: action.to_owned(),
            input: input.to_vec(),
            state: entry.session.state.clone(),
            kv: tenant.kv.clone(),
            limits: tenant.limits.clone(),
        })
    }

    /// Books a completed (or skipped) action: frees its slot, applies the outcome to the session
    /// and queues its checkpoint for the next group commit. Nothing is released yet.
    pub(crate) fn finish(&mut self, dispatch: &Dispatch, outcome: Option<crate::sandbox::ActionOutcome>, now: Instant) {
        // The slot goes back first: the app's next action may start while this one commits.
        let usage = outcome.as_ref().map(|o| o.usage).unwrap_or_default();
        self.scheduler.complete(dispatch, &usage);
        let Some(entry) = self.sessions.get_mut(&dispatch.session) else { return };
        let tenant = &mut self.scheduler.tenants[dispatch.tenant];
        let mut released = crate::session::Released::default();
        match outcome {
            Some(outcome) => {
                tenant.counters.latency.record(now.saturating_duration_since(dispatch.ready_at));
                if let Err(failure) = &outcome.result {
                    *tenant.counters.failures.entry(failure.kind).or_default() += 1;
                }
                released = entry.session.apply(&entry.version, &outcome.usage, outcome.result, now_ms());
                if entry.cancelled {
                    entry.session.status = Status::Cancelled;
                }
            }
            None => {
                if let Status::Failed { failure } = &entry.session.status {
                    // Ended by its loop guard before the action could run.
                    *tenant.counters.failures.entry(failure.kind).or_default() += 1;
                }
            }
        }
        let checkpoint = Checkpoint {
            session: dispatch.session,
            tenant: tenant.name.clone(),
            snapshot: entry.session.clone(),
            outputs: released.outputs,
            kv_writes: released.kv_writes,
            consumed: entry.consumed.take(),
            fence: entry.fence,
        };
        entry.scheduled = false;
        entry.committing = true;
        self.commit_queue.push(checkpoint);
    }

    /// Queues a checkpoint of an idle session's current state (no action ran).
    fn checkpoint_idle(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get_mut(&id) else { return };
        entry.committing = true;
        self.commit_queue.push(Checkpoint {
            session: id,
            tenant: self.tenant_names[entry.tenant].clone(),
            snapshot: entry.session.clone(),
            outputs: Vec::new(),
            kv_writes: Default::default(),
            consumed: entry.consumed.take(),
            fence: entry.fence,
        });
    }

    /// A checkpoint is committed: its outputs are released, and the session moves on.
    pub(crate) fn committed(&mut self, checkpoint: Checkpoint, now: Instant, shared: &Shared) {
        let Some(entry) = self.sessions.get_mut(&checkpoint.session) else { return };
        entry.committing = false;
        entry.visible = checkpoint.snapshot.status.clone();
        let first_output = entry.outputs.len();
        entry.outputs.extend(checkpoint.outputs.iter().cloned());
        let (tenant, status) = (entry.tenant, entry.session.status.clone());
        if status.is_finished() {
            entry.inbox.clear();
            self.scheduler.tenants[tenant].counters.sessions_finished += 1;
            if let Some(owner) = self.tenants.get_mut(&self.tenant_names[tenant]) {
                owner.open_sessions = owner.open_sessions.saturating_sub(1);
            }
        }
        self.schedule(checkpoint.session, now, shared);
        let watched = self.watchers.contains_key(&checkpoint.session);
        if !self.subscribers.is_empty() || watched {
            let finished = status.is_finished();
            let event = SessionEvent {
                session: checkpoint.session,
                tenant: checkpoint.tenant,
                status,
                outputs: checkpoint.outputs,
                first_output,
            };
            if watched {
                if finished {
                    for watcher in self.watchers.remove(&checkpoint.session).unwrap_or_default() {
                        let _ = watcher.send(event.clone());
                    }
                } else if let Some(watchers) = self.watchers.get_mut(&checkpoint.session) {
                    watchers.retain(|w| w.send(event.clone()).is_ok());
                }
            }
            self.subscribers.retain(|s| s.send(event.clone()).is_ok());
        }
    }

    /// A checkpoint could not be committed: the session stops here, in this process. Its last
    /// committed checkpoint is intact, so a restart resumes it from there (the action re-runs).
    pub(crate) fn not_committed(&mut self, checkpoint: Checkpoint, error: &Error) {
        let Some(entry) = self.sessions.get_mut(&checkpoint.session) else { return };
        entry.committing = false;
        let failure = Failure::new(
            crate::failure::FailureKind::Trap,
            "",
            format!(
                "the checkpoint could not be committed ({error}); the session resumes from its last checkpoint after a restart"
            ),
        );
        entry.session.status = Status::Failed { failure };
    }

    /// A timer fired: if the session still waits on that very wait, its timeout action is queued.
    pub(crate) fn fire_timer(&mut self, session: SessionId, seq: u64, now: Instant) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else { return false };
        if entry.committing || entry.wait_seq != seq || entry.session.time_out().is_err() {
            return false;
        }
        entry.wait_seq += 1;
        entry.scheduled = true;
        self.scheduler.push(entry.app, session, now);
        true
    }
}
