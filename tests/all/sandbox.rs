//! Hostile actions each end with their own failure kind, readable, and cost the host nothing: the
//! very next action of the same runtime succeeds. ABI misuse that a Rust guest can't express is
//! covered with WAT fixtures.

use crate::fixtures::{abi_module, deploy_example, outputs, runtime, runtime_with, start};
use std::time::Duration;
use turnstile::{FailureKind, Limits, Runtime, Status};

/// Runs `entry` of `app` on `runtime` and returns the failure the session ended with.
fn failure_of(runtime: &Runtime, app: &std::sync::Arc<turnstile::App>, entry: &str) -> turnstile::Failure {
    let (session, _) = start(runtime, app, entry);
    match session.status() {
        Status::Failed { failure } => failure.clone(),
        other => panic!("`{entry}` should fail, the session is {other:?}"),
    }
}

/// The hostile example's `ok` action runs fine right after.
fn host_still_serves(runtime: &Runtime) {
    let app = runtime.deploy(&crate::fixtures::example("hostile")).expect("deploys").app;
    let (session, steps) = start(runtime, &app, "ok");
    assert!(matches!(session.status(), Status::Done { .. }), "{:?}", session.status());
    assert_eq!(crate::fixtures::said(&steps), ["still alive"]);
}

#[test]
fn every_hostile_action_fails_with_its_own_kind_and_the_next_action_succeeds() {
    let app = deploy_example("hostile");
    let cases = [
        ("spin", FailureKind::OutOfFuel, "fuel"),
        ("memory_bomb", FailureKind::MemoryLimit, "over the limit"),
        ("deep_recursion", FailureKind::StackOverflow, "stack"),
        ("huge_output", FailureKind::OutputLimit, "over the limit"),
        ("trap", FailureKind::Trap, "hostile: deliberate panic"),
        ("bad_pointer", FailureKind::AbiMisuse, "outside the guest's memory"),
        ("bad_next", FailureKind::BadNext, "no_such_action"),
    ];
    for (entry, kind, needle) in cases {
        let (session, steps) = start(runtime(), &app, entry);
        let Status::Failed { failure } = session.status() else { panic!("`{entry}` should fail") };
        assert_eq!(steps.last().and_then(|s| s.failure.as_ref()), Some(failure), "the step reports it");
        assert_eq!(failure.kind, kind, "{entry}: {failure}");
        assert_eq!(failure.action, entry);
        assert!(failure.message.contains(needle), "{entry}: `{}` should mention `{needle}`", failure.message);
        host_still_serves(runtime());
    }
}

#[test]
fn a_failed_action_releases_nothing() {
    let app = deploy_example("hostile");
    let (session, steps) = start(runtime(), &app, "huge_output");
    assert!(steps.iter().all(|s| s.outputs.is_empty()));
    assert_eq!(session.session().counters.failures, 1);
    assert_eq!(session.session().counters.outputs, 0);
}

#[test]
fn the_wall_clock_deadline_stops_what_fuel_would_not() {
    let limits = Limits { fuel_per_action: 1 << 40, wall_time: Duration::from_millis(50), ..Limits::default() };
    let runtime = runtime_with(limits);
    let app = runtime.deploy(&abi_module(r#"(func (export "start") (result i32) (loop $l (br $l)) i32.const 0)"#));
    let failure = failure_of(&runtime, &app.expect("deploys").app, "start");
    assert_eq!(failure.kind, FailureKind::Deadline);
    assert!(failure.message.contains("50ms"), "{failure}");
    host_still_serves(&runtime);
}

/// A module whose `start` runs `body` and then `next({"done":null})` from data at offset 0.
fn action(body: &str) -> Vec<u8> {
    abi_module(&format!(
        r#"(data (i32.const 0) "{{\"done\":null}}")
           (data (i32.const 100) "not json")
           (data (i32.const 200) "{{\"wait\":{{\"action\":\"start\",\"timeout_ms\":5}}}}")
           (func (export "start") (result i32) {body} (call $next (i32.const 0) (i32.const 13)) i32.const 0)"#
    ))
}

fn assert_fails(runtime: &Runtime, body: &str, kind: FailureKind, needle: &str) {
    let app = runtime.deploy(&action(body)).expect("deploys").app;
    let failure = failure_of(runtime, &app, "start");
    assert_eq!(failure.kind, kind, "{failure}");
    assert!(failure.message.contains(needle), "`{}` should mention `{needle}`", failure.message);
}

#[test]
fn abi_misuse_is_named() {
    let rt = runtime();
    assert_fails(rt, "(call $emit (i32.const 0) (i32.const -1))", FailureKind::AbiMisuse, "negative");
    assert_fails(rt, "(call $emit (i32.const 65530) (i32.const 100))", FailureKind::AbiMisuse, "outside");
    assert_fails(rt, "(call $emit (i32.const 100) (i32.const 8))", FailureKind::AbiMisuse, "not one JSON value");
    assert_fails(rt, "(call $kv_read (i32.const 0))", FailureKind::AbiMisuse, "kv_get first");
    assert_fails(rt, "(call $input_read (i32.const -5))", FailureKind::AbiMisuse, "negative");
    assert_fails(rt, "(call $log (i32.const 2) (i32.const 70000) (i32.const 1))", FailureKind::AbiMisuse, "outside");
}

#[test]
fn limits_on_state_outputs_and_memory_are_enforced_before_allocating() {
    let rt = runtime();
    // Lengths far past memory are refused for being over the limit, not read.
    assert_fails(rt, "(call $state_write (i32.const 0) (i32.const 2000000000))", FailureKind::StateLimit, "limit");
    assert_fails(rt, "(call $emit (i32.const 0) (i32.const 2000000000))", FailureKind::OutputLimit, "limit");
    assert_fails(
        rt,
        "(call $kv_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 2000000000))",
        FailureKind::StateLimit,
        "limit",
    );
    // Too many outputs.
    let many = "(call $emit (i32.const 0) (i32.const 13))".repeat(65);
    assert_fails(rt, &many, FailureKind::OutputLimit, "more than 64 outputs");
    // memory.grow past the tenant's limit (64 MiB) traps with memory_limit rather than returning -1.
    assert_fails(rt, "(drop (memory.grow (i32.const 2000)))", FailureKind::MemoryLimit, "over the limit");
}

#[test]
fn bad_next_steps_are_named() {
    let rt = runtime();
    assert_fails(
        rt,
        "(call $next (i32.const 100) (i32.const 8)) (return (i32.const 0))",
        FailureKind::BadNext,
        "not one of",
    );
    assert_fails(
        rt,
        "(call $next (i32.const 200) (i32.const 42)) (return (i32.const 0))",
        FailureKind::BadNext,
        "needs `on_timeout`",
    );
    assert_fails(rt, "(return (i32.const 0))", FailureKind::BadNext, "without calling `next`");
    assert_fails(rt, "(return (i32.const 7))", FailureKind::Trap, "error code 7");
}

#[test]
fn an_error_action_receives_the_failure() {
    let app = runtime()
        .deploy(&abi_module(
            r#"(data (i32.const 0) "{\"done\":\"handled\"}")
               (func (export "start") (result i32) unreachable)
               (func (export "on_error") (result i32)
                 (call $input_read (i32.const 1000))
                 (call $emit (i32.const 1000) (call $input_len))
                 (call $next (i32.const 0) (i32.const 18))
                 i32.const 0)"#,
        ))
        .expect("deploys")
        .app;
    let (session, steps) = start(runtime(), &app, "start");
    assert_eq!(session.status(), &Status::Done { result: serde_json::json!("handled") });
    let failure = &outputs(&steps)[0]["failure"];
    assert_eq!(failure["kind"], "trap");
    assert_eq!(failure["action"], "start");
    assert!(failure["message"].as_str().is_some_and(|m| m.contains("unreachable")), "{failure}");
    assert_eq!(session.session().last_failure.as_ref().map(|f| f.kind), Some(FailureKind::Trap));
}

#[test]
fn the_loop_guard_ends_a_session_that_never_waits() {
    let limits = Limits { max_actions_per_session: 25, ..Limits::default() };
    let runtime = runtime_with(limits);
    let app = runtime
        .deploy(&abi_module(
            r#"(data (i32.const 0) "{\"goto\":\"start\"}")
               (func (export "start") (result i32) (call $next (i32.const 0) (i32.const 16)) i32.const 0)"#,
        ))
        .expect("deploys")
        .app;
    let failure = failure_of(&runtime, &app, "start");
    assert_eq!(failure.kind, FailureKind::LoopGuard);
    let (session, _) = start(&runtime, &app, "start");
    assert_eq!(session.session().counters.actions, 25);
}

#[test]
fn kv_writes_are_visible_to_later_actions() {
    let app = runtime()
        .deploy(&abi_module(
            r#"(data (i32.const 0) "{\"goto\":\"read\"}")
               (data (i32.const 20) "greeting\"hello\"")
               (data (i32.const 40) "{\"done\":null}")
               (func (export "start") (result i32)
                 (call $kv_set (i32.const 20) (i32.const 8) (i32.const 28) (i32.const 7))
                 (call $next (i32.const 0) (i32.const 15)) i32.const 0)
               (func (export "read") (result i32)
                 (if (i32.ne (call $kv_get (i32.const 20) (i32.const 8)) (i32.const 7)) (then unreachable))
                 (call $kv_read (i32.const 500))
                 (call $emit (i32.const 500) (i32.const 7))
                 (call $next (i32.const 40) (i32.const 13)) i32.const 0)"#,
        ))
        .expect("deploys")
        .app;
    let (session, steps) = start(runtime(), &app, "start");
    assert!(matches!(session.status(), Status::Done { .. }), "{:?}", session.status());
    assert_eq!(outputs(&steps), [serde_json::json!("hello")]);
}

#[test]
fn every_action_sees_its_modules_own_data_whether_copied_or_mapped() {
    // Two modules on a pool of one slot: every instance takes the slot the other module used.
    // Each action reports the word in its data segment, then scribbles over it; the next
    // instance, of either module, must see its own module's word, never the other's or the
    // scribble.
    let word = |w: &str| {
        abi_module(&format!(
            r#"(data (i32.const 0) "{{\"done\":null}}")
               (data (i32.const 300) "\"{w}\"")
               (func (export "start") (result i32)
                 (call $emit (i32.const 300) (i32.const 7))
                 (i32.store (i32.const 301) (i32.const 0x78787878))
                 (call $next (i32.const 0) (i32.const 13)) i32.const 0)"#
        ))
    };
    for init in [turnstile::MemoryInit::Copy, turnstile::MemoryInit::Map] {
        let mut config = turnstile::RuntimeConfig::default();
        config.engine.pool_instances = 1;
        config.engine.memory_init = init;
        let runtime = Runtime::new(config).expect("runtime");
        let apps = ["alpha", "bravo"].map(|w| (w, runtime.deploy(&word(w)).expect("deploys").app));
        for round in 0..3 {
            for (w, app) in &apps {
                let (_, steps) = start(&runtime, app, "start");
                assert_eq!(outputs(&steps), [serde_json::json!(w)], "{init:?}, round {round}");
            }
        }
    }
}
