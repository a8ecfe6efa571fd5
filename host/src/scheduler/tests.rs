//! The scheduler's bookkeeping, without threads or clocks: fairness, bounds, caps and buckets.

use super::*;
use crate::limits::Limits;
use std::time::Duration;

fn usage(cost: u64) -> Usage {
    Usage { fuel: cost, cost, ..Usage::default() }
}

fn bounds(workers: usize, pending_per_app: usize, pending_total: usize) -> Bounds {
    Bounds { workers, in_flight: 64, pending_per_app, pending_total, slack: 1_000_000, long_action: 200_000 }
}

fn policy(weight: u32, fuel_per_action: u64) -> Arc<TenantConfig> {
    Arc::new(TenantConfig {
        weight,
        fuel_per_second: u64::MAX / 4,
        fuel_burst: u64::MAX / 4,
        max_in_flight: 1,
        limits: Limits { fuel_per_action, ..Limits::default() },
        ..TenantConfig::default()
    })
}

impl<T: std::fmt::Debug> Scheduler<T> {
    fn enqueue(&mut self, app: AppIx, session: SessionId, now: Instant) -> Result<(), QueueFull> {
        self.has_room(app)?;
        self.push(app, session, now);
        Ok(())
    }

    fn run_next(&mut self, now: Instant) -> Dispatch {
        match self.pick(now) {
            Pick::Run(d) => d,
            other => panic!("expected an action to run, got {other:?}"),
        }
    }

    fn set_max_in_flight(&mut self, t: TenantIx, max_in_flight: u32) {
        let policy = Arc::new(TenantConfig { max_in_flight, ..TenantConfig::clone(&self.tenant(t).policy) });
        self.set_policy(t, policy);
    }
}

/// Two saturated tenants; every action costs `cost(t)`; each completes at once.
fn shares(weights: [u32; 2], cost: [u64; 2], picks: usize) -> [u64; 2] {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 1000, 10_000));
    let mut apps = Vec::new();
    for w in weights {
        let t = s.add_tenant(policy(w, 1_000_000), now);
        apps.push(s.add_app(t));
    }
    let mut spent = [0u64; 2];
    for i in 0..picks {
        for &app in &apps {
            while s.app(app).pending.len() < 2 {
                s.enqueue(app, SessionId(i as u64), now).expect("room");
            }
        }
        let d = s.run_next(now);
        let tenant = d.tenant;
        s.complete(d, &usage(cost[tenant]));
        spent[tenant] += cost[tenant];
    }
    spent
}

#[test]
fn cost_is_shared_by_weight_whatever_each_action_costs() {
    for cost in [[1_000, 1_000], [1_000, 50_000], [400_000, 3_000]] {
        let spent = shares([1, 3], cost, 20_000);
        let ratio = spent[1] as f64 / spent[0] as f64;
        assert!((2.9..=3.1).contains(&ratio), "cost {cost:?}: ratio {ratio}");
    }
}

#[test]
fn a_tenant_idle_between_its_actions_keeps_its_share() {
    // `bursty` has one session: between its actions it has nothing ready (its checkpoint is on
    // its way), which must not cost it its weight.
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(1, 1000, 10_000));
    let bursty = s.add_tenant(policy(3, 1_000_000), now);
    let steady = s.add_tenant(policy(1, 1_000_000), now);
    let (a, b) = (s.add_app(bursty), s.add_app(steady));
    let mut spent = [0u64; 2];
    for i in 0..20_000 {
        if s.app(a).pending.is_empty() && s.app(a).in_flight == 0 && i % 2 == 0 {
            s.enqueue(a, SessionId(1), now).expect("room");
        }
        while s.app(b).pending.len() < 2 {
            s.enqueue(b, SessionId(2), now).expect("room");
        }
        let d = s.run_next(now);
        let t = d.tenant;
        s.complete(d, &usage(1000));
        spent[t] += 1000;
    }
    let ratio = spent[bursty] as f64 / spent[steady] as f64;
    assert!(ratio >= 0.9, "a tenant that is ready every other pick still gets served: {ratio}");
}

#[test]
fn debt_is_not_forgotten_by_going_idle() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(1, 1000, 10_000));
    let hog = s.add_tenant(policy(1, 100_000_000), now);
    let polite = s.add_tenant(policy(1, 1_000_000), now);
    let (h, p) = (s.add_app(hog), s.add_app(polite));
    s.enqueue(h, SessionId(1), now).expect("room");
    let d = s.run_next(now);
    s.complete(d, &usage(50_000_000));
    // The hog has nothing ready for a while, then comes back: the polite tenant still goes
    // first until it has spent about as much.
    for _ in 0..10 {
        s.enqueue(p, SessionId(2), now).expect("room");
    }
    s.enqueue(h, SessionId(1), now).expect("room");
    for _ in 0..10 {
        let d = s.run_next(now);
        assert_eq!(d.tenant, polite, "the hog is still in debt");
        s.complete(d, &usage(1_000_000));
    }
}

#[test]
fn a_tenant_deep_in_debt_is_still_served_when_alone() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let t = s.add_tenant(policy(1, 50_000_000), now);
    let app = s.add_app(t);
    for i in 0..3 {
        s.enqueue(app, SessionId(i), now).expect("room");
        let d = s.run_next(now);
        s.complete(d, &usage(50_000_000));
    }
}

#[test]
fn max_in_flight_bounds_the_action_list_per_app() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let t = s.add_tenant(policy(1, 1000), now);
    let app = s.add_app(t);
    for i in 0..5 {
        s.enqueue(app, SessionId(i), now).expect("room");
    }
    let first = s.run_next(now);
    assert!(matches!(s.pick(now), Pick::Idle), "a second action of the app must wait");
    s.complete(first, &usage(10));
    assert!(matches!(s.pick(now), Pick::Run(_)), "the slot was released");
    assert_eq!(s.peak_in_flight(app), 1);
}

#[test]
fn an_empty_bucket_throttles_and_says_when_it_refills() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let config = TenantConfig {
        fuel_per_second: 10_000,
        fuel_burst: 1000,
        max_in_flight: 4,
        limits: Limits { fuel_per_action: 1000, ..Limits::default() },
        ..TenantConfig::default()
    };
    let t = s.add_tenant(Arc::new(config), now);
    let app = s.add_app(t);
    for i in 0..3 {
        s.enqueue(app, SessionId(i), now).expect("room");
    }
    let d = s.run_next(now);
    s.complete(d, &usage(1000));
    match s.pick(now) {
        Pick::WaitUntil(at) => assert!(at > now && at <= now + Duration::from_millis(101)),
        other => panic!("expected throttling, got {other:?}"),
    }
    assert!(matches!(s.pick(now + Duration::from_millis(101)), Pick::Run(_)));
}

#[test]
fn an_action_that_cost_more_than_its_reservation_leaves_the_bucket_in_debt() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    // 1000 fuel per second, burst 1000: one action's reservation.
    let config = TenantConfig {
        fuel_per_second: 1000,
        fuel_burst: 1000,
        limits: Limits { fuel_per_action: 1000, ..Limits::default() },
        ..TenantConfig::default()
    };
    let t = s.add_tenant(Arc::new(config), now);
    let app = s.add_app(t);
    s.enqueue(app, SessionId(1), now).expect("room");
    s.enqueue(app, SessionId(2), now).expect("room");
    let d = s.run_next(now);
    // It slept: its real cost is ten times what was reserved.
    let slept = Usage { fuel: 10, cost: 10_000, ..Usage::default() };
    s.complete(d, &slept);
    match s.pick(now) {
        // 10 000 of debt plus a reservation of 1000, at 1000 per second: 11 s.
        Pick::WaitUntil(at) => assert!(at >= now + Duration::from_secs(10), "{:?}", at - now),
        other => panic!("expected throttling, got {other:?}"),
    }
    assert_eq!(s.counters(t).cost, 10_000);
    assert_eq!(s.counters(t).fuel, 10);
}

#[test]
fn queues_are_bounded() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 2, 3));
    let t = s.add_tenant(policy(1, 1000), now);
    let (a, b) = (s.add_app(t), s.add_app(t));
    s.enqueue(a, SessionId(1), now).expect("room");
    s.enqueue(a, SessionId(2), now).expect("room");
    assert_eq!(s.enqueue(a, SessionId(3), now), Err(QueueFull::App(2)));
    s.enqueue(b, SessionId(4), now).expect("room");
    assert_eq!(s.enqueue(b, SessionId(5), now), Err(QueueFull::Total(3)));
}

#[test]
fn a_tenant_with_long_actions_keeps_off_the_last_worker_while_another_has_work_ready() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(3, 100, 100));
    let hog = s.add_tenant(policy(1, 50_000_000), now);
    let polite = s.add_tenant(policy(1, 1000), now);
    let hog_apps: Vec<AppIx> = (0..5).map(|_| s.add_app(hog)).collect();
    for (i, &app) in hog_apps.iter().enumerate() {
        s.enqueue(app, SessionId(i as u64), now).expect("room");
    }
    // Alone, the hog may use every worker.
    let running: Vec<Dispatch> = (0..3).map(|_| s.run_next(now)).collect();
    for d in running {
        s.complete(d, &usage(40_000_000));
    }
    // With another tenant waiting, it gets at most two of the three.
    let polite_app = s.add_app(polite);
    s.set_max_in_flight(polite, 4);
    for i in 0..3 {
        s.enqueue(polite_app, SessionId(100 + i), now).expect("room");
    }
    for &app in &hog_apps {
        s.enqueue(app, SessionId(50), now).expect("room");
    }
    let picked: Vec<Dispatch> = (0..3).map(|_| s.run_next(now)).collect();
    let hogging = picked.iter().filter(|d| d.tenant == hog).count();
    assert!(hogging <= 2, "the hog took {hogging} of 3 workers while another tenant had work");
    assert!(picked.iter().any(|d| d.tenant == polite));
}

#[test]
fn short_actions_may_use_every_worker_so_weights_hold_on_a_small_pool() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let quick = s.add_tenant(policy(3, 1_000_000), now);
    let other = s.add_tenant(policy(1, 1_000_000), now);
    let (a, b) = (s.add_app(quick), s.add_app(other));
    s.set_max_in_flight(quick, 2);
    // A new tenant counts as long until its actions show otherwise.
    s.enqueue(a, SessionId(1), now).expect("room");
    let first = s.run_next(now);
    s.enqueue(b, SessionId(2), now).expect("room");
    assert!(!s.may_run_another(quick, now), "a new tenant is kept off the last worker");
    s.complete(first, &usage(1000));
    for i in 0..40 {
        s.enqueue(a, SessionId(i), now).expect("room");
        let d = s.run_next(now);
        s.complete(d, &usage(1000));
    }
    s.enqueue(a, SessionId(3), now).expect("room");
    s.enqueue(a, SessionId(4), now).expect("room");
    let running = loop {
        let d = s.run_next(now);
        if d.tenant == quick {
            break d;
        }
        s.complete(d, &usage(1000));
        s.enqueue(b, SessionId(2), now).expect("room");
    };
    assert_eq!(s.tenant(quick).running, 1, "{running:?}");
    assert!(s.may_run_another(quick, now), "short actions may take the last worker too");
}

#[test]
fn max_concurrent_caps_a_tenant_across_its_apps() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(8, 100, 100));
    let config = TenantConfig { max_concurrent: 2, ..TenantConfig::clone(&policy(1, 1000)) };
    let t = s.add_tenant(Arc::new(config), now);
    for i in 0..6 {
        let app = s.add_app(t);
        s.enqueue(app, SessionId(i), now).expect("room");
    }
    s.run_next(now);
    s.run_next(now);
    assert!(matches!(s.pick(now), Pick::Idle), "a third action in flight is over the tenant's cap");
}

#[test]
fn a_preempted_action_resumes_before_its_app_starts_another_and_its_slices_are_charged() {
    let now = Instant::now();
    let mut s: Scheduler<&str> = Scheduler::new(bounds(1, 100, 100));
    let t = s.add_tenant(policy(1, 1_000_000), now);
    let app = s.add_app(t);
    s.set_max_in_flight(t, 2);
    s.enqueue(app, SessionId(1), now).expect("room");
    s.enqueue(app, SessionId(2), now).expect("room");
    let first = s.run_next(now);
    s.suspend(first, "the first action's task", &usage(300_000));
    match s.pick(now) {
        Pick::Resume(d, task) => {
            assert_eq!((d.session, task), (SessionId(1), "the first action's task"));
            s.complete(d, &usage(500_000));
        }
        other => panic!("expected the preempted action, got {other:?}"),
    }
    assert_eq!(s.counters(t).cost, 500_000, "both slices are charged");
    assert_eq!(s.counters(t).actions, 1);
    assert!(matches!(s.pick(now), Pick::Run(d) if d.session == SessionId(2)));
}

#[test]
fn a_sleeping_action_holds_its_place_in_the_action_list_but_no_worker() {
    let now = Instant::now();
    let mut s: Scheduler<&str> = Scheduler::new(bounds(1, 100, 100));
    let sleepy = s.add_tenant(policy(1, 1000), now);
    let other = s.add_tenant(policy(1, 1000), now);
    let (a, b) = (s.add_app(sleepy), s.add_app(other));
    s.enqueue(a, SessionId(1), now).expect("room");
    s.enqueue(a, SessionId(2), now).expect("room");
    let mut d = s.run_next(now);
    s.sleep(&mut d, &usage(10));
    assert!(matches!(s.pick(now), Pick::Idle), "its app's next action waits for it");
    s.enqueue(b, SessionId(3), now).expect("room");
    let other_action = s.run_next(now);
    assert_eq!(other_action.tenant, other, "the worker is free for others meanwhile");
    s.complete(other_action, &usage(10));
    s.wake(d, "woken");
    assert!(matches!(s.pick(now), Pick::Resume(_, "woken")));
}

#[test]
fn a_removed_tenant_frees_its_slots_for_reuse() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(1, 100, 100));
    let t = s.add_tenant(policy(1, 1000), now);
    let app = s.add_app(t);
    s.remove_tenant(t);
    let again = s.add_tenant(policy(1, 1000), now);
    assert_eq!((again, s.add_app(again)), (t, app));
}

#[test]
fn a_tenant_at_its_cap_still_resumes_its_preempted_actions() {
    let now = Instant::now();
    let mut s: Scheduler<u64> = Scheduler::new(bounds(2, 100, 100));
    let config = TenantConfig { max_concurrent: 2, ..TenantConfig::clone(&policy(1, 1000)) };
    let t = s.add_tenant(Arc::new(config), now);
    let apps: Vec<AppIx> = (0..3).map(|_| s.add_app(t)).collect();
    for (i, &app) in apps.iter().enumerate() {
        s.enqueue(app, SessionId(i as u64), now).expect("room");
        s.enqueue(app, SessionId(10 + i as u64), now).expect("room");
    }
    let (first, second) = (s.run_next(now), s.run_next(now));
    s.suspend(first, 1, &usage(100));
    s.suspend(second, 2, &usage(100));
    // At its cap of two in flight, with new work first in line: it resumes, it doesn't stall.
    let mut resumed = Vec::new();
    for _ in 0..2 {
        match s.pick(now) {
            Pick::Resume(d, task) => resumed.push((task, d)),
            other => panic!("expected a preempted action, got {other:?}"),
        }
    }
    let mut resumed: Vec<u64> = resumed
        .into_iter()
        .map(|(task, d)| {
            s.complete(d, &usage(200));
            task
        })
        .collect();
    resumed.sort_unstable();
    assert_eq!(resumed, [1, 2]);
}

#[test]
fn long_actions_are_shared_by_weight_on_a_two_worker_pool() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let heavy = s.add_tenant(policy(3, 50_000_000), now);
    let light = s.add_tenant(policy(1, 50_000_000), now);
    let mut apps = Vec::new();
    for t in [heavy, light] {
        for _ in 0..2 {
            apps.push(s.add_app(t));
        }
    }
    let refill = |s: &mut Scheduler<()>| {
        for &app in &apps {
            while s.app(app).pending.len() < 2 {
                s.enqueue(app, SessionId(1), now).expect("room");
            }
        }
    };
    // Two workers, always busy: the older action completes, and the freed worker takes the next.
    refill(&mut s);
    let mut running: VecDeque<Dispatch> = (0..2).map(|_| s.run_next(now)).collect();
    let mut spent = [0u64; 2];
    for _ in 0..4000 {
        let done = running.pop_front().expect("two running");
        spent[done.tenant] += 40_000_000;
        s.complete(done, &usage(40_000_000));
        refill(&mut s);
        running.push_back(s.run_next(now));
    }
    let ratio = spent[heavy] as f64 / spent[light] as f64;
    assert!((2.7..=3.3).contains(&ratio), "weights 3:1 of long actions on two workers split {ratio:.2}:1");
}

#[test]
fn a_long_tenant_owed_the_most_still_leaves_the_last_worker_to_a_short_action_waiting() {
    let now = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let hog = s.add_tenant(policy(1, 50_000_000), now);
    let quick = s.add_tenant(policy(1, 1000), now);
    let (h1, h2, q) = (s.add_app(hog), s.add_app(hog), s.add_app(quick));
    // The short tenant ran an expensive action: the hog is owed the most now.
    s.enqueue(q, SessionId(1), now).expect("room");
    let d = s.run_next(now);
    s.complete(d, &usage(100_000));
    s.charge(quick, 1 << 40);
    s.enqueue(h1, SessionId(2), now).expect("room");
    s.enqueue(h2, SessionId(3), now).expect("room");
    s.enqueue(q, SessionId(4), now).expect("room");
    let first = s.run_next(now);
    assert_eq!(first.tenant, hog, "the hog is owed the most");
    assert!(!s.may_run_another(hog, now), "a short action waits: the last worker stays free for it");
    assert_eq!(s.run_next(now).tenant, quick);
}

#[test]
fn a_short_tenant_between_its_actions_still_finds_the_last_worker_free() {
    let start = Instant::now();
    let mut s: Scheduler<()> = Scheduler::new(bounds(2, 100, 100));
    let hog = s.add_tenant(policy(1, 50_000_000), start);
    let quick = s.add_tenant(policy(1, 1000), start);
    let (h1, h2, q) = (s.add_app(hog), s.add_app(hog), s.add_app(quick));
    // The short tenant's action came and went: it has nothing ready now.
    s.enqueue(q, SessionId(1), start).expect("room");
    let d = s.run_next(start);
    s.complete(d, &usage(1000));
    s.enqueue(h1, SessionId(2), start).expect("room");
    s.enqueue(h2, SessionId(3), start).expect("room");
    assert_eq!(s.run_next(start).tenant, hog);
    // Its next event or timer may come any moment: the hog stays off the last worker...
    assert!(!s.may_run_another(hog, start + Duration::from_millis(50)));
    // ...until the short tenant has been quiet for a while.
    let later = start + caps::SHORT_ACTIVE;
    assert!(s.may_run_another(hog, later));
    assert_eq!(s.run_next(later).tenant, hog);
}
