//! A tenant's fuel token bucket, filled at the rate its policy sets up to its burst, drawn by
//! reservations and settled at what actions really cost (so it may go into debt).

use crate::limits::TenantConfig;
use std::time::{Duration, Instant};

/// A fuel token bucket: `rate` fuel per second up to `burst`. Its level may fall below zero (an
/// action that cost more than was reserved for it): the debt is paid back by refilling first.
#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    pub(super) level: i128,
    updated: Instant,
}

impl TokenBucket {
    pub(super) fn new(burst: u64, now: Instant) -> Self {
        TokenBucket { level: i128::from(burst), updated: now }
    }

    fn refill(&mut self, policy: &TenantConfig, now: Instant) {
        let elapsed = i128::try_from(now.saturating_duration_since(self.updated).as_nanos()).unwrap_or(i128::MAX);
        let added = i128::from(policy.fuel_per_second).saturating_mul(elapsed) / 1_000_000_000;
        self.level = self.level.saturating_add(added).min(i128::from(policy.fuel_burst));
        self.updated = now;
    }

    /// Takes `amount`, or tells when the bucket will hold it.
    pub(super) fn reserve(&mut self, policy: &TenantConfig, amount: u64, now: Instant) -> Result<(), Instant> {
        self.refill(policy, now);
        let missing = i128::from(amount) - self.level;
        if missing <= 0 {
            self.level -= i128::from(amount);
            return Ok(());
        }
        let nanos = missing.saturating_mul(1_000_000_000) / i128::from(policy.fuel_per_second.max(1)) + 1;
        Err(now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Settles a reservation of `reserved` at what the action really cost.
    pub(super) fn settle(&mut self, policy: &TenantConfig, reserved: u64, cost: u64) {
        let level = self.level + i128::from(reserved) - i128::from(cost);
        self.level = level.min(i128::from(policy.fuel_burst));
    }
}
