//! What fuel alone does not see: time asleep or in host calls, host work a guest can make the
//! host do, and a tenant taking every worker. Each host call is charged, bounded by the action's
//! deadline, and the fair share is charged in what an action really cost.

use crate::fixtures::{example, runtime, runtime_with, wat};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile::{
    ActionOutcome, FailureKind, Host, HostConfig, Limits, MemoryKv, Runtime, SessionEvent, Status, TenantConfig,
};

/// A module with the ABI and WASI imports used here; `start` runs `body`, then `{"done":null}`.
fn module(body: &str, extra: &str, pages: u32) -> Vec<u8> {
    wat(&format!(
        r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "random" (func $random (param i32 i32)))
        (import "turnstile" "state_write" (func $state_write (param i32 i32)))
        (import "turnstile" "state_read" (func $state_read (param i32)))
        (import "turnstile" "kv_get" (func $kv_get (param i32 i32) (result i32)))
        (import "turnstile" "log" (func $log (param i32 i32 i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
        (memory (export "memory") {pages})
        (data (i32.const 0) "{{\"done\":null}}")
        (data (i32.const 64) "balance:1000")
        {extra}
        (func (export "start") (result i32) {body} (call $next (i32.const 0) (i32.const 13)) i32.const 0))"#
    ))
}

/// A relative sleep of `nanos` on the monotonic clock: one subscription at offset 1024.
fn sleep_data(nanos: u64) -> String {
    let bytes: String = nanos.to_le_bytes().iter().map(|b| format!("\\{b:02x}")).collect();
    format!(r#"(data (i32.const 1040) "\01") (data (i32.const 1048) "{bytes}")"#)
}

const SLEEP: &str = "(drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 2100)))";

fn run(runtime: &Runtime, bytes: &[u8], fuel: u64) -> ActionOutcome {
    let app = runtime.deploy(bytes).expect("deploys").app;
    let limits = Arc::new(Limits { fuel_per_action: fuel, ..runtime.limits().as_ref().clone() });
    runtime.run_action(&app, "start", Vec::new(), Vec::new(), Arc::new(MemoryKv::default()), &limits, fuel)
}

fn failure(outcome: &ActionOutcome) -> &turnstile::Failure {
    outcome.result.as_ref().err().unwrap_or_else(|| panic!("the action should fail: {:?}", outcome.usage))
}

#[test]
fn a_wasi_sleep_past_the_deadline_fails_deadline_at_once() {
    let started = Instant::now();
    let outcome = run(runtime(), &module(SLEEP, &sleep_data(u64::MAX), 1), 50_000_000);
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    assert!(failure.message.contains("poll_oneoff asked to sleep"), "{failure}");
    // It never held the worker: the 584-year sleep is refused, not served up to the deadline.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn a_sleep_within_the_deadline_is_served_and_charged_as_the_time_it_took() {
    let outcome = run(runtime(), &module(SLEEP, &sleep_data(30_000_000), 1), 50_000_000);
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    let usage = outcome.usage;
    assert!(usage.host_time >= Duration::from_millis(30), "{usage:?}");
    assert!(usage.elapsed >= usage.host_time);
    // Its cost counts the time it slept at the host's fuel per second: far more than the fuel
    // it burned.
    let rate = runtime().fuel_per_second();
    let floor = u128::from(rate) * usage.host_time.as_nanos() / 1_000_000_000;
    // (Each part of its receipt is rounded down on its own: a unit or two may go.)
    assert!(u128::from(usage.cost) + 2 >= floor, "{usage:?} at {rate} fuel/s");
    assert!(usage.cost > usage.fuel * 100, "{usage:?}");
}

#[test]
fn a_sleeping_tenant_does_not_hold_the_worker_past_its_deadline() {
    let mut config = HostConfig { workers: 1, ..HostConfig::default() };
    config.runtime.engine.pool_instances = 4;
    let host = Host::new(config).expect("host");
    let events = host.subscribe();
    host.create_tenant("mallory", TenantConfig::default()).expect("tenant");
    host.create_tenant("polite", TenantConfig::default()).expect("tenant");
    host.deploy("mallory", "hostile", &example("hostile")).expect("deploys");
    host.deploy("polite", "hostile", &example("hostile")).expect("deploys");
    let started = Instant::now();
    let sleeper = host.start_session("mallory", "hostile", "sleeper", Vec::new()).expect("starts");
    let ok = host.start_session("polite", "hostile", "ok", Vec::new()).expect("starts");
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let event: SessionEvent = events.recv_timeout(Duration::from_secs(60)).expect("the sessions end");
        if event.status.is_finished() {
            ended.push(event.session);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    match host.session("mallory", sleeper).expect("s").status {
        Status::Failed { failure } => assert_eq!(failure.kind, FailureKind::Deadline, "{failure}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(host.session("polite", ok).expect("s").status, Status::Done { .. }));
}

#[test]
fn a_64_mib_random_get_is_bounded_by_fuel_before_any_work() {
    let limits = Limits { memory_bytes: 128 << 20, ..Limits::default() };
    let runtime = runtime_with(limits);
    let body = "(drop (call $random_get (i32.const 65536) (i32.const 67108864)))";
    // The charge (64 MiB at its per-KiB rate) is taken before a byte is generated.
    let outcome = run(&runtime, &module(body, "", 1025), 1_000_000);
    let refused = failure(&outcome);
    assert_eq!(refused.kind, FailureKind::OutOfFuel, "{refused}");
    assert!(refused.message.contains("random_get"), "{refused}");
    // With fuel enough, it is done in place in the guest's memory, and paid for.
    let outcome = run(&runtime, &module(body, "", 1025), 200_000_000);
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert!(outcome.usage.fuel >= 64 * 1024, "{:?}", outcome.usage);
    // Outside its memory, it is refused.
    let outcome = run(&runtime, &module(body, "", 1), 200_000_000);
    assert_eq!(failure(&outcome).kind, FailureKind::AbiMisuse);
}

#[test]
fn loops_of_host_calls_run_out_of_fuel_like_loops_of_wasm() {
    for (what, body) in [
        ("random", "(loop $l (call $random (i32.const 4096) (i32.const 65536)) (br $l))"),
        (
            "state_read",
            "(call $state_write (i32.const 4096) (i32.const 65536)) (loop $l (call $state_read (i32.const 4096)) (br $l))",
        ),
        ("kv_get", "(loop $l (drop (call $kv_get (i32.const 64) (i32.const 12))) (br $l))"),
        ("log", "(loop $l (call $log (i32.const 2) (i32.const 4096) (i32.const 16384)) (br $l))"),
    ] {
        let outcome = run(runtime(), &module(body, "", 2), 20_000_000);
        let failure = failure(&outcome);
        assert_eq!(failure.kind, FailureKind::OutOfFuel, "{what}: {failure}");
        // Its host calls were charged: the fuel went at a rate comparable to wasm's, so the
        // action ended long before its wall-clock deadline.
        assert!(outcome.usage.elapsed < Duration::from_secs(1), "{what}: {:?}", outcome.usage);
    }
}

#[test]
fn wasi_imports_outside_the_allow_list_are_refused_by_name() {
    let import = |name: &str, ty: &str| {
        wat(&format!(
            r#"(module (import "wasi_snapshot_preview1" "{name}" (func {ty}))
                (memory (export "memory") 1) (func (export "start") (result i32) i32.const 0))"#
        ))
    };
    let error = runtime().deploy(&import("path_open", "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)"));
    let error = error.err().expect("refused");
    assert_eq!(error.code(), "forbidden_import");
    assert!(error.to_string().contains("wasi_snapshot_preview1::path_open"), "{error}");
    let error = runtime().deploy(&import("fd_write", "(param i32) (result i32)")).err().expect("refused");
    assert_eq!(error.code(), "import_signature");
    assert!(error.to_string().contains("wasi_snapshot_preview1::fd_write"), "{error}");
}

#[test]
fn proc_exit_ends_the_action_with_its_code() {
    let outcome = run(runtime(), &module("(call $proc_exit (i32.const 3))", "", 1), 50_000_000);
    let failure = failure(&outcome);
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.contains("proc_exit(3)"), "{failure}");
}

#[test]
fn stdout_past_the_log_budget_is_dropped_not_fatal() {
    // One iovec of 60 KiB at 4096, written to stdout: four times the default log budget.
    let body = "(drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))";
    let outcome = run(runtime(), &module(body, r#"(data (i32.const 200) "\00\10\00\00\00\f0\00\00")"#, 2), 50_000_000);
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert!(outcome.log.iter().any(|l| l.message.contains("log limit reached")), "{:?}", outcome.log.len());
}

#[test]
fn apps_and_versions_per_tenant_are_capped() {
    let host = Host::new(HostConfig { workers: 1, ..HostConfig::default() }).expect("host");
    host.create_tenant("t", TenantConfig { max_apps: 2, max_versions: 2, ..TenantConfig::default() }).expect("t");
    let versions: Vec<Vec<u8>> = (0..3).map(|n| module(&format!("(drop (i32.const {n}))"), "", 1)).collect();
    host.deploy("t", "a", &versions[0]).expect("first app");
    host.deploy("t", "b", &versions[0]).expect("second app");
    let error = host.deploy("t", "c", &versions[0]).expect_err("a third app is over the cap");
    assert_eq!(error.code(), "quota_exceeded");
    assert!(error.to_string().contains("already has 2 apps"), "{error}");
    host.deploy("t", "a", &versions[1]).expect("a second version");
    host.deploy("t", "a", &versions[0]).expect("an existing version may be made current again");
    let error = host.deploy("t", "a", &versions[2]).expect_err("a third version is over the cap");
    assert!(error.to_string().contains("already has 2 versions"), "{error}");
}

#[test]
fn a_tenant_with_long_actions_on_many_apps_leaves_a_worker_to_the_others() {
    let _measuring = crate::fixtures::measuring();
    let mut config = HostConfig { workers: 2, ..HostConfig::default() };
    config.runtime.engine.pool_instances = 16;
    let host = Host::new(config).expect("host");
    let events = host.subscribe();
    let limits = Limits { wall_time: Duration::from_secs(5), ..Limits::default() };
    host.create_tenant("napper", TenantConfig { limits, ..TenantConfig::default() }).expect("tenant");
    host.create_tenant("polite", TenantConfig { max_in_flight: 2, ..TenantConfig::default() }).expect("tenant");
    // Polite work first, so it is ready when the napper's arrives: 20 sessions of 300 rounds.
    let rounds = wat(r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "state_len" (func $state_len (result i32)))
        (import "turnstile" "state_write" (func $state_write (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{\"goto\":\"start\"}")
        (data (i32.const 32) "{\"done\":null}")
        (func (export "start") (result i32) (local $n i32)
          (local.set $n (call $state_len))
          (if (i32.ge_u (local.get $n) (i32.const 300))
            (then (call $next (i32.const 32) (i32.const 13)) (return (i32.const 0))))
          (call $state_write (i32.const 100) (i32.add (local.get $n) (i32.const 1)))
          (call $next (i32.const 0) (i32.const 16)) i32.const 0))"#);
    host.deploy("polite", "app", &rounds).expect("deploys");
    // Six apps whose every action sleeps 2 s.
    let nap = module(SLEEP, &sleep_data(2_000_000_000), 1);
    for a in 0..6 {
        host.deploy("napper", &format!("nap{a}"), &nap).expect("deploys");
    }
    for _ in 0..20 {
        host.start_session("polite", "app", "start", Vec::new()).expect("starts");
    }
    for a in 0..6 {
        host.start_session("napper", &format!("nap{a}"), "start", Vec::new()).expect("starts");
    }
    let mut finished = 0;
    while finished < 20 {
        let event = events.recv_timeout(Duration::from_secs(60)).expect("progress");
        if event.tenant == "polite" && event.status.is_finished() {
            finished += 1;
        }
    }
    // Every polite session ran its 301 actions while the napper held at most one worker: not one
    // of its naps had ended yet.
    let napper = host.metrics().tenant("napper").map(|t| t.actions).expect("napper");
    assert_eq!(napper, 0, "the polite sessions waited for the naps");
}

#[test]
fn a_long_computation_is_preempted_in_slices_and_ends_out_of_fuel() {
    let started = Instant::now();
    let outcome = run(runtime(), &module("(loop $l (br $l))", "", 1), 5_000_000);
    assert_eq!(failure(&outcome).kind, FailureKind::OutOfFuel, "{:?}", outcome.result);
    assert!(started.elapsed() < Duration::from_secs(10));
}
