//! Who runs next: the apps' pending queues, the action list (`max_in_flight` per app), each
//! tenant's fuel token bucket, and weighted fair share between tenants, charged in what actions
//! really cost.
//!
//! Pure bookkeeping, with no threads and no clock of its own (every call takes `now`), so
//! fairness is tested without timing. Generic over the task a preempted action leaves behind
//! (`T`): workers hand a yielded action back here and get it again when its turn comes.
//!
//! ## How a pick is made
//! - Everything is charged in an action's *real cost* ([`Usage::cost`]): the fuel it burned, or
//!   its time (on a worker's CPU, waiting in the host, asleep) at the host's measured fuel per
//!   second when that is more.
//! - Fair share is stride scheduling: each tenant has a *pass*, the cost it was charged divided
//!   by its weight, and the ready tenant with the lowest pass goes next. A dispatch charges the
//!   tenant's running estimate of an action's cost; each slice of the action (a preempted action
//!   runs in slices) and its completion correct that to the real cost. A tenant that had no work
//!   keeps its pass, but comes back no further behind the others than a small slack: idle time
//!   banks a little credit, never a monopoly; debt is never forgotten.
//! - An app is *ready* when it has a preempted action to resume, or a pending action and fewer
//!   than `max_in_flight` actions in the action list (dispatched and not complete: running,
//!   preempted, or asleep). Each tenant takes its ready apps round robin, a preempted action
//!   before a new one.
//! - Token bucket: a dispatch reserves the whole per-action fuel cap from the tenant's bucket,
//!   and completion settles it at the real cost (an action that cost more than the cap leaves the
//!   bucket in debt, paid back before the tenant runs again). A tenant whose bucket holds less
//!   than one cap is *throttled*: its new actions wait (they never fail for it) and the pick
//!   reports when its bucket will have refilled. Preempted actions resume regardless.
//! - No tenant holds the whole pool: a tenant has at most `max_concurrent` actions in flight
//!   (default: as many as there are workers), the whole host at most the pool's instances, and
//!   a tenant whose actions are long (typically over a millisecond of cost; a new tenant counts
//!   as long until it has shown otherwise) never runs on more than all workers but one while a
//!   tenant with short actions is active (had one ready in the last 100 ms) or another tenant
//!   has work ready, unless every tenant with work ready has long actions too and it is the one
//!   owed the most (the lowest pass). Short actions are exempt: a worker they
//!   hold is free again in microseconds. (Without the exemption, or the exception between long
//!   tenants, two saturating tenants on a two-worker pool would each hold one worker whatever
//!   their weights.)

use self::bucket::TokenBucket;
use crate::error::QueueFull;
use crate::limits::TenantConfig;
use crate::metrics::TenantCounters;
use crate::sandbox::Usage;
use crate::session::SessionId;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

/// Index of a tenant in the scheduler.
pub(crate) type TenantIx = usize;
/// Index of an app (all versions of one named app of one tenant) in the scheduler.
pub(crate) type AppIx = usize;

/// Weights are scaled by this in a pass, so that integer division keeps their ratios.
const PASS_SCALE: i128 = 1 << 20;

/// A tenant as the scheduler sees it.
#[derive(Debug)]
struct TenantSlot {
    /// Its policy: the same value the tenant registry holds, never a copy.
    policy: Arc<TenantConfig>,
    bucket: TokenBucket,
    /// Cost charged ÷ weight (scaled): the lowest ready pass goes next.
    pass: i128,
    /// Whether it is in the ready set.
    ready: bool,
    /// It had nothing queued and nothing in flight until its latest action was queued.
    back_from_idle: bool,
    ready_apps: VecDeque<AppIx>,
    /// Running estimate of the cost of an action (what a dispatch is charged until it completes).
    estimate: u64,
    /// Running estimate of the cost of an action for the concurrency cap: starts pessimistic
    /// (the per-action fuel cap), so a new tenant is treated as having long actions.
    typical_cost: u64,
    /// Actions in the action list: running, preempted or asleep.
    in_flight: u32,
    /// Of those, the ones on a worker now.
    running: u32,
    queue_depth: u64,
    throttled_since: Option<Instant>,
    counters: TenantCounters,
    apps: Vec<AppIx>,
}

/// One named app of a tenant: its pending queue, its preempted actions and its place in the
/// action list.
#[derive(Debug)]
struct AppSlot<T> {
    tenant: TenantIx,
    pending: VecDeque<(SessionId, Instant)>,
    resumable: VecDeque<(Dispatch, T)>,
    in_flight: u32,
    in_ready: bool,
    /// The most actions of this app ever in the action list at once.
    peak_in_flight: u32,
}

/// An action taken off a pending queue into the action list, for a worker to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dispatch {
    pub(crate) session: SessionId,
    pub(crate) app: AppIx,
    pub(crate) tenant: TenantIx,
    /// Fuel the action may burn: what was reserved from its tenant's bucket.
    pub(crate) fuel: u64,
    /// When the action became ready.
    pub(crate) ready_at: Instant,
    /// Cost charged to the tenant's pass so far (the estimate, then the real cost of its
    /// slices when that is more).
    charged: u64,
    /// Real cost of its slices so far.
    spent: u64,
    /// What its slices so far added to its tenant's counters.
    recorded: Usage,
}

/// What [`Scheduler::pick`] found.
#[derive(Debug)]
pub(crate) enum Pick<T> {
    /// Start this action.
    Run(Dispatch),
    /// Resume this preempted action.
    Resume(Dispatch, T),
    /// Nothing runnable now; a throttled tenant's bucket refills at this instant.
    WaitUntil(Instant),
    /// Nothing runnable until something is enqueued or completes.
    Idle,
}

/// How a scheduler is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// The pool's workers: what "every worker" and "all workers but one" mean.
    pub(crate) workers: usize,
    /// Actions in flight at once in the whole host (each holds a pool instance).
    pub(crate) in_flight: usize,
    /// Pending actions of one app.
    pub(crate) pending_per_app: usize,
    /// Pending actions of all apps.
    pub(crate) pending_total: usize,
    /// Cost a tenant coming back from idle may be ahead of the others by, at most.
    pub(crate) slack: u64,
    /// A tenant whose actions typically cost more than this has long actions (kept off the last
    /// worker while others have work ready).
    pub(crate) long_action: u64,
}

/// The scheduler's state.
#[derive(Debug)]
pub(crate) struct Scheduler<T> {
    tenants: Vec<Option<TenantSlot>>,
    apps: Vec<Option<AppSlot<T>>>,
    free_tenants: Vec<TenantIx>,
    free_apps: Vec<AppIx>,
    /// Tenants with a ready app, by pass.
    ready: BTreeSet<(i128, TenantIx)>,
    /// The lowest pass of the ready tenants, as last seen (never decreasing): where a tenant
    /// coming back is measured from.
    virtual_time: i128,
    bounds: Bounds,
    pending_total: usize,
    in_flight_total: usize,
    /// Preempted (or woken) actions waiting to be resumed.
    resumable_total: usize,
    /// When an action of a tenant with short actions last became ready.
    short_ready_at: Option<Instant>,
}

fn policy_weight(policy: &TenantConfig) -> i128 {
    i128::from(policy.weight.max(1))
}

impl<T> Scheduler<T> {
    pub(crate) fn new(bounds: Bounds) -> Self {
        Scheduler {
            tenants: Vec::new(),
            apps: Vec::new(),
            free_tenants: Vec::new(),
            free_apps: Vec::new(),
            ready: BTreeSet::new(),
            virtual_time: 0,
            bounds,
            pending_total: 0,
            in_flight_total: 0,
            resumable_total: 0,
            short_ready_at: None,
        }
    }

    fn tenant(&self, t: TenantIx) -> &TenantSlot {
        self.tenants[t].as_ref().unwrap_or_else(|| unreachable!("tenant {t} was removed while still referenced"))
    }

    fn tenant_mut(&mut self, t: TenantIx) -> &mut TenantSlot {
        self.tenants[t].as_mut().unwrap_or_else(|| unreachable!("tenant {t} was removed while still referenced"))
    }

    fn app(&self, a: AppIx) -> &AppSlot<T> {
        self.apps[a].as_ref().unwrap_or_else(|| unreachable!("app {a} was removed while still referenced"))
    }

    fn app_mut(&mut self, a: AppIx) -> &mut AppSlot<T> {
        self.apps[a].as_mut().unwrap_or_else(|| unreachable!("app {a} was removed while still referenced"))
    }

    /// Adds a tenant under `policy`; it starts level with the others.
    pub(crate) fn add_tenant(&mut self, policy: Arc<TenantConfig>, now: Instant) -> TenantIx {
        let slot = TenantSlot {
            bucket: TokenBucket::new(policy.fuel_burst, now),
            typical_cost: policy.limits.fuel_per_action,
            policy,
            pass: self.virtual_time,
            ready: false,
            back_from_idle: false,
            ready_apps: VecDeque::new(),
            estimate: 10_000,
            in_flight: 0,
            running: 0,
            queue_depth: 0,
            throttled_since: None,
            counters: TenantCounters::default(),
            apps: Vec::new(),
        };
        match self.free_tenants.pop() {
            Some(t) => {
                self.tenants[t] = Some(slot);
                t
            }
            None => {
                self.tenants.push(Some(slot));
                self.tenants.len() - 1
            }
        }
    }

    /// Replaces a tenant's policy (weight, quotas, suspension); actions in flight keep the fuel
    /// they were given.
    pub(crate) fn set_policy(&mut self, t: TenantIx, policy: Arc<TenantConfig>) {
        let suspended = policy.suspended;
        let tenant = self.tenant_mut(t);
        tenant.bucket.level = tenant.bucket.level.min(i128::from(policy.fuel_burst));
        tenant.policy = policy;
        if suspended {
            self.unready(t);
        } else {
            self.make_tenant_ready(t);
        }
    }

    /// Removes a tenant and its apps. It must have nothing pending or in flight.
    pub(crate) fn remove_tenant(&mut self, t: TenantIx) {
        self.unready(t);
        let apps = std::mem::take(&mut self.tenant_mut(t).apps);
        for a in apps {
            self.apps[a] = None;
            self.free_apps.push(a);
        }
        self.tenants[t] = None;
        self.free_tenants.push(t);
    }

    pub(crate) fn add_app(&mut self, t: TenantIx) -> AppIx {
        let slot = AppSlot {
            tenant: t,
            pending: VecDeque::new(),
            resumable: VecDeque::new(),
            in_flight: 0,
            in_ready: false,
            peak_in_flight: 0,
        };
        let a = match self.free_apps.pop() {
            Some(a) => {
                self.apps[a] = Some(slot);
                a
            }
            None => {
                self.apps.push(Some(slot));
                self.apps.len() - 1
            }
        };
        self.tenant_mut(t).apps.push(a);
        a
    }

    /// Actions waiting in all pending queues.
    pub(crate) fn pending_total(&self) -> usize {
        self.pending_total
    }

    /// Actions waiting for a worker: new ones and preempted ones.
    pub(crate) fn waiting(&self) -> usize {
        self.pending_total + self.resumable_total
    }

    /// Whether one more action fits the app's pending queue and the host's.
    pub(crate) fn has_room(&self, app: AppIx) -> Result<(), QueueFull> {
        if self.pending_total >= self.bounds.pending_total {
            return Err(QueueFull::Total(self.bounds.pending_total));
        }
        if self.app(app).pending.len() >= self.bounds.pending_per_app {
            return Err(QueueFull::App(self.bounds.pending_per_app));
        }
        Ok(())
    }

    /// Queues a session's next action. New work (a new session, a customer event) checks
    /// [`Scheduler::has_room`] first; follow-ups of work already accepted (a `goto`, a timeout,
    /// an event from an inbox) are never refused, or a session could be lost mid-flow.
    pub(crate) fn push(&mut self, app: AppIx, session: SessionId, now: Instant) {
        let slot = self.app_mut(app);
        slot.pending.push_back((session, now));
        let t = slot.tenant;
        self.pending_total += 1;
        let long_action = self.bounds.long_action;
        let tenant = self.tenant_mut(t);
        tenant.back_from_idle |= tenant.queue_depth == 0 && tenant.in_flight == 0;
        tenant.queue_depth += 1;
        if tenant.typical_cost <= long_action {
            self.short_ready_at = Some(now);
        }
        self.make_ready(app);
    }

    fn app_is_ready(&self, a: AppIx) -> bool {
        let slot = self.app(a);
        let max = self.tenant(slot.tenant).policy.max_in_flight.max(1);
        !slot.resumable.is_empty() || (!slot.pending.is_empty() && slot.in_flight < max)
    }

    /// Puts an app in its tenant's ready queue (and the tenant in the ready set) if it is ready.
    fn make_ready(&mut self, a: AppIx) {
        if self.app(a).in_ready || !self.app_is_ready(a) {
            return;
        }
        let slot = self.app_mut(a);
        slot.in_ready = true;
        let t = slot.tenant;
        self.tenant_mut(t).ready_apps.push_back(a);
        self.make_tenant_ready(t);
    }

    /// Puts a tenant with ready apps in the ready set; one back from idle (it had nothing queued
    /// and nothing in flight) comes back no further ahead of the others than the slack allows: at
    /// least at the lowest pass of the tenants ready now (the system's virtual time) less the
    /// slack. (A tenant whose apps were all busy had work all along: it keeps its place.)
    fn make_tenant_ready(&mut self, t: TenantIx) {
        if let Some(&(lowest, _)) = self.ready.first() {
            self.virtual_time = self.virtual_time.max(lowest);
        }
        let (virtual_time, slack) = (self.virtual_time, i128::from(self.bounds.slack));
        let tenant = self.tenant_mut(t);
        if tenant.ready || tenant.ready_apps.is_empty() || tenant.policy.suspended {
            return;
        }
        if tenant.back_from_idle {
            tenant.back_from_idle = false;
            let floor = virtual_time - slack * PASS_SCALE / policy_weight(&tenant.policy);
            tenant.pass = tenant.pass.max(floor);
        }
        tenant.ready = true;
        let pass = tenant.pass;
        self.ready.insert((pass, t));
    }

    fn unready(&mut self, t: TenantIx) {
        let tenant = self.tenant_mut(t);
        if tenant.ready {
            tenant.ready = false;
            let pass = tenant.pass;
            self.ready.remove(&(pass, t));
        }
    }

    /// Charges `cost` to tenant `t`'s pass (negative: a refund).
    fn charge(&mut self, t: TenantIx, cost: i128) {
        let tenant = self.tenant_mut(t);
        let was_ready = tenant.ready;
        let old = tenant.pass;
        tenant.pass += cost * PASS_SCALE / policy_weight(&tenant.policy);
        let new = tenant.pass;
        if was_ready {
            self.ready.remove(&(old, t));
            self.ready.insert((new, t));
        }
    }

    /// The next action to run or resume: the ready tenant with the lowest pass that may run one.
    pub(crate) fn pick(&mut self, now: Instant) -> Pick<T> {
        let mut earliest_refill: Option<Instant> = None;
        let mut cursor: Option<(i128, TenantIx)> = None;
        loop {
            let next = match cursor {
                None => self.ready.first().copied(),
                Some(c) => self.ready.range((Bound::Excluded(c), Bound::Unbounded)).next().copied(),
            };
            let Some((pass, t)) = next else { break };
            cursor = Some((pass, t));
            let Some(app) = self.first_ready_app(t) else {
                self.unready(t);
                continue;
            };
            if !self.may_run_another(t, now) {
                continue;
            }
            if !self.app(app).resumable.is_empty() {
                return self.resume(t, app);
            }
            if self.may_start_another(t) {
                let tenant = self.tenants[t].as_mut().unwrap_or_else(|| unreachable!("ready tenant {t}"));
                let fuel = tenant.policy.limits.fuel_per_action;
                match tenant.bucket.reserve(&tenant.policy, fuel, now) {
                    Ok(()) => return Pick::Run(self.dispatch(t, app, fuel, now)),
                    Err(refilled) => {
                        tenant.throttled_since.get_or_insert(now);
                        earliest_refill = Some(earliest_refill.map_or(refilled, |e| e.min(refilled)));
                    }
                }
            }
            // It may not start a new action now, but it may resume a preempted one of another app.
            let tenant = self.tenant(t);
            if let Some(other) = tenant.ready_apps.iter().copied().find(|&a| !self.app(a).resumable.is_empty()) {
                return self.resume(t, other);
            }
        }
        match earliest_refill {
            Some(at) => Pick::WaitUntil(at),
            None => Pick::Idle,
        }
    }

    /// The first ready app of tenant `t` (dropping apps that stopped being ready from the front
    /// of its round-robin queue).
    fn first_ready_app(&mut self, t: TenantIx) -> Option<AppIx> {
        while let Some(&a) = self.tenant(t).ready_apps.front() {
            if self.app_is_ready(a) {
                return Some(a);
            }
            self.app_mut(a).in_ready = false;
            self.tenant_mut(t).ready_apps.pop_front();
        }
        None
    }

    /// Takes app `a` off its tenant's ready queue, and puts it at the back if it is still ready
    /// (round robin between the tenant's apps).
    fn rotate(&mut self, t: TenantIx, a: AppIx) {
        let ready_apps = &mut self.tenant_mut(t).ready_apps;
        if ready_apps.front() == Some(&a) {
            ready_apps.pop_front();
        } else {
            ready_apps.retain(|&other| other != a);
        }
        self.app_mut(a).in_ready = false;
        self.make_ready(a);
        if self.tenant(t).ready_apps.is_empty() {
            self.unready(t);
        }
    }

    fn resume(&mut self, t: TenantIx, a: AppIx) -> Pick<T> {
        let Some((dispatch, task)) = self.app_mut(a).resumable.pop_front() else { return Pick::Idle };
        self.resumable_total -= 1;
        self.tenant_mut(t).running += 1;
        self.rotate(t, a);
        Pick::Resume(dispatch, task)
    }

    /// Moves the next pending action of app `a` into the action list.
    fn dispatch(&mut self, t: TenantIx, a: AppIx, fuel: u64, now: Instant) -> Dispatch {
        let tenant = self.tenant_mut(t);
        if let Some(since) = tenant.throttled_since.take() {
            tenant.counters.throttled += now.saturating_duration_since(since);
        }
        let estimate = tenant.estimate;
        tenant.queue_depth -= 1;
        tenant.in_flight += 1;
        tenant.running += 1;
        let slot = self.app_mut(a);
        let (session, ready_at) = slot.pending.pop_front().unwrap_or((SessionId(0), now));
        slot.in_flight += 1;
        slot.peak_in_flight = slot.peak_in_flight.max(slot.in_flight);
        self.pending_total -= 1;
        self.in_flight_total += 1;
        self.charge(t, i128::from(estimate));
        self.rotate(t, a);
        Dispatch { session, app: a, tenant: t, fuel, ready_at, charged: estimate, spent: 0, recorded: Usage::default() }
    }

    /// Charges a slice of a dispatched action's real cost (correcting the estimate upward as the
    /// slices add up).
    fn charge_slice(&mut self, dispatch: &mut Dispatch, slice: &Usage) {
        dispatch.spent = dispatch.spent.saturating_add(slice.cost);
        if dispatch.spent > dispatch.charged {
            let more = dispatch.spent - dispatch.charged;
            dispatch.charged = dispatch.spent;
            self.charge(dispatch.tenant, i128::from(more));
        }
        dispatch.recorded = dispatch.recorded.plus(*slice);
        self.tenant_mut(dispatch.tenant).counters.record_slice(slice);
    }

    /// A running action was preempted after `slice`: it goes back to its app, to be resumed
    /// when its tenant's turn comes (before the app's new actions).
    pub(crate) fn suspend(&mut self, mut dispatch: Dispatch, task: T, slice: &Usage) {
        self.charge_slice(&mut dispatch, slice);
        self.tenant_mut(dispatch.tenant).running -= 1;
        let a = dispatch.app;
        self.app_mut(a).resumable.push_back((dispatch, task));
        self.resumable_total += 1;
        self.make_ready(a);
    }

    /// A running action went to sleep after `slice`: it stays in flight, off the workers, until
    /// [`Scheduler::wake`] brings it back.
    pub(crate) fn sleep(&mut self, dispatch: &mut Dispatch, slice: &Usage) {
        self.charge_slice(dispatch, slice);
        self.tenant_mut(dispatch.tenant).running -= 1;
    }

    /// A sleeping action's time is up: it is resumed like a preempted one.
    pub(crate) fn wake(&mut self, dispatch: Dispatch, task: T) {
        let a = dispatch.app;
        self.app_mut(a).resumable.push_back((dispatch, task));
        self.resumable_total += 1;
        self.make_ready(a);
    }

    /// Releases the action's slot in the action list and charges its tenant what the action
    /// really cost, all of it (`total`: its slices were charged as they went, so only the
    /// difference is charged now, or refunded).
    pub(crate) fn complete(&mut self, dispatch: Dispatch, total: &Usage) {
        let t = dispatch.tenant;
        self.charge(t, i128::from(total.cost) - i128::from(dispatch.charged));
        let tenant = self.tenant_mut(t);
        tenant.in_flight -= 1;
        tenant.running -= 1;
        let policy = tenant.policy.clone();
        tenant.bucket.settle(&policy, dispatch.fuel, total.cost);
        // Exponential moving averages (1/8) of the cost of an action.
        tenant.estimate = (tenant.estimate.saturating_mul(7).saturating_add(total.cost)) / 8 + 1;
        tenant.typical_cost = (tenant.typical_cost / 8).saturating_mul(7).saturating_add(total.cost / 8);
        tenant.counters.record_slice(&total.minus(dispatch.recorded));
        tenant.counters.record_action();
        self.in_flight_total -= 1;
        self.app_mut(dispatch.app).in_flight -= 1;
        self.make_ready(dispatch.app);
    }

    /// A tenant's counters, for metrics.
    pub(crate) fn counters(&self, t: TenantIx) -> &TenantCounters {
        &self.tenant(t).counters
    }

    /// A tenant's counters, to count what happens outside the scheduler (sessions, failures).
    pub(crate) fn counters_mut(&mut self, t: TenantIx) -> &mut TenantCounters {
        &mut self.tenant_mut(t).counters
    }

    /// Actions of tenant `t` waiting in its pending queues, and in flight.
    pub(crate) fn load(&self, t: TenantIx) -> (u64, u32) {
        let tenant = self.tenant(t);
        (tenant.queue_depth, tenant.in_flight)
    }

    /// The most actions of app `a` that were ever in the action list at once.
    pub(crate) fn peak_in_flight(&self, a: AppIx) -> u32 {
        self.app(a).peak_in_flight
    }
}

mod bucket;
mod caps;
#[cfg(test)]
mod tests;
