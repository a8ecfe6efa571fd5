//! Each tenant's storage, counted against its quotas (`max_kv_bytes`, `max_stored_output_bytes`,
//! `max_event_keys`, `max_module_bytes`): measured from the store when the host starts and again
//! every [`REMEASURE`] (by the retention thread, which also purges), plus what this host has
//! committed since, plus what is reserved: an action's writes and a keyed event take their room
//! when they are checked, before they are queued, so racing actions can't all pass one check
//! (the room becomes held when their commit lands, and is given back if it does not). Key-value
//! writes are counted in full, as if every key were new, so an overwrite counts twice until the
//! next measurement: a tenant near its quota may be refused a little early, never let past it.
//!
//! A tenant at a quota is refused what would add to it — an action whose key-value writes or
//! outputs would pass it fails `storage_quota` with nothing kept, a keyed event or a deploy is
//! answered `quota_exceeded` — while every other tenant's writes go on: no tenant fills the
//! store's disk for the others.

use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::limits::TenantConfig;
use crate::sandbox::Effects;
use crate::store::{Checkpoint, StorageUsage};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the store is asked again what each tenant holds (`housekeeping.rs`).
pub(crate) const REMEASURE: Duration = Duration::from_secs(30);

/// One tenant's storage, as last measured plus what was committed since, and what is reserved
/// for writes on their way to the store.
#[derive(Default)]
pub(crate) struct Storage {
    kv_bytes: AtomicU64,
    output_bytes: AtomicU64,
    event_keys: AtomicU64,
    module_bytes: AtomicU64,
    reserved_kv_bytes: AtomicU64,
    reserved_output_bytes: AtomicU64,
    reserved_event_keys: AtomicU64,
}

/// Takes `adds` of room in `reserved` if `held` plus everything reserved stays within `max`.
fn reserve(held: &AtomicU64, reserved: &AtomicU64, adds: u64, max: u64) -> Result<(), u64> {
    if adds == 0 {
        return Ok(());
    }
    reserved
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            let total = held.load(Ordering::Acquire).saturating_add(taken).saturating_add(adds);
            (total <= max).then_some(taken + adds)
        })
        .map(drop)
        .map_err(|taken| held.load(Ordering::Acquire).saturating_add(taken))
}

/// Gives `amount` of reserved room back.
fn unreserve(reserved: &AtomicU64, amount: u64) {
    if amount == 0 {
        // Most actions write nothing: no shared counter is touched for them.
        return;
    }
    let _ = reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| Some(taken.saturating_sub(amount)));
}

fn size(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What a committed checkpoint added: key-value bytes and output bytes.
pub(crate) fn stored_by(checkpoint: &Checkpoint) -> StorageUsage {
    StorageUsage {
        kv_bytes: checkpoint.kv_writes.iter().map(|(k, v)| size(k.len() + v.len())).sum(),
        output_bytes: checkpoint.outputs.iter().map(|o| size(o.len())).sum(),
        ..StorageUsage::default()
    }
}

/// What an action's effects would add: key-value bytes and output bytes.
pub(crate) fn written_by(effects: &Effects) -> StorageUsage {
    StorageUsage {
        kv_bytes: effects.kv_writes.iter().map(|(k, v)| size(k.len() + v.len())).sum(),
        output_bytes: effects.outputs.iter().map(|o| size(o.len())).sum(),
        ..StorageUsage::default()
    }
}

impl Storage {
    /// What it holds now (as far as this host knows), writes on their way included.
    pub(crate) fn now(&self) -> StorageUsage {
        let both = |held: &AtomicU64, reserved: &AtomicU64| {
            held.load(Ordering::Relaxed).saturating_add(reserved.load(Ordering::Relaxed))
        };
        StorageUsage {
            kv_bytes: both(&self.kv_bytes, &self.reserved_kv_bytes),
            output_bytes: both(&self.output_bytes, &self.reserved_output_bytes),
            event_keys: both(&self.event_keys, &self.reserved_event_keys),
            module_bytes: self.module_bytes.load(Ordering::Relaxed),
        }
    }

    /// The store was measured: this is what it holds.
    pub(crate) fn measured(&self, usage: StorageUsage) {
        self.kv_bytes.store(usage.kv_bytes, Ordering::Relaxed);
        self.output_bytes.store(usage.output_bytes, Ordering::Relaxed);
        self.event_keys.store(usage.event_keys, Ordering::Relaxed);
        self.module_bytes.store(usage.module_bytes, Ordering::Relaxed);
    }

    /// What was reserved for writes (`reserve_effects`, `reserve_event_key`) was committed: it
    /// is held now.
    pub(crate) fn reserved_committed(&self, usage: StorageUsage) {
        self.reserved_gone(usage);
        self.add(usage);
    }

    /// What was reserved for writes will not be committed (a failed or fenced commit, a
    /// duplicate event): the room is free again.
    pub(crate) fn reserved_gone(&self, usage: StorageUsage) {
        unreserve(&self.reserved_kv_bytes, usage.kv_bytes);
        unreserve(&self.reserved_output_bytes, usage.output_bytes);
        unreserve(&self.reserved_event_keys, usage.event_keys);
    }

    /// Something was committed that adds `usage` (without a reservation: an operator's writes, a
    /// module).
    pub(crate) fn add(&self, usage: StorageUsage) {
        if usage == StorageUsage::default() {
            return;
        }
        self.kv_bytes.fetch_add(usage.kv_bytes, Ordering::Relaxed);
        self.output_bytes.fetch_add(usage.output_bytes, Ordering::Relaxed);
        self.event_keys.fetch_add(usage.event_keys, Ordering::Relaxed);
        self.module_bytes.fetch_add(usage.module_bytes, Ordering::Relaxed);
    }

    /// Reserves room for `action`'s effects, or says why they may not be kept (they would take
    /// the tenant past a quota). An action that writes nothing (most) costs no more than this
    /// check of its sizes.
    pub(crate) fn reserve_effects(
        &self,
        policy: impl FnOnce() -> Arc<TenantConfig>,
        action: &str,
        adds: StorageUsage,
    ) -> Result<(), Failure> {
        if adds.kv_bytes == 0 && adds.output_bytes == 0 {
            return Ok(());
        }
        let policy = policy();
        let refused = |what: &str, held: u64, max: u64| {
            let message = format!(
                "the tenant's {what} holds {held} bytes of its {max}: this action's writes were not kept (finished sessions free their outputs when purged; ask the operator for more)"
            );
            Failure::new(FailureKind::StorageQuota, action, message)
        };
        reserve(&self.kv_bytes, &self.reserved_kv_bytes, adds.kv_bytes, policy.max_kv_bytes)
            .map_err(|held| refused("key-value space", held, policy.max_kv_bytes))?;
        let outputs =
            reserve(&self.output_bytes, &self.reserved_output_bytes, adds.output_bytes, policy.max_stored_output_bytes);
        if let Err(held) = outputs {
            unreserve(&self.reserved_kv_bytes, adds.kv_bytes);
            return Err(refused("stored outputs", held, policy.max_stored_output_bytes));
        }
        Ok(())
    }

    /// Reserves an idempotency key for a keyed event, or refuses it while the tenant holds its
    /// most keys.
    pub(crate) fn reserve_event_key(&self, tenant: &str, policy: &TenantConfig) -> Result<(), Error> {
        reserve(&self.event_keys, &self.reserved_event_keys, 1, policy.max_event_keys).map_err(|held| Error::Quota {
            owner: format!("tenant `{tenant}`"),
            what: "idempotency keys",
            count: held,
        })
    }

    /// Refuses a new module of `bytes` that would take the tenant past its module bytes.
    pub(crate) fn check_module(&self, tenant: &str, policy: &TenantConfig, bytes: usize) -> Result<(), Error> {
        let held = self.module_bytes.load(Ordering::Relaxed);
        if held.saturating_add(size(bytes)) > policy.max_module_bytes {
            return Err(Error::Quota { owner: format!("tenant `{tenant}`"), what: "stored module bytes", count: held });
        }
        Ok(())
    }
}
