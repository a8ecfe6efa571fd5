//! Deploy refuses every kind of bad module with a specific message naming the culprit, discovers
//! actions from the exports, and never compiles the same bytes twice.

use crate::fixtures::{abi_module, example, runtime, wat};
use turnstile::{CompileSource, DeployLimits, EngineConfig, Error, Runtime, RuntimeConfig};

/// Deploys and expects a refusal with `code` whose message contains every one of `needles`.
fn refused(bytes: &[u8], code: &str, needles: &[&str]) {
    refused_by(runtime(), bytes, code, needles);
}

fn refused_by(runtime: &Runtime, bytes: &[u8], code: &str, needles: &[&str]) {
    let error = match runtime.deploy(bytes) {
        Ok(_) => panic!("expected the module to be refused with {code}"),
        Err(error) => error,
    };
    assert!(matches!(error, Error::Deploy(_)), "{error:?}");
    assert_eq!(error.code(), code, "{error}");
    let message = error.to_string();
    for needle in needles {
        assert!(message.contains(needle), "`{message}` should mention `{needle}`");
    }
}

const ACTION: &str = r#"(func (export "start") (result i32) i32.const 0)"#;

#[test]
fn refuses_bytes_that_are_not_wasm() {
    refused(b"#!/bin/sh\necho hi\n", "not_wasm", &["not a WebAssembly module"]);
    refused(b"", "not_wasm", &[]);
}

#[test]
fn refuses_invalid_wasm_with_the_validator_message() {
    let mut bytes = abi_module(ACTION);
    bytes.truncate(bytes.len() - 3);
    refused(&bytes, "invalid_wasm", &["invalid WebAssembly"]);
    // A body that pops from an empty stack.
    let bytes = wat(r#"(module (memory (export "memory") 1) (func (export "start") (result i32) i32.add))"#);
    refused(&bytes, "invalid_wasm", &["type mismatch"]);
}

#[test]
fn refuses_a_forbidden_import_by_name() {
    let bytes = wat(&format!(
        r#"(module (import "env" "open_socket" (func (param i32))) (memory (export "memory") 1) {ACTION})"#
    ));
    refused(&bytes, "forbidden_import", &["env::open_socket"]);
    let bytes = wat(&format!(r#"(module (import "turnstile" "exec" (func)) (memory (export "memory") 1) {ACTION})"#));
    refused(&bytes, "forbidden_import", &["turnstile::exec", "not in the ABI"]);
    let bytes = wat(&format!(r#"(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)) {ACTION})"#));
    refused(&bytes, "forbidden_import", &["env::memory", "memory"]);
}

#[test]
fn refuses_an_abi_import_with_the_wrong_signature() {
    let bytes = wat(&format!(
        r#"(module (import "turnstile" "emit" (func (param i64))) (memory (export "memory") 1) {ACTION})"#
    ));
    refused(&bytes, "import_signature", &["turnstile::emit", "(i64) -> ()", "(i32, i32) -> ()"]);
}

#[test]
fn refuses_an_action_lookalike_with_the_wrong_signature_by_name() {
    let bytes = abi_module(&format!(r#"{ACTION} (func (export "menu") (param i32) (result i32) i32.const 0)"#));
    refused(&bytes, "action_signature", &["`menu`", "(i32) -> (i32)"]);
    // Helpers marked as such are fine.
    let bytes = abi_module(&format!(r#"{ACTION} (func (export "_helper") (param i32) (result i32) i32.const 0)"#));
    let app = runtime().deploy(&bytes).expect("helpers are not actions").app;
    assert_eq!(app.info().actions, ["start"]);
}

#[test]
fn refuses_a_module_without_actions_or_memory() {
    refused(&abi_module(""), "no_actions", &["no actions"]);
    refused(&wat(&format!("(module {ACTION})")), "no_memory", &["memory"]);
    refused(&wat(&format!(r#"(module (memory 1) {ACTION})"#)), "no_memory", &["`memory`"]);
}

#[test]
fn refuses_components() {
    // The smallest component: the preamble with the component layer.
    let bytes = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    refused(&bytes, "component_not_supported", &["component"]);
}

#[test]
fn refuses_oversized_modules_memories_and_tables() {
    let limits = DeployLimits { max_module_bytes: 100, ..DeployLimits::default() };
    let small = Runtime::new(RuntimeConfig { deploy: limits, ..RuntimeConfig::default() }).expect("runtime");
    refused_by(&small, &example("hostile"), "module_too_large", &["over the limit of 100"]);

    let big_memory = wat(&format!(r#"(module (memory (export "memory") 1 8192) {ACTION})"#));
    refused(&big_memory, "memory_too_large", &["maximum", "536870912 bytes"]);
    let big_minimum = wat(&format!(r#"(module (memory (export "memory") 8192) {ACTION})"#));
    refused(&big_minimum, "memory_too_large", &["minimum"]);
    let big_table = wat(&format!(r#"(module (memory (export "memory") 1) (table 10 1000000 funcref) {ACTION})"#));
    refused(&big_table, "table_too_large", &["maximum", "1000000"]);
}

#[test]
fn refuses_modules_too_complex_to_compile_cheaply() {
    let limits = DeployLimits { max_functions: 3, max_locals: 10, ..DeployLimits::default() };
    let strict = Runtime::new(RuntimeConfig { deploy: limits, ..RuntimeConfig::default() }).expect("runtime");
    let many = (0..5).map(|i| format!(r#"(func (export "a{i}") (result i32) i32.const 0)"#)).collect::<String>();
    refused_by(
        &strict,
        &wat(&format!(r#"(module (memory (export "memory") 1) {many})"#)),
        "module_too_complex",
        &["5 functions"],
    );
    let locals =
        r#"(func (export "start") (result i32) (local i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64) i32.const 0)"#;
    refused_by(
        &strict,
        &wat(&format!(r#"(module (memory (export "memory") 1) {locals})"#)),
        "module_too_complex",
        &["12 locals"],
    );
}

#[test]
fn discovers_actions_from_exports() {
    let app = runtime().deploy(&example("ivr_menu")).expect("deploys").app;
    assert_eq!(app.info().actions, ["choice", "menu", "menu_timeout", "start"]);
    assert!(!app.info().wasi);
    assert!(app.info().imports.iter().all(|i| i.module == "turnstile"));
}

#[test]
fn compiles_each_module_once_also_across_runtimes_sharing_a_cache() {
    let dir = std::env::temp_dir().join(format!("turnstile-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || RuntimeConfig {
        engine: EngineConfig { cache_dir: Some(dir.clone()), pool_instances: 4, ..EngineConfig::default() },
        ..RuntimeConfig::default()
    };
    let bytes = example("order_bot");

    let first = Runtime::new(config()).expect("runtime");
    let held = first.deploy(&bytes).expect("deploys");
    assert_eq!(held.source, CompileSource::Compiled);
    assert_eq!(first.deploy(&bytes).expect("deploys").source, CompileSource::AlreadyDeployed);
    assert_eq!(first.compile_stats().compiled, 1);
    // A module no one holds is kept until it has been idle long enough, then evicted from
    // memory (compiled code and all).
    drop(held);
    assert_eq!(first.evict_idle(std::time::Duration::from_secs(60)), 0);
    assert_eq!(first.evict_idle(std::time::Duration::ZERO), 1);
    assert_eq!(first.compile_stats().loaded, 0);
    assert_eq!(first.deploy(&bytes).expect("deploys").source, CompileSource::DiskCache);
    drop(first);

    // A new runtime (as after a restart) finds the compiled code on disk.
    let second = Runtime::new(config()).expect("runtime");
    let deployment = second.deploy(&bytes).expect("deploys");
    assert_eq!(deployment.source, CompileSource::DiskCache);
    assert_eq!(second.compile_stats().compiled, 0);
    drop(deployment);
    assert_eq!(second.compile_stats().disk_cache, 1);

    // Other bytes do compile.
    assert_eq!(second.deploy(&example("ivr_menu")).expect("deploys").source, CompileSource::Compiled);
    let _ = std::fs::remove_dir_all(&dir);
}
