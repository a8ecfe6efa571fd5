//! Who runs next: the apps' pending queues, the action list bound (`max_in_flight` per app),
//! each tenant's fuel token bucket, and weighted deficit round robin between tenants, charged in
//! fuel actually burned.
//!
//! This is pure bookkeeping, with no threads and no clock of its own (every call takes `now`),
//! so fairness can be reasoned about and tested without timing. The pool's workers call
//! [`Scheduler::pick`] for their next action and [`Scheduler::complete`] when it is done.
//!
//! ## How a pick is made
//! - An app is *dispatchable* when it has a pending action and fewer than `max_in_flight` actions
//!   in the action list (dispatched, not yet complete). Each tenant keeps its dispatchable apps in
//!   a round-robin queue; the scheduler keeps the tenants that have any in `active`.
//! - Deficit round robin: the tenant at the front of `active` is served while its deficit is
//!   positive; otherwise it is topped up by `quantum × weight` and rotated to the back. A dispatch
//!   charges the tenant's running estimate of fuel per action; completion corrects the charge to
//!   the fuel actually burned. A tenant that runs out of work leaves `active` and its deficit is
//!   reset, so idle time banks no credit.
//! - Token bucket: a dispatch reserves the whole per-action fuel cap from the tenant's bucket, and
//!   completion refunds what was not burned. A tenant whose bucket holds less than one cap is
//!   *throttled*: it is skipped (its actions wait; they never fail for it) and the pick reports
//!   when its bucket will have refilled.

use crate::metrics::TenantCounters;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A session's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s-{}", self.0)
    }
}

/// Index of a tenant in the scheduler.
pub(crate) type TenantIx = usize;
/// Index of an app (all versions of one named app of one tenant) in the scheduler.
pub(crate) type AppIx = usize;

/// A fuel token bucket: `rate` fuel per second up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    level: u64,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket { rate, burst, level: burst, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        let added = u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000;
        self.level = u64::try_from(u128::from(self.level) + added).unwrap_or(u64::MAX).min(self.burst);
        self.updated = now;
    }

    /// Ok when the bucket holds `amount`, else when it will.
    fn check(&mut self, amount: u64, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.level >= amount {
            return Ok(());
        }
        let missing = u128::from(amount - self.level);
        let nanos = missing * 1_000_000_000 / u128::from(self.rate.max(1)) + 1;
        Err(now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Takes `amount`, or tells when the bucket will hold it.
    fn reserve(&mut self, amount: u64, now: Instant) -> Result<(), Instant> {
        self.check(amount, now)?;
        self.level -= amount;
        Ok(())
    }

    fn refund(&mut self, amount: u64) {
        self.level = self.level.saturating_add(amount).min(self.burst);
    }

    pub(crate) fn set(&mut self, rate: u64, burst: u64) {
        self.rate = rate;
        self.burst = burst;
        self.level = self.level.min(burst);
    }
}

/// A tenant as the scheduler sees it.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    pub(crate) name: String,
    pub(crate) weight: u32,
    /// Fuel reserved per dispatch: the tenant's per-action cap.
    pub(crate) fuel_per_action: u64,
    pub(crate) bucket: TokenBucket,
    /// Its actions stay queued until the suspension is lifted.
    pub(crate) suspended: bool,
    deficit: i64,
    /// Running estimate of fuel per action (what a dispatch is charged until it completes).
    estimate: u64,
    ready_apps: VecDeque<AppIx>,
    in_active: bool,
    throttled_since: Option<Instant>,
    pub(crate) counters: TenantCounters,
    pub(crate) queue_depth: u64,
    pub(crate) in_flight: u64,
}

/// One named app of a tenant: its pending queue and its place in the action list.
#[derive(Debug)]
pub(crate) struct AppSlot {
    pub(crate) tenant: TenantIx,
    pending: VecDeque<(SessionId, Instant)>,
    in_flight: u32,
    pub(crate) max_in_flight: u32,
    in_ready: bool,
    /// The most actions of this app ever in the action list at once (a measured bound).
    pub(crate) peak_in_flight: u32,
}

/// An action taken off a pending queue into the action list, for a worker to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dispatch {
    pub(crate) session: SessionId,
    pub(crate) app: AppIx,
    pub(crate) tenant: TenantIx,
    /// Fuel the action may burn.
    pub(crate) fuel: u64,
    /// What the tenant's deficit was charged for it at dispatch.
    estimate: u64,
    /// When the action became ready.
    pub(crate) ready_at: Instant,
}

/// What [`Scheduler::pick`] found.
#[derive(Debug)]
pub(crate) enum Pick {
    /// Run this.
    Run(Dispatch),
    /// Nothing runnable now; a throttled tenant's bucket refills at this instant.
    WaitUntil(Instant),
    /// Nothing runnable until something is enqueued or completes.
    Idle,
}

/// Why an action could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// The app's pending queue is at its bound.
    App(usize),
    /// All pending queues together are at the host's bound.
    Total(usize),
}

/// The scheduler's state.
#[derive(Debug)]
pub(crate) struct Scheduler {
    pub(crate) tenants: Vec<TenantSlot>,
    pub(crate) apps: Vec<AppSlot>,
    active: VecDeque<TenantIx>,
    pending_total: usize,
    max_pending_per_app: usize,
    max_pending_total: usize,
    quantum: u64,
}

/// Fuel a tenant of weight 1 is credited per round.
pub(crate) const QUANTUM: u64 = 200_000;

impl Scheduler {
    pub(crate) fn new(max_pending_per_app: usize, max_pending_total: usize) -> Self {
        Scheduler {
            tenants: Vec::new(),
            apps: Vec::new(),
            active: VecDeque::new(),
            pending_total: 0,
            max_pending_per_app,
            max_pending_total,
            quantum: QUANTUM,
        }
    }

    pub(crate) fn add_tenant(
        &mut self,
        name: &str,
        weight: u32,
        fuel_per_action: u64,
        bucket: TokenBucket,
    ) -> TenantIx {
        self.tenants.push(TenantSlot {
            name: name.to_owned(),
            weight: weight.max(1),
            fuel_per_action,
            bucket,
            suspended: false,
            deficit: 0,
            estimate: 10_000,
            ready_apps: VecDeque::new(),
            in_active: false,
            throttled_since: None,
            counters: TenantCounters::default(),
            queue_depth: 0,
            in_flight: 0,
        });
        self.tenants.len() - 1
    }

    pub(crate) fn add_app(&mut self, tenant: TenantIx, max_in_flight: u32) -> AppIx {
        self.apps.push(AppSlot {
            tenant,
            pending: VecDeque::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            in_ready: false,
            peak_in_flight: 0,
        });
        self.apps.len() - 1
    }

    /// Actions waiting in all pending queues.
    pub(crate) fn pending_total(&self) -> usize {
        self.pending_total
    }

    /// Whether one more action fits the app's pending queue and the host's.
    pub(crate) fn has_room(&self, app: AppIx) -> Result<(), QueueFull> {
        if self.pending_total >= self.max_pending_total {
            return Err(QueueFull::Total(self.max_pending_total));
        }
        if self.apps[app].pending.len() >= self.max_pending_per_app {
            return Err(QueueFull::App(self.max_pending_per_app));
        }
        Ok(())
    }

    /// Queues a session's next action. New work (a new session, a customer event) checks
    /// [`Scheduler::has_room`] first; follow-ups of work already accepted (a `goto`, a timeout,
    /// an event from an inbox) are never refused, or a session could be lost mid-flow.
    pub(crate) fn push(&mut self, app: AppIx, session: SessionId, now: Instant) {
        self.apps[app].pending.push_back((session, now));
        self.pending_total += 1;
        let tenant = self.apps[app].tenant;
        self.tenants[tenant].queue_depth += 1;
        self.make_ready(app);
    }

    /// Puts an app in its tenant's ready queue (and the tenant in `active`) if it is dispatchable.
    fn make_ready(&mut self, app: AppIx) {
        let slot = &mut self.apps[app];
        if slot.in_ready || slot.pending.is_empty() || slot.in_flight >= slot.max_in_flight {
            return;
        }
        slot.in_ready = true;
        let tenant = &mut self.tenants[slot.tenant];
        tenant.ready_apps.push_back(app);
        if !tenant.in_active {
            tenant.in_active = true;
            self.active.push_back(slot.tenant);
        }
    }

    /// The next action to run, by weighted deficit round robin over the tenants with work.
    pub(crate) fn pick(&mut self, now: Instant) -> Pick {
        let mut earliest_refill: Option<Instant> = None;
        // At most two passes: if the first finds no tenant in credit, the rounds that would pass
        // before one is are credited at once, and the second pass serves it.
        for _ in 0..2 {
            for _ in 0..self.active.len() {
                let Some(&t) = self.active.front() else { break };
                if !self.has_ready_app(t) {
                    self.active.pop_front();
                    let tenant = &mut self.tenants[t];
                    tenant.in_active = false;
                    tenant.deficit = 0;
                    continue;
                }
                let tenant = &mut self.tenants[t];
                if tenant.suspended {
                    self.active.rotate_left(1);
                    continue;
                }
                if tenant.deficit > 0 {
                    match tenant.bucket.reserve(tenant.fuel_per_action, now) {
                        Ok(()) => return Pick::Run(self.dispatch(t, now)),
                        Err(refilled) => {
                            tenant.throttled_since.get_or_insert(now);
                            earliest_refill = Some(earliest_refill.map_or(refilled, |e| e.min(refilled)));
                        }
                    }
                }
                self.active.rotate_left(1);
            }
            // Nobody in credit could run. Every active tenant gets `rounds` quanta, `rounds` being
            // the fewest after which a tenant that is not throttled is in credit: the same as
            // that many rounds of classic DRR in which nobody could be served.
            let mut rounds: Option<u64> = None;
            for &t in &self.active {
                let tenant = &mut self.tenants[t];
                if tenant.deficit > 0 || tenant.suspended {
                    continue;
                }
                if let Err(refilled) = tenant.bucket.check(tenant.fuel_per_action, now) {
                    tenant.throttled_since.get_or_insert(now);
                    earliest_refill = Some(earliest_refill.map_or(refilled, |e| e.min(refilled)));
                    continue;
                }
                let credit = self.quantum * u64::from(tenant.weight);
                let needed = (tenant.deficit.unsigned_abs() + 1).div_ceil(credit);
                rounds = Some(rounds.map_or(needed, |r| r.min(needed)));
            }
            let Some(rounds) = rounds else { break };
            for &t in &self.active {
                let tenant = &mut self.tenants[t];
                let credit = rounds.saturating_mul(self.quantum).saturating_mul(u64::from(tenant.weight));
                tenant.deficit = tenant.deficit.saturating_add(i64::try_from(credit).unwrap_or(i64::MAX));
            }
        }
        match earliest_refill {
            Some(at) => Pick::WaitUntil(at),
            None => Pick::Idle,
        }
    }

    /// Whether the tenant has an app it can dispatch from (dropping apps that stopped being
    /// dispatchable from the front of its ready queue).
    fn has_ready_app(&mut self, t: TenantIx) -> bool {
        let tenant = &mut self.tenants[t];
        while let Some(&app) = tenant.ready_apps.front() {
            let slot = &mut self.apps[app];
            if !slot.pending.is_empty() && slot.in_flight < slot.max_in_flight {
                return true;
            }
            slot.in_ready = false;
            tenant.ready_apps.pop_front();
        }
        false
    }

    /// Moves the next action of tenant `t`'s first ready app into the action list. The tenant's
    /// fuel was reserved, and it has a ready app.
    fn dispatch(&mut self, t: TenantIx, now: Instant) -> Dispatch {
        let tenant = &mut self.tenants[t];
        if let Some(since) = tenant.throttled_since.take() {
            tenant.counters.throttled += now.saturating_duration_since(since);
        }
        let app = tenant.ready_apps.pop_front().unwrap_or_default();
        let (estimate, fuel) = (tenant.estimate, tenant.fuel_per_action);
        tenant.deficit = tenant.deficit.saturating_sub(i64::try_from(estimate).unwrap_or(i64::MAX));
        tenant.queue_depth -= 1;
        tenant.in_flight += 1;
        let slot = &mut self.apps[app];
        slot.in_ready = false;
        let (session, ready_at) = slot.pending.pop_front().unwrap_or((SessionId(0), now));
        slot.in_flight += 1;
        slot.peak_in_flight = slot.peak_in_flight.max(slot.in_flight);
        self.pending_total -= 1;
        self.make_ready(app);
        Dispatch { session, app, tenant: t, fuel, estimate, ready_at }
    }

    /// Releases the action's slot in the action list and charges its tenant the fuel it burned.
    pub(crate) fn complete(&mut self, dispatch: &Dispatch, burned: u64) {
        let slot = &mut self.apps[dispatch.app];
        slot.in_flight -= 1;
        let tenant = &mut self.tenants[dispatch.tenant];
        tenant.in_flight -= 1;
        tenant.bucket.refund(dispatch.fuel.saturating_sub(burned));
        let correction =
            i64::try_from(dispatch.estimate).unwrap_or(i64::MAX) - i64::try_from(burned).unwrap_or(i64::MAX);
        tenant.deficit = tenant.deficit.saturating_add(correction);
        // An exponential moving average (1/8) of fuel per action.
        tenant.estimate = (tenant.estimate * 7 + burned) / 8 + 1;
        tenant.counters.fuel += burned;
        tenant.counters.actions += 1;
        self.make_ready(dispatch.app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited(now: Instant) -> TokenBucket {
        TokenBucket::new(u64::MAX / 4, u64::MAX / 4, now)
    }

    /// Two saturated tenants; every action burns `fuel(t)`; completes at once.
    fn run(weights: [u32; 2], fuel: [u64; 2], picks: usize) -> [u64; 2] {
        let now = Instant::now();
        let mut s = Scheduler::new(1000, 10_000);
        let mut apps = Vec::new();
        for w in weights {
            let t = s.add_tenant("t", w, 1_000_000, unlimited(now));
            apps.push(s.add_app(t, 1));
        }
        let mut burned = [0u64; 2];
        for i in 0..picks {
            for &app in &apps {
                while s.apps[app].pending.len() < 2 {
                    s.enqueue(app, SessionId(i as u64), now).expect("room");
                }
            }
            let Pick::Run(d) = s.pick(now) else { panic!("work is pending") };
            s.complete(&d, fuel[d.tenant]);
            burned[d.tenant] += fuel[d.tenant];
        }
        burned
    }

    #[test]
    fn fuel_is_shared_by_weight_whatever_each_action_burns() {
        for fuel in [[1_000, 1_000], [1_000, 50_000], [400_000, 3_000]] {
            let burned = run([1, 3], fuel, 20_000);
            let ratio = burned[1] as f64 / burned[0] as f64;
            assert!((2.9..=3.1).contains(&ratio), "fuel {fuel:?}: ratio {ratio}");
        }
    }

    #[test]
    fn a_tenant_deep_in_debt_is_still_served_when_alone() {
        let now = Instant::now();
        let mut s = Scheduler::new(100, 100);
        let t = s.add_tenant("t", 1, 50_000_000, unlimited(now));
        let app = s.add_app(t, 1);
        for i in 0..3 {
            s.enqueue(app, SessionId(i), now).expect("room");
            let Pick::Run(d) = s.pick(now) else { panic!("pending work must be picked") };
            s.complete(&d, 50_000_000);
        }
    }

    #[test]
    fn max_in_flight_bounds_the_action_list_per_app() {
        let now = Instant::now();
        let mut s = Scheduler::new(100, 100);
        let t = s.add_tenant("t", 1, 1000, unlimited(now));
        let app = s.add_app(t, 1);
        for i in 0..5 {
            s.enqueue(app, SessionId(i), now).expect("room");
        }
        let Pick::Run(first) = s.pick(now) else { panic!("runnable") };
        assert!(matches!(s.pick(now), Pick::Idle), "a second action of the app must wait");
        s.complete(&first, 10);
        assert!(matches!(s.pick(now), Pick::Run(_)), "the slot was released");
        assert_eq!(s.apps[app].peak_in_flight, 1);
    }

    #[test]
    fn an_empty_bucket_throttles_and_says_when_it_refills() {
        let now = Instant::now();
        let mut s = Scheduler::new(100, 100);
        let t = s.add_tenant("t", 1, 1000, TokenBucket::new(10_000, 1000, now));
        let app = s.add_app(t, 4);
        for i in 0..3 {
            s.enqueue(app, SessionId(i), now).expect("room");
        }
        let Pick::Run(d) = s.pick(now) else { panic!("the burst allows one") };
        s.complete(&d, 1000);
        match s.pick(now) {
            Pick::WaitUntil(at) => assert!(at > now && at <= now + Duration::from_millis(101)),
            other => panic!("expected throttling, got {other:?}"),
        }
        assert!(matches!(s.pick(now + Duration::from_millis(101)), Pick::Run(_)));
    }

    impl Scheduler {
        fn enqueue(&mut self, app: AppIx, session: SessionId, now: Instant) -> Result<(), QueueFull> {
            self.has_room(app)?;
            self.push(app, session, now);
            Ok(())
        }
    }

    #[test]
    fn queues_are_bounded() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 3);
        let t = s.add_tenant("t", 1, 1000, unlimited(now));
        let (a, b) = (s.add_app(t, 1), s.add_app(t, 1));
        s.enqueue(a, SessionId(1), now).expect("room");
        s.enqueue(a, SessionId(2), now).expect("room");
        assert_eq!(s.enqueue(a, SessionId(3), now), Err(QueueFull::App(2)));
        s.enqueue(b, SessionId(4), now).expect("room");
        assert_eq!(s.enqueue(b, SessionId(5), now), Err(QueueFull::Total(3)));
    }
}
