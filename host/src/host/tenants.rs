//! Tenants: each one's policy (stored once here; the scheduler holds the same `Arc`, never a
//! copy), its apps with their versions, its key-value reader, its count of open sessions and
//! its storage (`storage.rs`).
//!
//! Read without taking a lock: the maps are copy-on-write and swapped atomically, so the API's
//! async threads and the workers never contend on them. Changes (rare: an operator's call, a
//! deploy) are serialised by one admin lock.

use super::storage::Storage;
use crate::abi::KvRead;
use crate::app::ModuleInfo;
use crate::error::Error;
use crate::limits::TenantConfig;
use crate::scheduler::{AppIx, TenantIx};
use crate::session::SessionId;
use crate::store::Store;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One tenant.
pub(crate) struct Tenant {
    name: Arc<str>,
    ix: TenantIx,
    policy: ArcSwap<TenantConfig>,
    kv: Arc<dyn KvRead>,
    apps: ArcSwap<BTreeMap<String, Arc<AppEntry>>>,
    open_sessions: AtomicU64,
    /// Finished sessions held until they are purged.
    finished_sessions: AtomicU64,
    /// Output streams it holds open.
    streams: AtomicU64,
    /// What it holds in the store, against its storage quotas.
    storage: Storage,
    /// When its deploys of the last minute began; held while it deploys (one at a time).
    deploys: Mutex<VecDeque<Instant>>,
    /// The ids of its sessions held here.
    sessions: TenantSessions,
    /// Whether one of its modules is compiling (held by its compile's thread until the compile
    /// ends, past the deploy's time limit if it runs over).
    compiling: Arc<AtomicBool>,
    /// The idempotency keys it is starting a session under now: a second start under one waits
    /// for the first to be answered (and then finds its session), rather than be judged against
    /// the quotas the first one's session already counts in.
    starting: Mutex<HashSet<String>>,
    start_done: Condvar,
}

/// A start under an idempotency key, under way; the key's next start waits until it is dropped.
pub(crate) struct StartTurn<'a> {
    tenant: &'a Tenant,
    key: String,
}

impl Drop for StartTurn<'_> {
    fn drop(&mut self) {
        self.tenant.starting.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
        self.tenant.start_done.notify_all();
    }
}

/// One compile of a tenant's under way; dropped when it ends.
pub(crate) struct CompileHold(Arc<AtomicBool>);

impl Drop for CompileHold {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A tenant's turn to deploy: its other deploys wait until this one is done.
pub(crate) struct DeployTurn<'a>(MutexGuard<'a, VecDeque<Instant>>);

impl DeployTurn<'_> {
    /// Takes this deploy off the tenant's count: the host refused it before compiling anything
    /// (every compile slot busy, or its previous compile still running), which is the host's
    /// business or already counted, not a deploy to hold against the tenant's rate.
    pub(crate) fn forgive(&mut self) {
        self.0.pop_back();
    }
}

/// One named app of a tenant.
pub(crate) struct AppEntry {
    pub(crate) name: Arc<str>,
    /// Its place in the scheduler.
    pub(crate) ix: AppIx,
    /// The version new sessions start on (what it holds: its compiled code is the runtime's,
    /// loaded when a session needs it).
    pub(crate) current: Arc<ModuleInfo>,
    /// Every version it has had (module hashes), oldest first.
    pub(crate) versions: Vec<String>,
}

/// A tenant's view of its key-value space in the store.
struct TenantKv {
    store: Arc<dyn Store>,
    tenant: Arc<str>,
}

impl KvRead for TenantKv {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        // A store that cannot answer makes the key look absent to the action; the failure is the
        // store's to report, on the commit that follows.
        self.store.kv_get(&self.tenant, key).ok().flatten()
    }
}

impl Tenant {
    /// Refuses a deploy that would take a tenant past its apps or an app past its versions.
    pub(crate) fn may_deploy(&self, app: &str, hash: &str) -> Result<(), Error> {
        let policy = self.policy();
        let apps = self.apps();
        match apps.get(app) {
            None if apps.len() >= usize::try_from(policy.max_apps).unwrap_or(usize::MAX) => Err(Error::Quota {
                owner: format!("tenant `{}`", self.name()),
                what: "apps",
                count: u64::try_from(apps.len()).unwrap_or(u64::MAX),
            }),
            Some(existing)
                if !existing.versions.iter().any(|v| v == hash)
                    && existing.versions.len() >= usize::try_from(policy.max_versions).unwrap_or(usize::MAX) =>
            {
                Err(Error::Quota {
                    owner: format!("app `{app}`"),
                    what: "versions",
                    count: u64::try_from(existing.versions.len()).unwrap_or(u64::MAX),
                })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn new(name: &str, ix: TenantIx, policy: Arc<TenantConfig>, store: &Arc<dyn Store>) -> Tenant {
        let name: Arc<str> = name.into();
        Tenant {
            kv: Arc::new(TenantKv { store: store.clone(), tenant: name.clone() }),
            name,
            ix,
            policy: ArcSwap::new(policy),
            apps: ArcSwap::default(),
            open_sessions: AtomicU64::new(0),
            finished_sessions: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            storage: Storage::default(),
            deploys: Mutex::default(),
            compiling: Arc::default(),
            sessions: TenantSessions::default(),
            starting: Mutex::default(),
            start_done: Condvar::new(),
        }
    }

    /// Its turn to start a session under `key`: waits while another start under that key is
    /// under way.
    pub(crate) fn start_turn(&self, key: &str) -> StartTurn<'_> {
        let mut starting = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        while starting.contains(key) {
            starting = self.start_done.wait(starting).unwrap_or_else(PoisonError::into_inner);
        }
        starting.insert(key.to_owned());
        StartTurn { tenant: self, key: key.to_owned() }
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn ix(&self) -> TenantIx {
        self.ix
    }

    /// Its policy now.
    pub(crate) fn policy(&self) -> Arc<TenantConfig> {
        self.policy.load_full()
    }

    pub(crate) fn set_policy(&self, policy: Arc<TenantConfig>) {
        self.policy.store(policy);
    }

    /// The ids of its sessions held here.
    pub(crate) fn sessions(&self) -> &TenantSessions {
        &self.sessions
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(crate) fn kv(&self) -> &Arc<dyn KvRead> {
        &self.kv
    }

    /// Its apps, by name.
    pub(crate) fn apps(&self) -> Arc<BTreeMap<String, Arc<AppEntry>>> {
        self.apps.load_full()
    }

    pub(crate) fn app(&self, name: &str) -> Option<Arc<AppEntry>> {
        self.apps.load().get(name).cloned()
    }

    /// Replaces (or adds) an app; callers hold the admin lock.
    pub(crate) fn put_app(&self, _admin: &Admin<'_>, app: AppEntry) {
        let mut apps = BTreeMap::clone(&self.apps.load());
        apps.insert(app.name.to_string(), Arc::new(app));
        self.apps.store(Arc::new(apps));
    }

    /// Counts one more open output stream, unless it already has `max`; the count so far.
    pub(crate) fn open_stream(&self, max: u32) -> Result<(), u64> {
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < u64::from(max)).then_some(n + 1))
            .map(drop)
    }

    pub(crate) fn close_stream(&self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn open_sessions(&self) -> u64 {
        self.open_sessions.load(Ordering::Acquire) & !CLOSED
    }

    /// Counts one more open session, unless it already has `max` or is being deleted.
    pub(crate) fn open_session(&self, max: u64) -> bool {
        self.open_sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n & CLOSED == 0 && n < max).then_some(n + 1))
            .is_ok()
    }

    /// Closes it to new sessions for its deletion, if it has none open (in the same step, so
    /// that no start slips in between the check and the deletion); `Err` with its open count
    /// (0: another deletion closed it first).
    pub(crate) fn close_for_deletion(&self) -> Result<(), u64> {
        self.open_sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n == 0).then_some(CLOSED))
            .map(drop)
            .map_err(|n| n & !CLOSED)
    }

    /// Opens it to new sessions again (its deletion failed).
    pub(crate) fn reopen(&self) {
        self.open_sessions.fetch_and(!CLOSED, Ordering::AcqRel);
    }

    /// Whether it is being deleted (closed to new sessions).
    pub(crate) fn is_closed(&self) -> bool {
        self.open_sessions.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Finished sessions it holds until they are purged.
    pub(crate) fn finished_sessions(&self) -> u64 {
        self.finished_sessions.load(Ordering::Acquire)
    }

    /// One of its sessions finished (or was resumed finished): held until it is purged.
    pub(crate) fn hold_finished(&self) {
        self.finished_sessions.fetch_add(1, Ordering::AcqRel);
    }

    /// One of its finished sessions was purged.
    pub(crate) fn purged(&self) {
        let _ = self.finished_sessions.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Counts a session resumed open from the store (not checked against the quota).
    pub(crate) fn resumed_open(&self) {
        self.open_sessions.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits for its turn to deploy (its deploys run one at a time), unless it has deployed
    /// `deploys_per_minute` modules in the last minute.
    pub(crate) fn deploy_turn(&self) -> Result<DeployTurn<'_>, Error> {
        const MINUTE: Duration = Duration::from_secs(60);
        let per_minute = self.policy().deploys_per_minute;
        let mut recent = self.deploys.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while recent.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
            recent.pop_front();
        }
        if recent.len() >= usize::try_from(per_minute).unwrap_or(usize::MAX) {
            let oldest = recent.front().copied().unwrap_or(now);
            let wait = MINUTE.saturating_sub(now.duration_since(oldest));
            return Err(Error::DeployRate {
                tenant: self.name.to_string(),
                per_minute,
                retry_after_secs: wait.as_secs() + 1,
            });
        }
        recent.push_back(now);
        Ok(DeployTurn(recent))
    }

    /// Its one compile at a time, or a refusal while the last one (which ran out of time) runs.
    pub(crate) fn hold_compile(&self) -> Result<CompileHold, Error> {
        if self.compiling.swap(true, Ordering::AcqRel) {
            return Err(crate::app::DeployError::CompileRunning.into());
        }
        Ok(CompileHold(self.compiling.clone()))
    }

    /// Whether one of its apps has (or had) the version `hash`.
    pub(crate) fn has_version(&self, hash: &str) -> bool {
        self.apps.load().values().any(|app| app.versions.iter().any(|v| v == hash))
    }

    /// One of its sessions ended (or was never created).
    pub(crate) fn close_session(&self) {
        let _ = self.open_sessions.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n & !CLOSED).checked_sub(1).map(|m| m | (n & CLOSED))
        });
    }
}

/// The bit of a tenant's open-session count that closes it to new sessions (it is being deleted).
const CLOSED: u64 = 1 << 63;

/// The ids of one tenant's sessions held here, in order: a page of its list costs a look-up, not
/// a pass over every shard. Its lock is a leaf: taken under a shard's lock, never the other way.
#[derive(Default)]
pub(crate) struct TenantSessions(Mutex<BTreeSet<SessionId>>);

impl TenantSessions {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<SessionId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn add(&self, id: SessionId) {
        self.lock().insert(id);
    }

    pub(crate) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    /// At most `limit` of its session ids after `after`, in order.
    pub(crate) fn page(&self, after: SessionId, limit: usize) -> Vec<SessionId> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.lock().range((Excluded(after), Unbounded)).take(limit).copied().collect()
    }
}

/// Proof that the admin lock is held.
pub(crate) struct Admin<'a>(#[expect(dead_code, reason = "held for its lock, never read")] MutexGuard<'a, ()>);

/// Every tenant, by name.
#[derive(Default)]
pub(crate) struct Tenants {
    map: ArcSwap<HashMap<String, Arc<Tenant>>>,
    admin: Mutex<()>,
}

impl Tenants {
    /// Takes the admin lock: tenants, apps and policies change only under it.
    pub(crate) fn admin(&self) -> Admin<'_> {
        Admin(self.admin.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.map.load().get(name).cloned()
    }

    /// Every tenant, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<Arc<Tenant>> = self.map.load().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn insert(&self, _admin: &Admin<'_>, tenant: Arc<Tenant>) {
        let mut map = HashMap::clone(&self.map.load());
        map.insert(tenant.name.to_string(), tenant);
        self.map.store(Arc::new(map));
    }

    pub(crate) fn remove(&self, _admin: &Admin<'_>, name: &str) {
        let mut map = HashMap::clone(&self.map.load());
        map.remove(name);
        self.map.store(Arc::new(map));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deletion closes the tenant in the same step as it finds no session open: a start
    /// racing it either counts first (the deletion is refused) or is refused itself.
    #[test]
    fn a_tenant_closed_for_deletion_opens_no_session_and_one_with_sessions_is_not_closed() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::default());
        let tenant = Tenant::new("t", 0, Arc::new(TenantConfig::default()), &store);
        assert!(tenant.open_session(10));
        assert_eq!(tenant.close_for_deletion(), Err(1), "one open");
        tenant.close_session();
        tenant.close_for_deletion().expect("none open");
        assert!(tenant.is_closed() && !tenant.open_session(10), "no start after it");
        assert_eq!(tenant.open_sessions(), 0);
        tenant.reopen();
        assert!(tenant.open_session(10) && tenant.open_sessions() == 1, "open again");
    }
}
