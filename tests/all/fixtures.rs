//! Shared fixtures: the example apps built to Wasm once per test run, runtimes, WAT modules.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use turnstile::{App, Limits, LocalSession, MemoryKv, Runtime, RuntimeConfig, Step};

/// The bytes of an example app (`ivr_menu`, `order_bot`, `hostile`) built for `target`.
pub fn example_for(name: &str, target: &str) -> Vec<u8> {
    turnstile::examples::example_wasm(name, target).expect("the example apps build")
}

/// The bytes of an example app built for `wasm32-unknown-unknown`.
pub fn example(name: &str) -> Vec<u8> {
    example_for(name, turnstile::examples::PLAIN)
}

/// Held by the tests that measure shares or latencies, and by those that load every core for
/// seconds (the demo's rush hour): on a two-core machine one would skew the other's figures.
/// Taken only once the example apps are built: on a fresh checkout that build (cargo, both
/// cores, a minute or more) runs beside the first tests.
pub fn measuring() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    example("ivr_menu");
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A runtime with the default limits, shared by the tests that need nothing special.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| runtime_with(Limits::default()))
}

/// A runtime of its own with these limits and a small pool.
pub fn runtime_with(limits: Limits) -> Runtime {
    let mut config = RuntimeConfig { limits, ..RuntimeConfig::default() };
    config.engine.pool_instances = 8;
    Runtime::new(config).expect("runtime")
}

/// Deploys an example on the shared runtime.
pub fn deploy_example(name: &str) -> Arc<App> {
    runtime().deploy(&example(name)).expect("the example deploys").app
}

/// A module from WAT text.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("fixture WAT parses")
}

/// A module that imports the whole ABI, exports a memory, and has the given extra items
/// (actions and data) spliced in.
pub fn abi_module(items: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
            (import "turnstile" "input_len" (func $input_len (result i32)))
            (import "turnstile" "input_read" (func $input_read (param i32)))
            (import "turnstile" "state_len" (func $state_len (result i32)))
            (import "turnstile" "state_read" (func $state_read (param i32)))
            (import "turnstile" "state_write" (func $state_write (param i32 i32)))
            (import "turnstile" "emit" (func $emit (param i32 i32)))
            (import "turnstile" "next" (func $next (param i32 i32)))
            (import "turnstile" "kv_get" (func $kv_get (param i32 i32) (result i32)))
            (import "turnstile" "kv_read" (func $kv_read (param i32)))
            (import "turnstile" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
            (import "turnstile" "log" (func $log (param i32 i32 i32)))
            (memory (export "memory") 1)
            {items})"#
    ))
}

/// Starts a session of `app` at `entry` on `runtime` with an empty kv space.
pub fn start<'r>(runtime: &'r Runtime, app: &Arc<App>, entry: &str) -> (LocalSession<'r>, Vec<Step>) {
    LocalSession::start(runtime, app.clone(), entry, Vec::new(), Arc::new(MemoryKv::default())).expect("session starts")
}

/// All outputs of some steps, parsed.
pub fn outputs(steps: &[Step]) -> Vec<serde_json::Value> {
    steps.iter().flat_map(|s| &s.outputs).map(|o| serde_json::from_str(o).expect("outputs are JSON")).collect()
}

/// The `text` of every `say` among some steps' outputs.
pub fn said(steps: &[Step]) -> Vec<String> {
    outputs(steps)
        .into_iter()
        .filter(|o| o["type"] == "say")
        .map(|o| o["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every output a session of `tenant` has released, in order.
pub fn outputs_of(host: &turnstile::Host, tenant: &str, session: turnstile::SessionId) -> Vec<String> {
    host.outputs(tenant, session, 0, usize::MAX).expect("outputs").into_iter().map(|o| o.body).collect()
}
