//! Each tenant's storage, counted against its quotas (`max_kv_bytes`, `max_stored_output_bytes`,
//! `max_event_keys`, `max_module_bytes`): measured from the store when the host starts and again
//! every [`REMEASURE`] (by the retention thread, which also purges), plus what this host has
//! committed since. Key-value writes are counted in full, as if every key were new, so an
//! overwrite counts twice until the next measurement: a tenant near its quota may be refused a
//! little early, never let far past it.
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

/// One tenant's storage, as last measured plus what was committed since.
#[derive(Default)]
pub(crate) struct Storage {
    kv_bytes: AtomicU64,
    output_bytes: AtomicU64,
    event_keys: AtomicU64,
    module_bytes: AtomicU64,
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
    /// What it holds now (as far as this host knows).
    pub(crate) fn now(&self) -> StorageUsage {
        StorageUsage {
            kv_bytes: self.kv_bytes.load(Ordering::Relaxed),
            output_bytes: self.output_bytes.load(Ordering::Relaxed),
            event_keys: self.event_keys.load(Ordering::Relaxed),
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

    /// Something was committed that adds `usage`.
    pub(crate) fn add(&self, usage: StorageUsage) {
        self.kv_bytes.fetch_add(usage.kv_bytes, Ordering::Relaxed);
        self.output_bytes.fetch_add(usage.output_bytes, Ordering::Relaxed);
        self.event_keys.fetch_add(usage.event_keys, Ordering::Relaxed);
        self.module_bytes.fetch_add(usage.module_bytes, Ordering::Relaxed);
    }

    /// Why `action`'s effects may not be kept (they would take the tenant past a quota), if so.
    /// An action that writes nothing (most) costs no more than this check of its sizes.
    pub(crate) fn refuse_effects(
        &self,
        policy: impl FnOnce() -> Arc<TenantConfig>,
        action: &str,
        adds: StorageUsage,
    ) -> Option<Failure> {
        if adds.kv_bytes == 0 && adds.output_bytes == 0 {
            return None;
        }
        let (policy, now) = (policy(), self.now());
        let over = |held: u64, adds: u64, max: u64| adds > 0 && held.saturating_add(adds) > max;
        let (what, held, max) = if over(now.kv_bytes, adds.kv_bytes, policy.max_kv_bytes) {
            ("key-value space", now.kv_bytes, policy.max_kv_bytes)
        } else if over(now.output_bytes, adds.output_bytes, policy.max_stored_output_bytes) {
            ("stored outputs", now.output_bytes, policy.max_stored_output_bytes)
        } else {
            return None;
        };
        let message = format!(
            "the tenant's {what} holds {held} bytes of its {max}: this action's writes were not kept (finished sessions free their outputs when purged; ask the operator for more)"
        );
        Some(Failure::new(FailureKind::StorageQuota, action, message))
    }

    /// Refuses a keyed event while the tenant holds its most idempotency keys.
    pub(crate) fn check_event_key(&self, tenant: &str, policy: &TenantConfig) -> Result<(), Error> {
        let held = self.event_keys.load(Ordering::Relaxed);
        if held >= policy.max_event_keys {
            return Err(Error::Quota { owner: format!("tenant `{tenant}`"), what: "idempotency keys", count: held });
        }
        Ok(())
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
