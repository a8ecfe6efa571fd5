//! [`Host`], the embeddable multi-tenant host: tenants with quotas and weights, apps with
//! versions, sessions created and fed customer events, all run by one shared pool of workers.
//!
//! # The path of one action
//! ```text
//!  caller ── start_session / deliver ──▶ session's shard: its lifecycle accepts it
//!        ◀── answered once the write is committed ── commit queue (creations, events and
//!                                                       checkpoints, one transaction a group)
//!  committed ──▶ lifecycle: ready ──▶ dispatcher: the app's pending queue (bounded)
//!  worker ◀── pick: fair share by real cost, ≤ max_in_flight per app, buckets, caps
//!  worker: sandbox (one slice synchronously; a long action as a preemptible task)
//!  done ──▶ dispatcher: slot released ──▶ lifecycle: checkpoint queued ──▶ group commit
//!       ──▶ lifecycle: outputs released (bus), next action queued or timer armed
//! ```
//!
//! # One concept per module
//! `tenants` (policy, apps, versions), `tokens`, `admission` (may a session start),
//! `sessions` (the sharded table), `lifecycle` (a session's state machine: transitions return
//! effects), `dispatch` (the scheduler behind its lock), `commit` (group commit with tickets),
//! `timers` (wait timeouts, sleeping actions), `bus` (subscribers and watchers), `health` (store
//! outages: retries, refusing new work), `retention` (what comes due when), `storage` (quotas),
//! `housekeeping` (purges, measures, evictions), `recovery` (sessions whose checkpoint failed,
//! taken back from the store), `modules` (compiled code on demand), `resume`
//! (loading a store), `pool` (workers), `kernel` (the paths through them), `views`
//! (what readers see).
//!
//! # Locks, and their order
//! A thread may take a lock further down this list while holding one further up, never the
//! other way round; no lock is held across store I/O, the sandbox or a channel send:
//! 1. the tenants' admin lock (`tenants.rs`): creating, changing, deleting tenants and apps;
//! 2. one session shard (`sessions.rs`): a session's transition; never two shards at once; under
//!    it, a tenant's list of session ids (`tenants.rs`), taken last;
//! 3. the dispatcher (`dispatch.rs`): O(1) scheduler bookkeeping, the only global lock on the
//!    hot path;
//! 4. the commit queue (`commit.rs`): appending a write, taking a group;
//! 5. the timers (`timers.rs`) and the bus (`bus.rs`): arming a timer, adding a watcher; the
//!    store's health (`health.rs`): noting a failed or a successful commit; the runtime's table
//!    of compiled modules (`runtime.rs`): a look-up or an eviction, never a compile; the
//!    sessions to take back (`recovery.rs`): queueing one, taking the next.
//!
//! Tenants, apps and tokens are read with no lock at all (copy-on-write maps), so the API's
//! async threads never block on them.

mod admission;
mod bus;
mod commit;
mod dispatch;
mod health;
mod housekeeping;
mod ingest;
mod kernel;
mod lifecycle;
mod modules;
mod pool;
mod recovery;
mod resume;
mod retention;
mod sessions;
mod storage;
mod tenants;
mod timers;
mod tokens;
mod views;

pub use bus::SessionEvent;
pub use health::StoreOutage;
pub use views::{AppInfo, AppVersion, Delivery, Output, SessionView, Started, TenantInfo};

use self::kernel::Kernel;
use crate::error::Error;
use crate::limits::TenantConfig;
use crate::metrics::{MetricsSnapshot, TenantMetrics};
use crate::runtime::{CompileSource, Runtime, RuntimeConfig};
use crate::scheduler::Bounds;
use crate::session::{SessionId, Status};
use crate::store::{AppRecord, MemoryStore, Store, TenantRecord, TokenRecord};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// How long a finished session (with its outputs, inbox and keys) is kept before it is purged.
    pub retention: Duration,
    /// How long a compiled module no session holds stays in memory after it was last asked for;
    /// past it, it is evicted and loaded again (from the store, through the disk cache) when a
    /// session needs it.
    pub module_idle: Duration,
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
            retention: Duration::from_secs(7 * 86_400),
            module_idle: Duration::from_secs(600),
            store: Arc::new(MemoryStore::default()),
        }
    }
}

/// The multi-tenant host. Dropping it stops the pool after the actions (or slices) in flight,
/// and commits everything queued.
pub struct Host {
    core: Arc<Kernel>,
    ingest: Mutex<Option<mpsc::Sender<ingest::Request>>>,
    threads: Vec<JoinHandle<()>>,
}

fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(Error::InvalidName { what, name: name.to_owned() }) }
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

impl Host {
    /// Builds the engine, resumes whatever the store holds, and starts the pool's workers and the
    /// timer thread.
    pub fn new(mut config: HostConfig) -> Result<Host, Error> {
        if config.workers == 0 || config.workers > 1024 {
            return Err(Error::InvalidConfig {
                field: "workers",
                problem: format!("{} is outside 1..=1024", config.workers),
            });
        }
        let workers = u32::try_from(config.workers).unwrap_or(u32::MAX);
        config.runtime.engine.pool_instances = config.runtime.engine.pool_instances.max(workers.saturating_mul(2));
        let pool = usize::try_from(config.runtime.engine.pool_instances).unwrap_or(usize::MAX);
        let runtime = Runtime::new(config.runtime)?;
        let millisecond = runtime.fuel_per_second() / 1000;
        let bounds = Bounds {
            workers: config.workers,
            in_flight: pool,
            pending_per_app: config.max_pending_per_app,
            pending_total: config.max_pending_total,
            // A tenant coming back from idle (or from its sessions' checkpoints: it was not idle by
            // choice) may be ahead of the others by about 20 ms of work.
            slack: 20 * millisecond,
            long_action: millisecond,
        };
        let core = Arc::new(Kernel::new(runtime, config.store, bounds, config.max_inbox, config.retention));
        let image = core.store().load()?;
        resume::resume(&core, image)?;
        core.measure_storage();
        let mut threads = Vec::new();
        for n in 0..config.workers {
            threads.push(pool::spawn_worker(core.clone(), n)?);
        }
        let firing = core.clone();
        threads.push(core.timers().spawn(move |due| firing.fire(due))?);
        let (ingest, thread) = ingest::spawn(core.clone())?;
        threads.push(thread);
        threads.push(housekeeping::spawn(core.clone(), config.module_idle)?);
        threads.push(recovery::spawn(core.clone())?);
        let retrier = core.clone();
        threads.push(health::spawn_retry(core.health().clone(), move || retrier.retry_commits())?);
        Ok(Host { core, ingest: Mutex::new(Some(ingest)), threads })
    }

    /// The runtime (engine, deployed modules) this host runs on.
    pub fn runtime(&self) -> &Runtime {
        self.core.runtime()
    }

    /// Adds a tenant.
    pub fn create_tenant(&self, name: &str, config: TenantConfig) -> Result<(), Error> {
        check_name("tenant", name)?;
        config.validate(self.runtime().max_memory_bytes())?;
        let admin = self.core.tenants().admin();
        if self.core.tenants().get(name).is_some() {
            return Err(Error::AlreadyExists { what: "tenant", name: name.to_owned() });
        }
        self.core.store().put_tenant(&TenantRecord { name: name.to_owned(), config: config.clone() })?;
        self.core.register_tenant(&admin, name, config);
        Ok(())
    }

    /// Sets a tenant's weight, quotas and limits, keeping its suspension as it is (suspending
    /// has a call of its own, and a change of quotas must not undo one made meanwhile); actions
    /// already running keep the limits they started with.
    pub fn reconfigure_tenant(&self, name: &str, config: TenantConfig) -> Result<(), Error> {
        self.change_tenant(name, |old| TenantConfig { suspended: old.suspended, ..config })
    }

    /// Suspends a tenant (its new sessions and events are refused, its queued actions wait) or
    /// lifts the suspension.
    pub fn suspend_tenant(&self, name: &str, suspended: bool) -> Result<(), Error> {
        self.change_tenant(name, |old| TenantConfig { suspended, ..old.clone() })
    }

    /// Changes a tenant's configuration to `change` of the current one, read and written under
    /// the registry's admin lock: two changes at once (a suspension and a new quota) both land.
    fn change_tenant(&self, name: &str, change: impl FnOnce(&TenantConfig) -> TenantConfig) -> Result<(), Error> {
        let _admin = self.core.tenants().admin();
        let tenant = self.core.tenants().get(name).ok_or_else(|| Error::not_found("tenant", name))?;
        let config = change(&tenant.policy());
        config.validate(self.runtime().max_memory_bytes())?;
        self.core.store().put_tenant(&TenantRecord { name: name.to_owned(), config: config.clone() })?;
        let retention_changed = tenant.policy().retention != config.retention;
        let policy = Arc::new(config);
        tenant.set_policy(policy.clone());
        self.core.dispatcher().with(|s| s.set_policy(tenant.ix(), policy));
        self.core.dispatcher().wake_all();
        if retention_changed {
            self.core.retention_changed(&tenant);
        }
        Ok(())
    }

    /// Deletes a tenant with everything it has: apps (their compiled code is dropped when no one
    /// uses it), finished sessions, tokens, key-value space. A tenant with open sessions is
    /// refused (cancel them, or let them finish, first).
    pub fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let admin = self.core.tenants().admin();
        let tenant = self.core.tenants().get(name).ok_or_else(|| Error::not_found("tenant", name))?;
        // Closed to new sessions in the same step as none is found open: a start racing this
        // would otherwise commit a session after its tenant's rows were deleted.
        tenant.close_for_deletion().map_err(|open| match open {
            0 => Error::not_found("tenant", name),
            open => Error::TenantBusy { tenant: name.to_owned(), open },
        })?;
        self.core.store().delete_tenant(name).inspect_err(|_| tenant.reopen())?;
        self.core.tokens().revoke_all(name);
        self.core.sessions().remove_tenant(name);
        self.core.dispatcher().with(|s| s.remove_tenant(tenant.ix()));
        self.core.tenants().remove(&admin, name);
        Ok(())
    }

    /// Issues an API token for a tenant: returns its id and the token itself, which is shown this
    /// once (only its sha-256 is kept).
    pub fn issue_token(&self, tenant: &str) -> Result<(String, String), Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        let token = format!("tst_{}", random_hex(32)?);
        let hash = tokens::token_hash(&token);
        let id = format!("tok_{}", &random_hex(8)?);
        self.core.store().put_token(&TokenRecord { id: id.clone(), tenant: tenant.to_owned(), hash: hash.clone() })?;
        self.core.tokens().insert(hash, id.clone(), owner.name().clone());
        Ok((id, token))
    }

    /// Revokes a tenant's token.
    pub fn revoke_token(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if !self.core.store().delete_token(tenant, id)? {
            return Err(Error::not_found("token", id));
        }
        self.core.tokens().revoke(tenant, id);
        Ok(())
    }

    /// The tenant a token acts for, if it is a live token. Takes no lock.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        self.core.tokens().tenant_of(token).map(|t| t.to_string())
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> Vec<TenantInfo> {
        self.core.tenants().all().iter().map(|t| tenant_info(t)).collect()
    }

    /// One tenant.
    pub fn tenant(&self, name: &str) -> Result<TenantInfo, Error> {
        self.core.tenants().get(name).map(|t| tenant_info(&t)).ok_or_else(|| Error::not_found("tenant", name))
    }

    /// Seeds keys in a tenant's key-value space.
    pub fn kv_put(&self, tenant: &str, writes: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<(), Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        let writes: std::collections::BTreeMap<String, Vec<u8>> = writes.into_iter().collect();
        let bytes = writes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.core.store().kv_put(tenant, writes)?;
        // The operator's writes count against the quota (they are not refused by it).
        let kv_bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        owner.storage().add(crate::store::StorageUsage { kv_bytes, ..Default::default() });
        Ok(())
    }

    /// Deploys a version of a tenant's app; new sessions of the app start on it, sessions already
    /// running stay on the version they started with.
    pub fn deploy(&self, tenant: &str, app: &str, bytes: &[u8]) -> Result<AppVersion, Error> {
        check_name("app", app)?;
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        let hash = crate::app::module_hash(bytes);
        owner.may_deploy(app, &hash)?;
        // No compile for a version the store could not keep now.
        self.core.health().check()?;
        let mut turn = owner.deploy_turn()?;
        // Held by the compile until it ends, even past its time limit: one slot per tenant.
        let hold = owner.hold_compile().inspect_err(|_| turn.forgive())?;
        // Whether these bytes were compiled before is the tenant's to know only if it deployed
        // them itself: another tenant's modules are none of its business.
        let seen_before = owner.has_version(&hash);
        if !seen_before {
            owner.storage().check_module(tenant, &owner.policy(), bytes.len())?;
        }
        // Compiling happens before the admin lock: other tenants' deploys go on meanwhile.
        let deployment = self.runtime().deploy_holding(bytes, hold).inspect_err(|error| {
            if matches!(error, Error::Deploy(crate::app::DeployError::CompileBusy)) {
                turn.forgive();
            }
        })?;
        let version = deployment.app;
        let admin = self.core.tenants().admin();
        owner.may_deploy(app, version.hash())?;
        let record = AppRecord { tenant: tenant.to_owned(), app: app.to_owned(), version: version.hash().to_owned() };
        self.core.store().put_app(&record, bytes)?;
        if !seen_before {
            let module_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            owner.storage().add(crate::store::StorageUsage { module_bytes, ..Default::default() });
        }
        self.core.register_app(&admin, &owner, app, Arc::new(version.info().clone()));
        Ok(AppVersion {
            app: app.to_owned(),
            version: version.hash().to_owned(),
            actions: version.info().actions.clone(),
            source: if seen_before { CompileSource::AlreadyDeployed } else { CompileSource::Compiled },
        })
    }

    /// Starts a session of the app's current version at `entry`. It is stored before this returns.
    pub fn start_session(&self, tenant: &str, app: &str, entry: &str, input: Vec<u8>) -> Result<SessionId, Error> {
        self.start_session_once(tenant, app, entry, input, None).map(|started| started.session)
    }

    /// [`Host::start_session`] under an idempotency key: a start under a key that started a
    /// session before (still kept, not purged) starts nothing and answers that session, whatever
    /// the quotas say now, if it asks for the same app, entry and input (`idempotency_key_reused`
    /// if not). Keys are the tenant's own.
    pub fn start_session_once(
        &self,
        tenant: &str,
        app: &str,
        entry: &str,
        input: Vec<u8>,
        key: Option<&str>,
    ) -> Result<Started, Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        self.core.start(&owner, app, entry, input, key)
    }

    /// Delivers a customer event. It is acknowledged (this returns `Ok`) once it is durable in
    /// the inbox of a session that had not ended: the session takes it at its next wait; if it
    /// ends first, the event is listed in its unapplied events (`SessionView::unapplied`). An
    /// event for a session that has ended is refused (`session_state`). With an idempotency key,
    /// a retried delivery is acknowledged again but applied once (or refused `not_applied` if the
    /// session ended without taking it).
    pub fn deliver(
        &self,
        tenant: &str,
        session: SessionId,
        event: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Delivery, Error> {
        self.check_event(tenant, session, &event)?;
        self.core.deliver(tenant, session, event, idempotency_key.map(str::to_owned))
    }

    /// [`Host::deliver`] for async callers: the event is checked and handed to the ingest thread
    /// without blocking the caller's thread; the future resolves once it is durable (events that
    /// arrive together are committed together).
    pub fn deliver_async(
        &self,
        tenant: &str,
        session: SessionId,
        event: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> impl Future<Output = Result<Delivery, Error>> + Send + 'static {
        let checked = self.check_event(tenant, session, &event).and_then(|()| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = ingest::Request {
                tenant: tenant.to_owned(),
                session,
                event,
                key: idempotency_key.map(str::to_owned),
                reply,
            };
            let sender = self.ingest.lock().unwrap_or_else(PoisonError::into_inner).clone();
            match sender.map(|s| s.send(request)) {
                Some(Ok(())) => Ok(answer),
                _ => Err(Error::ShuttingDown),
            }
        });
        async move { checked?.await.unwrap_or(Err(Error::ShuttingDown)) }
    }

    /// What is checked of an event before it goes anywhere: its tenant, suspension and size.
    fn check_event(&self, tenant: &str, session: SessionId, event: &[u8]) -> Result<(), Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("session", session))?;
        let policy = owner.policy();
        if policy.suspended {
            return Err(Error::Suspended { tenant: tenant.to_owned() });
        }
        if event.len() > policy.limits.max_input_bytes {
            return Err(Error::EventTooLarge { size: event.len(), limit: policy.limits.max_input_bytes });
        }
        Ok(())
    }

    /// Cancels a session of `tenant`: it ends `cancelled` (an action already running completes
    /// first, and its effects are kept). Events in its inbox are reported back as not applied.
    pub fn cancel_session(&self, tenant: &str, session: SessionId) -> Result<(), Error> {
        self.core.cancel(tenant, session)
    }

    /// Reads a session of `tenant` (not found if it is another tenant's).
    pub fn session(&self, tenant: &str, session: SessionId) -> Result<SessionView, Error> {
        self.core.view(tenant, session)
    }

    /// `tenant`'s sessions held here (open, and finished ones not yet purged) with ids after
    /// `after`, in id order, at most `limit`.
    pub fn tenant_sessions(&self, tenant: &str, after: SessionId, limit: usize) -> Result<Vec<SessionView>, Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        let ids = owner.sessions().page(after, limit);
        Ok(ids.into_iter().filter_map(|id| self.core.view(tenant, id).ok()).collect())
    }

    /// A session's released outputs numbered after `after`, at most `limit`, from the store.
    pub fn outputs(&self, tenant: &str, session: SessionId, after: u64, limit: usize) -> Result<Vec<Output>, Error> {
        self.core.view(tenant, session)?;
        let outputs = self.core.store().outputs(session, after, limit)?;
        Ok(outputs.into_iter().map(|(number, body)| Output { number, body }).collect())
    }

    /// Every session of every tenant, by id, with its tenant's name: for operators' tools.
    pub fn sessions(&self) -> Vec<(String, SessionView)> {
        let mut all = Vec::new();
        self.core.sessions().each(|id, entry| all.push((entry.tenant.name().to_string(), SessionView::of(id, entry))));
        all.sort_by_key(|(_, view)| view.id);
        all
    }

    /// Blocks until no session is queued, running or being committed (every one waits for a
    /// customer or has finished).
    pub fn settle(&self) {
        let events = self.subscribe();
        while !self.core.is_settled() {
            // Every commit publishes an event; the timeout guards against a missed one.
            let _ = events.recv_timeout(Duration::from_millis(20));
        }
    }

    /// A session of `tenant` as it stands, and its events from then on (none missed; an output
    /// already counted in the view may come again, numbered: skip it). The receiver ends after
    /// the event that finishes the session; usable from async code without blocking a thread.
    pub fn watch_session(
        &self,
        tenant: &str,
        session: SessionId,
    ) -> Result<(SessionView, tokio::sync::mpsc::Receiver<SessionEvent>), Error> {
        self.core.watch(tenant, session)
    }

    /// Takes one of `tenant`'s output-stream places (`max_streams`), given back when the slot
    /// is dropped (the stream ends or its client goes).
    pub fn open_stream(&self, tenant: &str) -> Result<StreamSlot, Error> {
        let owner = self.core.tenants().get(tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        owner.open_stream(owner.policy().max_streams).map_err(|count| Error::Quota {
            owner: format!("tenant `{tenant}`"),
            what: "open output streams",
            count,
        })?;
        Ok(StreamSlot { tenant: owner })
    }

    /// Events of every session from now on (one receiver per call).
    pub fn subscribe(&self) -> mpsc::Receiver<SessionEvent> {
        self.core.bus().subscribe()
    }

    /// The figures of every tenant now.
    pub fn metrics(&self) -> MetricsSnapshot {
        let tenants = self.core.tenants().all();
        let (rows, queue_depth) = self.core.dispatcher().with(|s| {
            let rows: Vec<TenantMetrics> = tenants
                .iter()
                .map(|t| {
                    let (queued, in_flight) = s.load(t.ix());
                    TenantMetrics::new(t.name(), t.policy().weight, s.counters(t.ix()), queued, u64::from(in_flight))
                })
                .collect();
            (rows, u64::try_from(s.pending_total()).unwrap_or(u64::MAX))
        });
        let (fenced_writes, commits) = self.core.commit_figures();
        let (mut sessions, mut waiting) = (0u64, 0u64);
        self.core.sessions().each(|_, entry| {
            sessions += 1;
            waiting += u64::from(matches!(entry.life.visible(), Status::Waiting { .. }));
        });
        MetricsSnapshot {
            tenants: rows,
            queue_depth,
            sessions,
            waiting,
            quarantined: self.core.quarantined(),
            output_streams: self.core.bus().watcher_count(),
            store_up: self.core.health().outage().is_none(),
            store_failures: self.core.health().failures(),
            commits,
            fenced_writes,
            modules: self.runtime().compile_stats(),
            cluster: None,
        }
    }

    /// The store outage under way, if any: new work is refused (`store_unavailable`) and
    /// checkpoints are retried until the store takes writes again.
    pub fn store_outage(&self) -> Option<StoreOutage> {
        self.core.health().outage()
    }

    /// The most actions of `tenant`'s `app` that were ever in the action list at once.
    pub fn peak_in_flight(&self, tenant: &str, app: &str) -> Option<u32> {
        let app = self.core.tenants().get(tenant)?.app(app)?;
        Some(self.core.dispatcher().with(|s| s.peak_in_flight(app.ix)))
    }
}

/// One of a tenant's output-stream places, held while its stream is open.
pub struct StreamSlot {
    tenant: Arc<tenants::Tenant>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.tenant.close_stream();
    }
}

fn tenant_info(tenant: &tenants::Tenant) -> TenantInfo {
    let apps = tenant
        .apps()
        .values()
        .map(|app| AppInfo {
            name: app.name.to_string(),
            version: app.current.hash.clone(),
            actions: app.current.actions.clone(),
            versions: app.versions.clone(),
        })
        .collect();
    TenantInfo {
        name: tenant.name().to_string(),
        config: TenantConfig::clone(&tenant.policy()),
        open_sessions: tenant.open_sessions(),
        finished_sessions: tenant.finished_sessions(),
        storage: tenant.storage().now(),
        apps,
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A store outage is not waited out: what cannot be committed now resumes after a restart.
        self.core.health().close();
        // The ingest thread answers what it has taken and ends.
        drop(self.ingest.lock().unwrap_or_else(PoisonError::into_inner).take());
        self.core.dispatcher().stop();
        self.core.timers().stop();
        self.core.retention().stop();
        self.core.recovery().stop();
        self.core.bus().close_watchers();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Whatever the workers queued last is committed before the host goes.
        self.core.retry_commits();
    }
}
