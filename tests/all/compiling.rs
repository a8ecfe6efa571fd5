//! Compile bombs and the bounds on compiling: the compile-cost cap (every value live across
//! every branch), the compile time limit, the compile slots, one compile per tenant at a time,
//! and loads of evicted modules that no deploy can hold up.

use crate::fixtures::wat;
use crate::hardening::{done_app, host_with};
use std::time::{Duration, Instant};
use turnstile::{DeployError, DeployLimits, Error, Host, HostConfig, Runtime, RuntimeConfig, TenantConfig};

/// Caps this permissive let a bomb reach the compiler, where `slots` compile at once, each for
/// at most 300 ms.
fn permissive(slots: usize) -> DeployLimits {
    DeployLimits {
        max_function_cost: u64::MAX,
        max_module_cost: u64::MAX,
        compile_slots: slots,
        compile_timeout: Duration::from_millis(300),
        ..DeployLimits::default()
    }
}

/// One function whose `locals` i64 locals are each updated under an `if` of their own, all live
/// across a loop: register allocation's worst case, quadratic in the function's size (2 000
/// locals, 36 KB, take seconds to compile without the caps).
fn compile_bomb(locals: u32) -> Vec<u8> {
    let mut body = String::new();
    for k in 1..=locals {
        body.push_str(&format!("local.get 0 if local.get {k} i64.const 1 i64.add local.set {k} end "));
    }
    let mut after = String::from("local.get 1 ");
    for k in 2..=locals {
        after.push_str(&format!("local.get {k} i64.add "));
    }
    wat(&format!(
        r#"(module (memory (export "memory") 1)
             (func (export "start") (result i32) (local i32) (local {decl})
               (loop $l {body} local.get 0 i32.const 1 i32.add local.tee 0 i32.const 10 i32.lt_u br_if $l)
               {after} drop i32.const 0))"#,
        decl = "i64 ".repeat(locals as usize)
    ))
}

/// Deploys an app for `tenant` and runs one session of it to its end.
fn deploy_and_run(host: &Host, tenant: &str, bytes: &[u8]) {
    host.deploy(tenant, "app", bytes).expect("the well-behaved tenant deploys");
    run_one(host, tenant);
}

#[test]
fn a_compile_bomb_is_refused_in_seconds_while_another_tenant_deploys_and_runs() {
    let host = host_with(DeployLimits::default());
    for tenant in ["bomber", "good"] {
        host.create_tenant(tenant, TenantConfig::default()).expect("tenant");
    }
    std::thread::scope(|s| {
        let bomber = s.spawn(|| {
            let started = Instant::now();
            let refused = host.deploy("bomber", "bomb", &compile_bomb(4_000)).expect_err("the bomb is refused");
            (refused, started.elapsed())
        });
        deploy_and_run(&host, "good", &done_app(1));
        let (refused, took) = bomber.join().expect("bomber");
        assert_eq!(refused.code(), "module_too_complex", "{refused}");
        assert!(refused.to_string().contains("compile cost"), "{refused}");
        assert!(took < Duration::from_secs(5), "refused after {took:?}");
    });
}

/// [`compile_bomb`]'s live values held instead of locals as a helper's 1 000 parameters (the
/// most a function type may have) updated under 4 000 `if`s, or as 2 000 values on the operand
/// stack live across 2 000 `if`s: both over the default cap of 2 000 000.
fn parameter_and_stack_bombs() -> [Vec<u8>; 3] {
    let mut updates = String::new();
    for n in 0..4_000 {
        let k = n % 1_000;
        updates.push_str(&format!("local.get 0 i32.wrap_i64 if local.get {k} i64.const 1 i64.add local.set {k} end "));
    }
    let parameters = wat(&format!(
        r#"(module (memory (export "memory") 1)
             (func $helper (param {params}) (result i64) {updates} local.get 1)
             (func (export "start") (result i32) i32.const 0))"#,
        params = "i64 ".repeat(1_000)
    ));
    let (mut pushes, mut branches, mut sums) = (String::new(), String::new(), String::new());
    for k in 0..2_000 {
        pushes.push_str(&format!("i64.const {k} "));
        branches.push_str("local.get 0 if local.get 0 i32.const 1 i32.add local.set 0 end ");
        if k > 0 {
            sums.push_str("i64.add ");
        }
    }
    let stack = wat(&format!(
        r#"(module (memory (export "memory") 1)
             (func (export "start") (result i32) (local i32) {pushes} {branches} {sums} drop i32.const 0))"#
    ));
    // Values live across indirect calls, which the compiler surrounds with blocks of its own
    // though the wasm has no branch (red-team helper 16: 16 000 of each took it past 26 GB and
    // killed the host).
    let (mut updates, mut calls, mut sum) = (String::new(), String::new(), String::from("local.get 0 "));
    for k in 0..2_000 {
        updates.push_str(&format!("local.get {k} i64.const 1 i64.add local.set {k} "));
        calls.push_str("i32.const 0 call_indirect (type $v) ");
        if k > 0 {
            sum.push_str(&format!("local.get {k} i64.add "));
        }
    }
    let indirect = wat(&format!(
        r#"(module (memory (export "memory") 1) (type $v (func)) (table 1 funcref)
             (func (export "start") (result i32) (local {locals}) {updates} {calls} {sum} drop i32.const 0))"#,
        locals = "i64 ".repeat(2_000)
    ));
    [parameters, stack, indirect]
}

#[test]
fn values_live_as_parameters_or_on_the_operand_stack_count_in_the_compile_cost() {
    // A tenant that declares no locals could otherwise keep as many values live across as many
    // branches (a red-team finding: 1 000 parameters under 64 000 `if`s passed the cap and took
    // a minute and gigabytes to compile).
    let runtime = crate::fixtures::runtime();
    for bomb in parameter_and_stack_bombs() {
        let started = Instant::now();
        let refused = runtime.deploy(&bomb).err().expect("the bomb is refused");
        assert_eq!(refused.code(), "module_too_complex", "{refused}");
        assert!(refused.to_string().contains("compile cost"), "{refused}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused after {:?}", started.elapsed());
    }
}

/// A bomb's deploy sent until its compile is judged: at background priority, on a loaded machine,
/// it may first be held back (`compile_delayed`) until it has had its time of CPU.
fn judged(mut deploy: impl FnMut() -> Error) -> Error {
    let mut answer = deploy();
    crate::serve::wait_until("the compile to be judged", || {
        if answer.code() == "compile_delayed" {
            answer = deploy();
        }
        answer.code() != "compile_delayed"
    });
    answer
}

#[test]
fn a_compile_over_its_time_is_refused_and_so_are_the_same_bytes_later_while_others_compile() {
    // Caps this permissive let the bomb reach the compiler; the time limit stops it there.
    let limits = permissive(DeployLimits::default().compile_slots);
    let mut config = RuntimeConfig { deploy: limits, ..RuntimeConfig::default() };
    config.engine.pool_instances = 2;
    let runtime = Runtime::new(config).expect("runtime");
    let bomb = compile_bomb(2_000);
    let started = Instant::now();
    let refused = judged(|| runtime.deploy(&bomb).err().expect("the bomb runs out of time"));
    assert!(matches!(refused, Error::Deploy(DeployError::CompileTimeout { .. })), "{refused}");
    assert_eq!(refused.code(), "compile_timeout");
    // (Judged by its CPU time, at background priority: on a loaded machine that takes longer.)
    assert!(started.elapsed() < Duration::from_secs(20), "refused after {:?}", started.elapsed());
    // The same bytes again: refused at once, not compiled again.
    let again = Instant::now();
    assert_eq!(runtime.deploy(&bomb).err().expect("refused again").code(), "compile_timeout");
    assert!(again.elapsed() < Duration::from_millis(100), "took {:?}", again.elapsed());
    // Another module compiles in the other slot meanwhile.
    runtime.deploy(&done_app(3)).expect("another module deploys");
}

#[test]
fn a_deploy_behind_compiles_that_ran_out_of_time_is_told_the_compiler_is_busy() {
    let limits = permissive(1);
    let mut config = RuntimeConfig { deploy: limits, ..RuntimeConfig::default() };
    config.engine.pool_instances = 2;
    let runtime = Runtime::new(config).expect("runtime");
    let bomb = compile_bomb(2_000);
    assert_eq!(judged(|| runtime.deploy(&bomb).err().expect("out of time")).code(), "compile_timeout");
    // The bomb's compile still holds the only slot: the next deploy is refused, not left waiting.
    let started = Instant::now();
    assert_eq!(runtime.deploy(&done_app(4)).err().expect("busy").code(), "compile_busy");
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    // Once the bomb's compile has run to its end (what it made is kept), its bytes are still
    // refused (red-team helper 16: they deployed then, found compiled).
    crate::serve::wait_until("the bomb's compile to end", || runtime.deploy(&done_app(4)).is_ok());
    assert_eq!(runtime.deploy(&bomb).err().expect("still refused").code(), "compile_timeout");
}

#[test]
fn a_tenant_holds_one_compile_at_a_time_and_others_load_their_evicted_apps_beside_it() {
    // One deploy slot, which the bomber's compile keeps past its time limit (red-team finding:
    // two such deploys held both slots, and other tenants' starts of evicted apps waited a minute).
    let limits = permissive(1);
    let mut config = HostConfig { workers: 2, module_idle: Duration::ZERO, ..HostConfig::default() };
    config.runtime.engine.pool_instances = 8;
    config.runtime.deploy = limits;
    let host = Host::new(config).expect("host starts");
    // Two deploys a minute: the refusals below, which compile nothing, are not counted.
    host.create_tenant("bomber", TenantConfig { deploys_per_minute: 2, ..TenantConfig::default() }).expect("tenant");
    host.create_tenant("good", TenantConfig::default()).expect("tenant");
    host.deploy("good", "app", &done_app(7)).expect("deploys");
    crate::serve::wait_until("the good tenant's app to be evicted", || host.metrics().modules.evicted >= 1);
    let refused = host.deploy("bomber", "bomb", &compile_bomb(2_000)).expect_err("out of time");
    // (Or held back by a loaded machine: its compile goes on either way.)
    assert!(["compile_timeout", "compile_delayed"].contains(&refused.code()), "{refused}");
    // Its compile runs on: the bomber may not start another beside it.
    let again = host.deploy("bomber", "bomb2", &compile_bomb(2_001)).expect_err("one at a time");
    assert_eq!(again.code(), "compile_running", "{again}");
    // Meanwhile the good tenant's evicted app loads and runs, not behind the bomb's slot.
    run_one(&host, "good");
    let still = host.deploy("bomber", "bomb2", &compile_bomb(2_001)).expect_err("the bomb still compiles");
    assert_eq!(still.code(), "compile_running", "the good tenant's load waited for the bomb's compile");
}

/// Runs one session of `tenant`'s `app` to its end.
fn run_one(host: &Host, tenant: &str) {
    let events = host.subscribe();
    let id = host.start_session(tenant, "app", "start", Vec::new()).expect("starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host.session(tenant, id).expect("session").status.is_finished() {
        events.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the session runs");
    }
}

#[test]
fn a_compile_held_back_by_busy_workers_runs_at_background_priority_and_is_not_refused() {
    let _measuring = crate::fixtures::measuring();
    let module = compile_bomb(700);
    let with_limit = |limit: Duration| {
        let deploy = DeployLimits { compile_timeout: limit, ..permissive(1) };
        let mut config = RuntimeConfig { deploy, ..RuntimeConfig::default() };
        config.engine.pool_instances = 2;
        Runtime::new(config).expect("runtime")
    };
    // What it takes to compile here, with the machine to itself.
    let started = Instant::now();
    with_limit(Duration::from_secs(60)).deploy(&module).expect("compiles");
    let took = started.elapsed();
    eprintln!("compile_bomb(700) compiles in {took:?}");
    let runtime = with_limit((took * 2).max(Duration::from_millis(50)));
    // One core kept busy at normal priority, as workers running actions keep theirs: two
    // spinning threads and this one (whose compile thread inherits where it may run) on the
    // same core, so the other tests of the suite keep the rest of the machine.
    let everywhere = rustix::thread::sched_getaffinity(None).expect("this thread's cores");
    let core = (0..rustix::thread::CpuSet::MAX_CPU).rev().find(|&c| everywhere.is_set(c)).expect("a core");
    let mut one = rustix::thread::CpuSet::new();
    one.set(core);
    rustix::thread::sched_setaffinity(None, &one).expect("pinned");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let answer = runtime.deploy(&module).err().expect("held back");
    // Its compile goes on meanwhile, at background priority (nice 10).
    let niceness = compile_threads_niceness();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().expect("spun");
    }
    rustix::thread::sched_setaffinity(None, &everywhere).expect("unpinned");
    assert_eq!(answer.code(), "compile_delayed", "{answer}");
    assert!(!niceness.is_empty() && niceness.iter().all(|n| *n == 10), "compile threads' nice: {niceness:?}");
    // Not refused: sent again once the machine has time, it deploys.
    crate::serve::wait_until("the module to deploy", || match runtime.deploy(&module) {
        Ok(_) => true,
        Err(error) => {
            assert_eq!(error.code(), "compile_delayed", "{error}");
            false
        }
    });
}

/// The nice value of each of this process's compile threads (`turnstile-compile`, as Linux
/// shortens the name).
fn compile_threads_niceness() -> Vec<i64> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("Linux's /proc");
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if name.trim() != "turnstile-compi" {
                return None;
            }
            // Field 19 of `stat`, counted after the parenthesised name.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            stat.rsplit(')').next()?.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}
