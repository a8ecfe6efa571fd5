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
//! - Everything is charged in an action's *real cost* ([`Usage::cost`]): the fuel it burned, or
//!   its wall time at the host's measured fuel per second when that is more. Time asleep, in host
//!   calls or in the store is paid for like the wasm it could have run.
//! - Deficit round robin: the tenant at the front of `active` is served while its deficit is
//!   positive; otherwise it is topped up by `quantum × weight` and rotated to the back. A dispatch
//!   charges the tenant's running estimate of cost per action; completion corrects the charge to
//!   the real cost. A tenant that runs out of work leaves `active` and its deficit is reset, so
//!   idle time banks no credit.
//! - Token bucket: a dispatch reserves the whole per-action fuel cap from the tenant's bucket, and
//!   completion settles it at the real cost (an action that cost more than the cap leaves the
//!   bucket in debt, paid back before the tenant runs again). A tenant whose bucket holds less
//!   than one cap is *throttled*: it is skipped (its actions wait; they never fail for it) and
//!   the pick reports when its bucket will have refilled.
//! - No tenant holds the whole pool: a tenant runs at most `max_concurrent` actions at once
//!   (default: every worker), and a tenant whose actions are long (typically over one quantum of
//!   cost, about a quarter of a millisecond; a new tenant counts as long until it has shown
//!   otherwise) never more than all workers but one while another tenant has work ready. Short
//!   actions are exempt: a worker they hold is free again in microseconds, and capping them
//!   would make every weight 1:1 between two saturating tenants on a two-worker pool.

use crate::metrics::TenantCounters;
use crate::sandbox::Usage;
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

/// A fuel token bucket: `rate` fuel per second up to `burst`. Its level may fall below zero (an
/// action that cost more than was reserved for it): the debt is paid back by refilling first.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    level: i128,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket { rate, burst, level: i128::from(burst), updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        let added = i128::from(self.rate) * i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX) / 1_000_000_000;
        self.level = self.level.saturating_add(added).min(i128::from(self.burst));
        self.updated = now;
    }

    /// Ok when the bucket holds `amount`, else when it will.
    fn check(&mut self, amount: u64, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        let missing = i128::from(amount) - self.level;
        if missing <= 0 {
            return Ok(());
        }
        let nanos = missing.saturating_mul(1_000_000_000) / i128::from(self.rate.max(1)) + 1;
        Err(now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Takes `amount`, or tells when the bucket will hold it.
    fn reserve(&mut self, amount: u64, now: Instant) -> Result<(), Instant> {
        self.check(amount, now)?;
        self.level -= i128::from(amount);
        Ok(())
    }

    /// Settles a reservation of `reserved` at what the action really cost.
    fn settle(&mut self, reserved: u64, cost: u64) {
        self.level = (self.level + i128::from(reserved) - i128::from(cost)).min(i128::from(self.burst));
    }

    pub(crate) fn set(&mut self, rate: u64, burst: u64) {
        self.rate = rate;
        self.burst = burst;
        self.level = self.level.min(i128::from(burst));
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
    /// Actions it may run at once (0: as many as there are workers).
    pub(crate) max_concurrent: u32,
    deficit: i64,
    /// Running estimate of the cost of an action (what a dispatch is charged until it completes).
    estimate: u64,
    /// Running estimate of the cost of an action for the concurrency cap: starts pessimistic
    /// (the per-action fuel cap), so a new tenant is treated as having long actions.
    typical_cost: u64,
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
    /// The pool's workers: what "every worker" and "the last free worker" mean.
    workers: u32,
    pending_total: usize,
    max_pending_per_app: usize,
    max_pending_total: usize,
    quantum: u64,
}

/// Fuel a tenant of weight 1 is credited per round.
pub(crate) const QUANTUM: u64 = 200_000;
/// A tenant whose actions typically cost more than this is kept off the last worker.
const LONG_ACTION: u64 = QUANTUM;

impl Scheduler {
    pub(crate) fn new(workers: usize, max_pending_per_app: usize, max_pending_total: usize) -> Self {
        Scheduler {
            tenants: Vec::new(),
            apps: Vec::new(),
            active: VecDeque::new(),
            workers: u32::try_from(workers).unwrap_or(u32::MAX).max(1),
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
            max_concurrent: 0,
            deficit: 0,
            estimate: 10_000,
            typical_cost: fuel_per_action,
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
                if self.tenants[t].suspended || self.at_concurrency_cap(t) {
                    self.active.rotate_left(1);
                    continue;
                }
                let tenant = &mut self.tenants[t];
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
            let eligible: Vec<TenantIx> =
                self.active.iter().copied().filter(|&t| !self.at_concurrency_cap(t)).collect();
            for t in eligible {
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

    /// Whether tenant `t` runs as many actions as it may: its own `max_concurrent`, and never
    /// more than all workers but one while another tenant has an action ready to go.
    fn at_concurrency_cap(&self, t: TenantIx) -> bool {
        let tenant = &self.tenants[t];
        let own = match tenant.max_concurrent {
            0 => self.workers,
            cap => cap.min(self.workers),
        };
        let in_flight = u32::try_from(tenant.in_flight).unwrap_or(u32::MAX);
        if in_flight >= own {
            return true;
        }
        tenant.typical_cost > LONG_ACTION && in_flight + 1 >= self.workers && self.workers > 1 && self.others_ready(t)
    }

    /// Whether a tenant other than `t` has an action it could dispatch now.
    fn others_ready(&self, t: TenantIx) -> bool {
        self.active.iter().any(|&o| {
            o != t
                && !self.tenants[o].suspended
                && self.tenants[o].ready_apps.iter().any(|&app| {
                    let slot = &self.apps[app];
                    !slot.pending.is_empty() && slot.in_flight < slot.max_in_flight
                })
        })
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

    /// Releases the action's slot in the action list and charges its tenant what the action
    /// really cost.
    pub(crate) fn complete(&mut self, dispatch: &Dispatch, usage: &Usage) {
        let slot = &mut self.apps[dispatch.app];
        slot.in_flight -= 1;
        let tenant = &mut self.tenants[dispatch.tenant];
        tenant.in_flight -= 1;
        tenant.bucket.settle(dispatch.fuel, usage.cost);
        let correction =
            i64::try_from(dispatch.estimate).unwrap_or(i64::MAX) - i64::try_from(usage.cost).unwrap_or(i64::MAX);
        tenant.deficit = tenant.deficit.saturating_add(correction);
        // Exponential moving averages (1/8) of the cost of an action.
        tenant.estimate = (tenant.estimate.saturating_mul(7).saturating_add(usage.cost)) / 8 + 1;
        tenant.typical_cost = (tenant.typical_cost / 8).saturating_mul(7).saturating_add(usage.cost / 8);
        tenant.counters.record(usage);
        self.make_ready(dispatch.app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cost: u64) -> Usage {
        Usage { fuel: cost, cost, ..Usage::default() }
    }

    fn unlimited(now: Instant) -> TokenBucket {
        TokenBucket::new(u64::MAX / 4, u64::MAX / 4, now)
    }

    /// Two saturated tenants; every action burns `fuel(t)`; completes at once.
    fn run(weights: [u32; 2], fuel: [u64; 2], picks: usize) -> [u64; 2] {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 1000, 10_000);
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
            s.complete(&d, &usage(fuel[d.tenant]));
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
        let mut s = Scheduler::new(2, 100, 100);
        let t = s.add_tenant("t", 1, 50_000_000, unlimited(now));
        let app = s.add_app(t, 1);
        for i in 0..3 {
            s.enqueue(app, SessionId(i), now).expect("room");
            let Pick::Run(d) = s.pick(now) else { panic!("pending work must be picked") };
            s.complete(&d, &usage(50_000_000));
        }
    }

    #[test]
    fn max_in_flight_bounds_the_action_list_per_app() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 100, 100);
        let t = s.add_tenant("t", 1, 1000, unlimited(now));
        let app = s.add_app(t, 1);
        for i in 0..5 {
            s.enqueue(app, SessionId(i), now).expect("room");
        }
        let Pick::Run(first) = s.pick(now) else { panic!("runnable") };
        assert!(matches!(s.pick(now), Pick::Idle), "a second action of the app must wait");
        s.complete(&first, &usage(10));
        assert!(matches!(s.pick(now), Pick::Run(_)), "the slot was released");
        assert_eq!(s.apps[app].peak_in_flight, 1);
    }

    #[test]
    fn an_empty_bucket_throttles_and_says_when_it_refills() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 100, 100);
        let t = s.add_tenant("t", 1, 1000, TokenBucket::new(10_000, 1000, now));
        let app = s.add_app(t, 4);
        for i in 0..3 {
            s.enqueue(app, SessionId(i), now).expect("room");
        }
        let Pick::Run(d) = s.pick(now) else { panic!("the burst allows one") };
        s.complete(&d, &usage(1000));
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
    fn a_tenant_keeps_off_the_last_worker_while_another_has_work_ready() {
        let now = Instant::now();
        let mut s = Scheduler::new(3, 100, 100);
        let hog = s.add_tenant("hog", 1, 50_000_000, unlimited(now));
        let polite = s.add_tenant("polite", 1, 1000, unlimited(now));
        let hog_apps: Vec<AppIx> = (0..5).map(|_| s.add_app(hog, 1)).collect();
        for (i, &app) in hog_apps.iter().enumerate() {
            s.enqueue(app, SessionId(i as u64), now).expect("room");
        }
        // Alone, the hog may use every worker.
        let mut running = Vec::new();
        for _ in 0..3 {
            let Pick::Run(d) = s.pick(now) else { panic!("the hog has work and workers are free") };
            running.push(d);
        }
        for d in running.drain(..) {
            s.complete(&d, &usage(40_000_000));
        }
        // With another tenant waiting, it gets at most two of the three.
        let polite_app = s.add_app(polite, 4);
        for i in 0..3 {
            s.enqueue(polite_app, SessionId(100 + i), now).expect("room");
        }
        for &app in &hog_apps {
            s.enqueue(app, SessionId(50), now).expect("room");
        }
        let mut hogging = 0;
        for _ in 0..3 {
            let Pick::Run(d) = s.pick(now) else { panic!("work is ready") };
            if d.tenant == hog {
                hogging += 1;
            }
            running.push(d);
        }
        assert!(hogging <= 2, "the hog took {hogging} of 3 workers while another tenant had work");
        assert!(running.iter().any(|d| d.tenant == polite));
    }

    #[test]
    fn short_actions_may_use_every_worker_so_weights_hold_on_a_small_pool() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 100, 100);
        let quick = s.add_tenant("quick", 3, 1_000_000, unlimited(now));
        let other = s.add_tenant("other", 1, 1_000_000, unlimited(now));
        let (a, b) = (s.add_app(quick, 2), s.add_app(other, 2));
        // A new tenant counts as long until its actions show otherwise.
        s.enqueue(a, SessionId(1), now).expect("room");
        let Pick::Run(first) = s.pick(now) else { panic!("runnable") };
        s.enqueue(b, SessionId(2), now).expect("room");
        assert!(s.at_concurrency_cap(quick), "a new tenant is kept off the last worker");
        s.complete(&first, &usage(1000));
        for i in 0..40 {
            s.enqueue(a, SessionId(i), now).expect("room");
            let Pick::Run(d) = s.pick(now) else { panic!("runnable") };
            if d.tenant == quick {
                s.complete(&d, &usage(1000));
            } else {
                s.complete(&d, &usage(1000));
                s.enqueue(b, SessionId(2), now).expect("room");
            }
        }
        s.enqueue(a, SessionId(3), now).expect("room");
        let running = loop {
            let Pick::Run(d) = s.pick(now) else { panic!("runnable") };
            if d.tenant == quick {
                break d;
            }
            s.complete(&d, &usage(1000));
            s.enqueue(b, SessionId(2), now).expect("room");
        };
        assert_eq!(s.tenants[quick].in_flight, 1, "{running:?}");
        assert!(!s.at_concurrency_cap(quick), "short actions may take the last worker too");
    }

    #[test]
    fn max_concurrent_caps_a_tenant_across_its_apps() {
        let now = Instant::now();
        let mut s = Scheduler::new(8, 100, 100);
        let t = s.add_tenant("t", 1, 1000, unlimited(now));
        s.tenants[t].max_concurrent = 2;
        for i in 0..6 {
            let app = s.add_app(t, 1);
            s.enqueue(app, SessionId(i), now).expect("room");
        }
        assert!(matches!(s.pick(now), Pick::Run(_)));
        assert!(matches!(s.pick(now), Pick::Run(_)));
        assert!(matches!(s.pick(now), Pick::Idle), "a third concurrent action is over the tenant's cap");
    }

    #[test]
    fn an_action_that_cost_more_than_its_reservation_leaves_the_bucket_in_debt() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 100, 100);
        // 1000 fuel per second, burst 1000: one action's reservation.
        let t = s.add_tenant("t", 1, 1000, TokenBucket::new(1000, 1000, now));
        let app = s.add_app(t, 1);
        s.enqueue(app, SessionId(1), now).expect("room");
        s.enqueue(app, SessionId(2), now).expect("room");
        let Pick::Run(d) = s.pick(now) else { panic!("the burst allows one") };
        // It slept: its real cost is ten times what was reserved.
        s.complete(&d, &Usage { fuel: 10, cost: 10_000, ..Usage::default() });
        match s.pick(now) {
            // 10 000 of debt plus a reservation of 1000, at 1000 per second: 11 s.
            Pick::WaitUntil(at) => assert!(at >= now + Duration::from_secs(10), "{:?}", at - now),
            other => panic!("expected throttling, got {other:?}"),
        }
        assert_eq!(s.tenants[t].counters.cost, 10_000);
        assert_eq!(s.tenants[t].counters.fuel, 10);
    }

    #[test]
    fn queues_are_bounded() {
        let now = Instant::now();
        let mut s = Scheduler::new(2, 2, 3);
        let t = s.add_tenant("t", 1, 1000, unlimited(now));
        let (a, b) = (s.add_app(t, 1), s.add_app(t, 1));
        s.enqueue(a, SessionId(1), now).expect("room");
        s.enqueue(a, SessionId(2), now).expect("room");
        assert_eq!(s.enqueue(a, SessionId(3), now), Err(QueueFull::App(2)));
        s.enqueue(b, SessionId(4), now).expect("room");
        assert_eq!(s.enqueue(b, SessionId(5), now), Err(QueueFull::Total(3)));
    }
}
