//! The session table, in shards: a session's shard is fixed by its id, each shard has its own
//! lock, and a lock is held only for the O(1) bookkeeping of one transition, so actions of
//! different sessions never queue on one another. (Shards are cut by id rather than by tenant:
//! one large tenant would otherwise be one lock, and a cluster hands whole shards from node to
//! node.)

use super::lifecycle::Lifecycle;
use super::tenants::Tenant;
use crate::app::App;
use crate::scheduler::AppIx;
use crate::session::SessionId;
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Shards of the session table.
pub(crate) const SHARDS: usize = 64;

/// One session as the host holds it.
pub(crate) struct SessionEntry {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) app: Arc<str>,
    pub(crate) app_ix: AppIx,
    /// The app version it is pinned to (a module hash).
    pub(crate) version: String,
    /// That version's compiled code, while the session is open.
    pub(crate) code: Option<Arc<App>>,
    pub(crate) life: Lifecycle,
}

/// One shard: its sessions, by id.
pub(crate) type Shard = HashMap<SessionId, SessionEntry>;

/// Puts a session into its (locked) shard and into its tenant's list.
pub(crate) fn hold(shard: &mut Shard, id: SessionId, entry: SessionEntry) {
    entry.tenant.sessions().add(id);
    shard.insert(id, entry);
}

/// Takes a session out of its (locked) shard and out of its tenant's list.
pub(crate) fn release(shard: &mut Shard, id: SessionId) -> Option<SessionEntry> {
    let entry = shard.remove(&id)?;
    entry.tenant.sessions().remove(id);
    Some(entry)
}

/// Every session the host holds.
pub(crate) struct Sessions {
    /// Each on cache lines of its own: two workers on sessions of neighbouring shards do not
    /// contend (sharing a line they both write on every action, workers take turns on it: the
    /// "slow mode" of `turnstile bench`, b/a 0.42 instead of 0.8).
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    next_id: AtomicU64,
}

/// The shard of a session: its id mixed (so that consecutive ids spread), modulo the shards.
pub(crate) fn shard_of(id: SessionId) -> usize {
    let mixed = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    usize::try_from(mixed % SHARDS as u64).unwrap_or(0)
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| CachePadded::new(Mutex::default())).collect(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Sessions {
    /// The shard of session `id`, locked.
    pub(crate) fn shard(&self, id: SessionId) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(id)].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session id.
    pub(crate) fn next_id(&self) -> SessionId {
        SessionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Ids already used (resumed from a store) are never handed out again.
    pub(crate) fn observe_id(&self, id: SessionId) {
        self.next_id.fetch_max(id.0 + 1, Ordering::Relaxed);
    }

    /// Runs `visit` on every session, shard by shard (each shard locked while it is visited).
    pub(crate) fn each(&self, mut visit: impl FnMut(SessionId, &SessionEntry)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (&id, entry) in shard.iter() {
                visit(id, entry);
            }
        }
    }

    /// Drops every session of `tenant` (all finished: a tenant with open sessions is not deleted).
    pub(crate) fn remove_tenant(&self, tenant: &str) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, e| &**e.tenant.name() != tenant);
        }
    }
}
