//! How many actions a tenant may have running at once: its own cap, the pool's, and the
//! long-action cap that keeps the last worker for short actions (see the scheduler's docs).

use super::{Scheduler, TenantIx, TenantSlot};
use std::time::Instant;

/// A tenant with short actions that had one ready this recently keeps the last worker free of
/// long actions even while it has nothing ready: its next event or timer finds a worker at
/// once, instead of waiting behind long actions that cannot be interrupted (a synchronous
/// attempt, a straight run of page faults).
pub(super) const SHORT_ACTIVE: std::time::Duration = std::time::Duration::from_millis(100);

impl<T> Scheduler<T> {
    /// Whether tenant `t` may have one more action running: if its actions are long, never more
    /// than all workers but one while a tenant with short actions is active (had one ready in
    /// the last [`SHORT_ACTIVE`]) or another tenant has work ready — unless every tenant with
    /// work ready has long actions too and `t` is the one owed the most (no lower pass). Short
    /// actions keep the last worker free (their latency); between long tenants the fair share
    /// decides (else two on a two-worker pool would hold one worker each: 1:1). Only a long
    /// tenant at the cap looks through the ready set.
    pub(super) fn may_run_another(&self, t: TenantIx, now: Instant) -> bool {
        let tenant = self.tenant(t);
        let workers = u32::try_from(self.bounds.workers).unwrap_or(u32::MAX);
        let long = |slot: &TenantSlot| slot.typical_cost > self.bounds.long_action;
        if !long(tenant) || workers <= 1 || tenant.running + 1 < workers {
            return true;
        }
        if self.short_ready_at.is_some_and(|at| now.saturating_duration_since(at) < SHORT_ACTIVE) {
            return false;
        }
        // The other ready tenants, by pass.
        let mut others = self.ready.iter().filter(|&&(_, other)| other != t).peekable();
        let Some(&&(lowest, _)) = others.peek() else { return true };
        tenant.pass < lowest && others.all(|&(_, other)| long(self.tenant(other)))
    }

    /// Whether tenant `t` may put a new action in flight (its own cap and the pool's).
    pub(super) fn may_start_another(&self, t: TenantIx) -> bool {
        let tenant = self.tenant(t);
        let own = match tenant.policy.max_concurrent {
            0 => self.bounds.workers,
            cap => usize::try_from(cap).unwrap_or(usize::MAX),
        };
        usize::try_from(tenant.in_flight).unwrap_or(usize::MAX) < own && self.in_flight_total < self.bounds.in_flight
    }
}
