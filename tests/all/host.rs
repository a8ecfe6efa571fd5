//! The multi-tenant host: the action-list bound, weighted fair share in fuel, rate limits,
//! backpressure, timers, versions, tenant isolation and metrics. Progress is awaited through the
//! host's session events, never with sleeps; figures are never asserted against the clock except
//! as upper bounds a slow machine can only make easier.

use crate::fixtures::{abi_module, example, outputs_of};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use turnstile::{FailureKind, Host, HostConfig, Limits, SessionEvent, SessionId, Status, TenantConfig, TenantMetrics};

/// An app whose `start` burns `burn` loop iterations, then goes to itself again until it has run
/// `rounds` times (or for ever when `rounds` is 0), then is done.
fn looping_app(burn: u32, rounds: u32) -> Vec<u8> {
    abi_module(&format!(
        r#"(data (i32.const 0) "{{\"goto\":\"start\"}}")
           (data (i32.const 16) "{{\"done\":null}}")
           (func (export "start") (result i32) (local $i i32) (local $n i32)
             (loop $burn (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $burn (i32.lt_u (local.get $i) (i32.const {burn}))))
             (local.set $n (call $state_len))
             (if (i32.and (i32.ne (i32.const {rounds}) (i32.const 0)) (i32.ge_u (local.get $n) (i32.const {rounds})))
               (then (call $next (i32.const 16) (i32.const 13)) (return (i32.const 0))))
             (call $state_write (i32.const 100) (i32.add (local.get $n) (i32.const 1)))
             (call $next (i32.const 0) (i32.const 16))
             i32.const 0)"#
    ))
}

/// An app whose `start` waits for an event (or `timeout_ms`) and is done either way.
fn waiting_app(timeout_ms: u64) -> Vec<u8> {
    let wait = format!(r#"{{"wait":{{"action":"answer","timeout_ms":{timeout_ms},"on_timeout":"expired"}}}}"#);
    let escaped = wait.replace('"', "\\\"");
    abi_module(&format!(
        r#"(data (i32.const 0) "{escaped}")
           (data (i32.const 200) "{{\"done\":\"answered\"}}")
           (data (i32.const 300) "{{\"done\":\"expired\"}}")
           (func (export "start") (result i32) (call $next (i32.const 0) (i32.const {len})) i32.const 0)
           (func (export "answer") (result i32) (call $next (i32.const 200) (i32.const 19)) i32.const 0)
           (func (export "expired") (result i32) (call $next (i32.const 300) (i32.const 18)) i32.const 0)"#,
        len = wait.len()
    ))
}

fn host(workers: usize) -> Host {
    let mut config = HostConfig { workers, ..HostConfig::default() };
    config.runtime.engine.pool_instances = 16;
    Host::new(config).expect("host starts")
}

/// Waits for `n` events matching `pred`, failing the test after a generous minute.
fn await_events(events: &Receiver<SessionEvent>, n: usize, pred: impl Fn(&SessionEvent) -> bool) -> Vec<SessionEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.recv_timeout(left).unwrap_or_else(|_| panic!("only {} of {n} events came", seen.len()));
        if std::env::var("TRACE_EVENTS").is_ok() {
            eprintln!("{event:?}");
        }
        if pred(&event) {
            seen.push(event);
        }
    }
    seen
}

fn finished(event: &SessionEvent) -> bool {
    event.status.is_finished()
}

#[test]
fn max_in_flight_bounds_each_app_and_raising_it_lets_actions_overlap() {
    let host = host(4);
    let events = host.subscribe();
    let app = looping_app(20_000, 3);
    for (tenant, max_in_flight) in [("one-at-a-time", 1), ("four-at-a-time", 4)] {
        host.create_tenant(tenant, TenantConfig { max_in_flight, ..TenantConfig::default() }).expect("tenant");
        host.deploy(tenant, "app", &app).expect("deploys");
    }
    for _ in 0..40 {
        host.start_session("one-at-a-time", "app", "start", Vec::new()).expect("starts");
        host.start_session("four-at-a-time", "app", "start", Vec::new()).expect("starts");
    }
    await_events(&events, 80, finished);
    assert_eq!(host.peak_in_flight("one-at-a-time", "app"), Some(1));
    let peak = host.peak_in_flight("four-at-a-time", "app").expect("app");
    assert!((2..=4).contains(&peak), "with four workers and max_in_flight 4 the peak was {peak}");
}

/// What a tenant's actions were charged: the fair share is kept in this currency.
fn cost_of(host: &Host, tenant: &str) -> u64 {
    host.metrics().tenant(tenant).map_or(0, |t| t.cost)
}

#[test]
fn saturating_tenants_share_the_pool_by_weight_in_real_cost() {
    let _measuring = crate::fixtures::measuring();
    // Four workers on two cores: the workers' threads are descheduled now and then, which
    // must not cost their tenants (see `sandbox/span.rs`).
    let host = host(4);
    let events = host.subscribe();
    let app = looping_app(3_000, 0);
    for (tenant, weight) in [("light", 1), ("heavy", 3)] {
        host.create_tenant(tenant, TenantConfig { weight, ..TenantConfig::default() }).expect("tenant");
        for a in 0..4 {
            host.deploy(tenant, &format!("app{a}"), &app).expect("deploys");
        }
    }
    for a in 0..4 {
        for tenant in ["light", "heavy"] {
            for _ in 0..5 {
                host.start_session(tenant, &format!("app{a}"), "start", Vec::new()).expect("starts");
            }
        }
    }
    // Let both saturate, then measure windows of several thousand actions: a window in range
    // within three shows the weights, a scheduler that ignored them misses every one. (An
    // action is not charged the time the machine took its thread away: when it was, one action
    // descheduled for a second put its tenant out of two whole windows, in CI.)
    await_events(&events, 1_000, |_| true);
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let before = (cost_of(&host, "light"), cost_of(&host, "heavy"));
        await_events(&events, 15_000, |_| true);
        let after = (cost_of(&host, "light"), cost_of(&host, "heavy"));
        let ratio = (after.1 - before.1) as f64 / (after.0 - before.0).max(1) as f64;
        if (2.7..=3.3).contains(&ratio) {
            return;
        }
        ratios.push(ratio);
    }
    panic!("heavy/light cost ratio out of 2.7..=3.3 in every window: {ratios:?}");
}

#[test]
fn a_tenant_over_its_rate_is_held_to_it_and_its_actions_wait_rather_than_fail() {
    let _measuring = crate::fixtures::measuring();
    let host = host(2);
    let events = host.subscribe();
    let limits = Limits { fuel_per_action: 1_000_000, ..Limits::default() };
    let rate = 40_000_000;
    let config = TenantConfig { fuel_per_second: rate, fuel_burst: 1_000_000, limits, ..TenantConfig::default() };
    host.create_tenant("metered", config).expect("tenant");
    host.deploy("metered", "app", &looping_app(100_000, 20)).expect("deploys");
    let started = Instant::now();
    for _ in 0..10 {
        host.start_session("metered", "app", "start", Vec::new()).expect("starts");
    }
    await_events(&events, 10, finished);
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = host.metrics();
    let tenant = metrics.tenant("metered").expect("tenant");
    assert_eq!(tenant.actions, 210);
    assert!(tenant.failures.is_empty(), "throttled actions must not fail: {:?}", tenant.failures);
    assert!(tenant.throttled_ms > 0, "the tenant was throttled");
    let allowed = 1_000_000.0 + rate as f64 * elapsed;
    assert!((tenant.fuel as f64) <= allowed, "burned {} fuel in {elapsed:.2}s, allowed {allowed}", tenant.fuel);
}

#[test]
fn a_tenant_burning_its_whole_cap_does_not_hold_up_the_others() {
    let _measuring = crate::fixtures::measuring();
    let host = host(2);
    let events = host.subscribe();
    let hostile_limits = Limits { fuel_per_action: 5_000_000, ..Limits::default() };
    host.create_tenant("mallory", TenantConfig { limits: hostile_limits, ..TenantConfig::default() }).expect("tenant");
    host.create_tenant("polite", TenantConfig::default()).expect("tenant");
    let spin = abi_module(r#"(func (export "start") (result i32) (loop $l (br $l)) i32.const 0)"#);
    for a in 0..4 {
        host.deploy("mallory", &format!("spin{a}"), &spin).expect("deploys");
        for _ in 0..10 {
            host.start_session("mallory", &format!("spin{a}"), "start", Vec::new()).expect("starts");
        }
    }
    host.deploy("polite", "app", &looping_app(1_000, 10)).expect("deploys");
    for _ in 0..20 {
        host.start_session("polite", "app", "start", Vec::new()).expect("starts");
    }
    await_events(&events, 60, finished);
    let metrics = host.metrics();
    let (mallory, polite) = (metrics.tenant("mallory").expect("t"), metrics.tenant("polite").expect("t"));
    assert_eq!(mallory.failures.get(&FailureKind::OutOfFuel), Some(&40));
    assert!(polite.failures.is_empty());
    // Each polite action waits at most for the hostile actions already running, never for the
    // hostile tenant's backlog.
    assert!(
        polite.latency_p99_us <= mallory.latency_p50_us,
        "polite p99 {}µs vs hostile p50 {}µs",
        polite.latency_p99_us,
        mallory.latency_p50_us
    );
}

#[test]
fn full_queues_refuse_new_work_with_queue_full_and_lose_nothing() {
    let mut config = HostConfig { workers: 1, max_pending_per_app: 3, max_pending_total: 5, ..HostConfig::default() };
    config.runtime.engine.pool_instances = 4;
    let host = Host::new(config).expect("host");
    let events = host.subscribe();
    // A bucket that allows one action and then refills over days keeps everything else pending.
    let throttled = TenantConfig {
        fuel_per_second: 1,
        fuel_burst: 1_000_000,
        limits: Limits { fuel_per_action: 1_000_000, ..Limits::default() },
        ..TenantConfig::default()
    };
    host.create_tenant("slow", throttled).expect("tenant");
    let app = waiting_app(60_000);
    host.deploy("slow", "a", &app).expect("deploys");
    host.deploy("slow", "b", &app).expect("deploys");
    let first = host.start_session("slow", "a", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == first);

    let mut accepted = vec![first];
    for _ in 0..3 {
        accepted.push(host.start_session("slow", "a", "start", Vec::new()).expect("room in a"));
    }
    let error = host.start_session("slow", "a", "start", Vec::new()).expect_err("a is full");
    assert_eq!(error.code(), "queue_full", "{error}");
    assert!(error.to_string().contains("the app already has 3 actions pending"), "{error}");
    // The waiting session's answer would be a fourth pending action of `a`.
    assert_eq!(host.deliver("slow", first, b"hi".to_vec(), None).expect_err("a is full").code(), "queue_full");

    accepted.push(host.start_session("slow", "b", "start", Vec::new()).expect("room in b"));
    accepted.push(host.start_session("slow", "b", "start", Vec::new()).expect("room in b"));
    let error = host.start_session("slow", "b", "start", Vec::new()).expect_err("the host is full");
    assert!(error.to_string().contains("the host already has 5 actions pending"), "{error}");
    assert_eq!(host.metrics().queue_depth, 5);
    // Every accepted session is still there, and the refused delivery changed nothing.
    for id in accepted {
        host.session("slow", id).expect("kept");
    }
    assert!(matches!(host.session("slow", first).expect("kept").status, Status::Waiting { .. }));
}

#[test]
fn wait_timeouts_fire_and_answered_waits_do_not() {
    let host = host(2);
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "short", &waiting_app(30)).expect("deploys");
    host.deploy("t", "long", &waiting_app(3_600_000)).expect("deploys");
    let expires = host.start_session("t", "short", "start", Vec::new()).expect("starts");
    let answered = host.start_session("t", "long", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == answered && matches!(e.status, Status::Waiting { .. }));
    host.deliver("t", answered, b"hello".to_vec(), None).expect("delivered");
    await_events(&events, 2, finished);
    assert_eq!(host.session("t", expires).expect("s").status, Status::Done { result: "expired".into() });
    assert_eq!(host.session("t", answered).expect("s").status, Status::Done { result: "answered".into() });
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn a_hundred_thousand_waiting_sessions_cost_no_threads() {
    let host = host(2);
    let events = host.subscribe();
    host.create_tenant("big", TenantConfig { max_sessions: 200_000, ..TenantConfig::default() }).expect("tenant");
    host.deploy("big", "app", &waiting_app(3_600_000)).expect("deploys");
    let before = threads();
    const N: usize = 100_000;
    let mut started = 0;
    while started < N {
        // Stay under the pending bound: start in batches and let them reach their wait.
        let batch = 5_000.min(N - started);
        for _ in 0..batch {
            host.start_session("big", "app", "start", Vec::new()).expect("starts");
        }
        await_events(&events, batch, |e| matches!(e.status, Status::Waiting { .. }));
        started += batch;
    }
    let metrics = host.metrics();
    assert_eq!(metrics.waiting, N as u64);
    // Other tests run in this process at the same time, so allow for their threads: a thread (or
    // task) per session would add a hundred thousand.
    assert!(threads() < before + 64, "waiting sessions must not cost threads: {before} then {}", threads());
}

#[test]
fn sessions_stay_on_their_version_and_tenants_see_only_their_own() {
    let host = host(2);
    let events = host.subscribe();
    host.create_tenant("acme", TenantConfig::default()).expect("tenant");
    host.create_tenant("other", TenantConfig::default()).expect("tenant");
    let v1 = host.deploy("acme", "ivr", &example("ivr_menu")).expect("deploys");
    let old = host.start_session("acme", "ivr", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == old && matches!(e.status, Status::Waiting { .. }));
    let v2 = host.deploy("acme", "ivr", &waiting_app(1000)).expect("deploys");
    assert_ne!(v1.version, v2.version);
    let new = host.start_session("acme", "ivr", "start", Vec::new()).expect("starts");
    assert_eq!(host.session("acme", old).expect("s").version, v1.version);
    assert_eq!(host.session("acme", new).expect("s").version, v2.version);
    host.deliver("acme", old, b"9".to_vec(), None).expect("delivered");
    await_events(&events, 1, |e| e.session == old && finished(e));
    let outputs = outputs_of(&host, "acme", old);
    assert!(outputs.iter().any(|o| o.contains("hangup")), "{outputs:?}");

    // Another tenant can neither read nor feed it, and can't tell it exists.
    assert_eq!(host.session("other", old).expect_err("hidden").code(), "not_found");
    assert_eq!(host.deliver("other", new, b"1".to_vec(), None).expect_err("hidden").code(), "not_found");
    assert_eq!(host.session("acme", SessionId(999_999)).expect_err("absent").code(), "not_found");
    assert_eq!(host.start_session("other", "ivr", "start", Vec::new()).expect_err("not theirs").code(), "not_found");
}

#[test]
fn metrics_count_actions_fuel_and_failures_per_tenant_in_prometheus_text() {
    let host = host(2);
    let events = host.subscribe();
    host.create_tenant("acme", TenantConfig::default()).expect("tenant");
    host.create_tenant("mallory", TenantConfig::default()).expect("tenant");
    host.deploy("acme", "loop", &looping_app(100, 4)).expect("deploys");
    host.deploy("mallory", "hostile", &example("hostile")).expect("deploys");
    host.start_session("acme", "loop", "start", Vec::new()).expect("starts");
    for entry in ["trap", "bad_next"] {
        host.start_session("mallory", "hostile", entry, Vec::new()).expect("starts");
    }
    await_events(&events, 3, finished);
    let metrics = host.metrics();
    let acme: &TenantMetrics = metrics.tenant("acme").expect("acme");
    assert_eq!(acme.actions, 5);
    assert!(acme.fuel > 0);
    assert!(acme.latency_p99_us >= acme.latency_p50_us);
    let mallory = metrics.tenant("mallory").expect("mallory");
    assert_eq!(mallory.failures.get(&FailureKind::Trap), Some(&1));
    assert_eq!(mallory.failures.get(&FailureKind::BadNext), Some(&1));
    let text = metrics.prometheus();
    assert!(text.contains("turnstile_actions_total{tenant=\"acme\"} 5"), "{text}");
    assert!(text.contains("turnstile_action_failures_total{tenant=\"mallory\",kind=\"bad_next\"} 1"), "{text}");
    assert!(text.contains("turnstile_action_latency_seconds_count{tenant=\"acme\"} 5"), "{text}");
    assert!(text.contains("turnstile_action_latency_seconds_bucket{le=\"+Inf\",tenant=\"acme\"} 5"), "{text}");
    assert!(text.contains("# TYPE turnstile_action_failures counter"), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with its EOF line");
    assert!(text.contains("turnstile_fenced_writes_total 0"), "{text}");
    assert!(text.contains("turnstile_commit_latency_seconds_bucket{le=\"+Inf\"}"), "{text}");
    assert!(metrics.commits.groups >= 1 && metrics.commits.writes >= metrics.commits.groups, "{:?}", metrics.commits);
    assert!(!text.contains("turnstile_cluster_shards"), "no cluster figures without a cluster");
}

#[test]
fn bad_tenant_settings_and_names_are_refused() {
    let host = host(1);
    let error = host.create_tenant("Bad Name!", TenantConfig::default()).expect_err("bad name");
    assert_eq!(error.code(), "invalid_name");
    let error = host.create_tenant("t", TenantConfig { weight: 0, ..TenantConfig::default() }).expect_err("weight");
    assert_eq!(error.code(), "invalid_config");
    let tiny_burst = TenantConfig { fuel_burst: 10, ..TenantConfig::default() };
    assert_eq!(host.create_tenant("t", tiny_burst).expect_err("burst").code(), "invalid_config");
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    assert_eq!(host.create_tenant("t", TenantConfig::default()).expect_err("dup").code(), "conflict");
    assert_eq!(host.deploy("t", "app", b"nope").expect_err("not wasm").code(), "not_wasm");
    assert_eq!(host.deploy("nobody", "app", b"nope").expect_err("no tenant").code(), "not_found");
}

#[test]
fn events_for_a_busy_session_wait_in_its_inbox_and_arrive_in_order() {
    let host = host(1);
    let events = host.subscribe();
    // One action's worth of fuel, refilling over days: after `start`, the tenant is throttled
    // until the operator raises its rate.
    let limits = Limits { fuel_per_action: 1_000_000, ..Limits::default() };
    let throttled = TenantConfig { fuel_per_second: 1, fuel_burst: 1_000_000, limits, ..TenantConfig::default() };
    host.create_tenant("t", throttled.clone()).expect("tenant");
    let echo = abi_module(
        r#"(data (i32.const 0) "{\"wait\":{\"action\":\"echo\"}}")
           (func (export "start") (result i32) (call $next (i32.const 0) (i32.const 26)) i32.const 0)
           (func (export "echo") (result i32)
             (call $input_read (i32.const 100))
             (call $emit (i32.const 100) (call $input_len))
             (call $next (i32.const 0) (i32.const 26)) i32.const 0)"#,
    );
    host.deploy("t", "echo", &echo).expect("deploys");
    let id = host.start_session("t", "echo", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == id);
    host.deliver("t", id, br#""first""#.to_vec(), None).expect("queued: the tenant is throttled");
    host.deliver("t", id, br#""second""#.to_vec(), None).expect("kept in the inbox");
    assert!(matches!(host.session("t", id).expect("s").status, Status::Ready { .. }));

    host.reconfigure_tenant("t", TenantConfig { fuel_per_second: 1_000_000_000, ..throttled }).expect("updated");
    // The first echo ends in a wait, which takes the inbox's second event at once.
    await_events(&events, 2, |e| e.session == id && matches!(e.status, Status::Waiting { .. }));
    assert_eq!(outputs_of(&host, "t", id), [r#""first""#, r#""second""#]);
}

#[test]
fn cancelled_sessions_end_cancelled_whether_idle_or_busy() {
    let host = host(1);
    let events = host.subscribe();
    let limits = Limits { fuel_per_action: 1_000_000, ..Limits::default() };
    let throttled = TenantConfig { fuel_per_second: 1, fuel_burst: 1_000_000, limits, ..TenantConfig::default() };
    host.create_tenant("t", throttled.clone()).expect("tenant");
    host.create_tenant("other", TenantConfig::default()).expect("tenant");
    host.deploy("t", "app", &waiting_app(3_600_000)).expect("deploys");
    // Idle: waiting for its customer.
    let idle = host.start_session("t", "app", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == idle);
    assert_eq!(host.cancel_session("other", idle).expect_err("not theirs").code(), "not_found");
    host.cancel_session("t", idle).expect("cancelled");
    await_events(&events, 1, |e| e.session == idle && e.status == Status::Cancelled);
    assert_eq!(host.deliver("t", idle, b"late".to_vec(), None).expect_err("over").code(), "session_state");
    assert_eq!(host.cancel_session("t", idle).expect_err("twice").code(), "session_state");
    // Busy: queued behind an empty fuel bucket.
    let busy = host.start_session("t", "app", "start", Vec::new()).expect("starts");
    host.cancel_session("t", busy).expect("cancelled");
    host.reconfigure_tenant("t", TenantConfig { fuel_per_second: 1_000_000_000, ..throttled }).expect("updated");
    await_events(&events, 1, |e| e.session == busy && e.status == Status::Cancelled);
    assert_eq!(host.session("t", busy).expect("s").status, Status::Cancelled);
    assert_eq!(host.metrics().tenant("t").map(|t| t.sessions_finished), Some(2));
}

#[test]
fn operators_list_suspend_and_delete_tenants() {
    let host = host(1);
    let events = host.subscribe();
    host.create_tenant("acme", TenantConfig { weight: 2, ..TenantConfig::default() }).expect("tenant");
    host.create_tenant("zeta", TenantConfig::default()).expect("tenant");
    host.deploy("acme", "app", &waiting_app(3_600_000)).expect("deploys");
    let names: Vec<String> = host.tenants().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme", "zeta"]);
    let acme = host.tenant("acme").expect("acme");
    assert_eq!((acme.config.weight, acme.apps.len()), (2, 1));
    assert_eq!(acme.apps[0].actions, ["answer", "expired", "start"]);

    let id = host.start_session("acme", "app", "start", Vec::new()).expect("starts");
    await_events(&events, 1, |e| e.session == id);
    host.suspend_tenant("acme", true).expect("suspended");
    assert_eq!(
        host.start_session("acme", "app", "start", Vec::new()).expect_err("suspended").code(),
        "tenant_suspended"
    );
    assert_eq!(host.deliver("acme", id, b"x".to_vec(), None).expect_err("suspended").code(), "tenant_suspended");
    assert!(host.tenant("acme").expect("acme").config.suspended);
    host.suspend_tenant("acme", false).expect("resumed");
    host.deliver("acme", id, b"\"hi\"".to_vec(), None).expect("delivered");
    await_events(&events, 1, |e| e.session == id && e.status.is_finished());

    assert_eq!(host.delete_tenant("nobody").expect_err("absent").code(), "not_found");
    let open = host.start_session("acme", "app", "start", Vec::new()).expect("starts");
    assert_eq!(host.delete_tenant("acme").expect_err("open sessions").code(), "conflict");
    host.cancel_session("acme", open).expect("cancelled");
    await_events(&events, 1, |e| e.session == open && e.status.is_finished());
    host.delete_tenant("acme").expect("deleted");
    assert_eq!(host.session("acme", id).expect_err("gone").code(), "not_found");
    assert_eq!(host.tenants().len(), 1);
    host.create_tenant("acme", TenantConfig::default()).expect("the name is free again");
    assert!(host.tenant("acme").expect("acme").apps.is_empty());
}

#[test]
fn a_suspension_and_a_change_of_quotas_at_once_both_land() {
    // Found by a red-team helper: each read the tenant's configuration, then wrote it back
    // whole, so whichever wrote last undid the other (128 of 200 suspensions lost over HTTP).
    let host = Arc::new(host(1));
    host.create_tenant("acme", TenantConfig::default()).expect("tenant");
    for round in 0..200 {
        host.suspend_tenant("acme", false).expect("resume");
        host.reconfigure_tenant("acme", TenantConfig::default()).expect("reset");
        let start = Arc::new(std::sync::Barrier::new(2));
        let (h, s) = (host.clone(), start.clone());
        let quotas = std::thread::spawn(move || {
            s.wait();
            h.reconfigure_tenant("acme", TenantConfig { weight: 7, ..TenantConfig::default() }).expect("reconfigure");
        });
        start.wait();
        host.suspend_tenant("acme", true).expect("suspend");
        quotas.join().expect("joins");
        let config = host.tenant("acme").expect("tenant").config;
        assert_eq!((config.suspended, config.weight), (true, 7), "round {round}: one change undid the other");
    }
}
