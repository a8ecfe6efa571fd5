//! What the fuzz targets share: one runtime (built once per process), the guest modules they
//! drive, and a host on a fresh in-memory store.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use turnstile::{App, Host, HostConfig, Limits, MemoryKv, Runtime, RuntimeConfig, Store};

/// Fuel measured once, so that a runtime or host starts without measuring it again.
const FUEL_PER_SECOND: u64 = 500_000_000;

/// Limits that keep each run short: a sleep or a loop ends in milliseconds.
pub fn limits() -> Arc<Limits> {
    Arc::new(Limits { fuel_per_action: 5_000_000, wall_time: Duration::from_millis(20), ..Limits::default() })
}

fn config() -> RuntimeConfig {
    let mut config = RuntimeConfig { limits: Limits::clone(&limits()), ..RuntimeConfig::default() };
    config.engine.pool_instances = 4;
    config.engine.fuel_per_second = Some(FUEL_PER_SECOND);
    config
}

/// The runtime the targets share.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(config()).expect("the runtime starts"))
}

/// A host with one worker on `store` (resuming what it holds).
pub fn host_on(store: Arc<dyn Store>) -> Result<Host, turnstile::Error> {
    Host::new(HostConfig { runtime: config(), workers: 1, store, ..HostConfig::default() })
}

/// Runs `action` of `app` once with `input`, to its end.
pub fn run(app: &Arc<App>, action: &str, input: &[u8]) -> turnstile::ActionOutcome {
    let kv: Arc<dyn turnstile::KvRead> = Arc::new(MemoryKv::default());
    runtime().run_action(app, action, input.to_vec(), Vec::new(), kv, &limits(), limits().fuel_per_action)
}

/// Every import of the ABI, with its parameter types (`i` = i32, `I` = i64) and whether it
/// returns a value.
const IMPORTS: &[(&str, &str, &str, bool)] = &[
    ("turnstile", "input_len", "", true),
    ("turnstile", "input_read", "i", false),
    ("turnstile", "state_len", "", true),
    ("turnstile", "state_read", "i", false),
    ("turnstile", "state_write", "ii", false),
    ("turnstile", "emit", "ii", false),
    ("turnstile", "next", "ii", false),
    ("turnstile", "kv_get", "ii", true),
    ("turnstile", "kv_read", "i", false),
    ("turnstile", "kv_set", "iiii", false),
    ("turnstile", "log", "iii", false),
    ("turnstile", "now_ms", "", true),
    ("turnstile", "random", "ii", false),
    ("wasi_snapshot_preview1", "args_get", "ii", true),
    ("wasi_snapshot_preview1", "args_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "environ_get", "ii", true),
    ("wasi_snapshot_preview1", "environ_sizes_get", "ii", true),
    ("wasi_snapshot_preview1", "clock_res_get", "ii", true),
    ("wasi_snapshot_preview1", "clock_time_get", "iIi", true),
    ("wasi_snapshot_preview1", "fd_close", "i", true),
    ("wasi_snapshot_preview1", "fd_fdstat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_fdstat_set_flags", "ii", true),
    ("wasi_snapshot_preview1", "fd_filestat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_prestat_get", "ii", true),
    ("wasi_snapshot_preview1", "fd_prestat_dir_name", "iii", true),
    ("wasi_snapshot_preview1", "fd_read", "iiii", true),
    ("wasi_snapshot_preview1", "fd_seek", "iIii", true),
    ("wasi_snapshot_preview1", "fd_sync", "i", true),
    ("wasi_snapshot_preview1", "fd_tell", "ii", true),
    ("wasi_snapshot_preview1", "fd_write", "iiii", true),
    ("wasi_snapshot_preview1", "poll_oneoff", "iiii", true),
    ("wasi_snapshot_preview1", "proc_exit", "i", false),
    ("wasi_snapshot_preview1", "random_get", "ii", true),
    ("wasi_snapshot_preview1", "sched_yield", "", true),
];

/// A guest that reads its input as calls — 20 bytes each: an op (which import, and whether its
/// pointers and lengths are taken raw or folded into the guest's 128 KiB), then four arguments —
/// and makes them in order. Its memory holds the input at 64 KiB.
pub fn abi_caller() -> &'static Arc<App> {
    static APP: OnceLock<Arc<App>> = OnceLock::new();
    APP.get_or_init(|| {
        let mut text = String::from("(module\n");
        for (n, (module, name, params, result)) in IMPORTS.iter().enumerate() {
            let params: Vec<&str> = params.chars().map(|c| if c == 'I' { "i64" } else { "i32" }).collect();
            let result = match (*result, *name) {
                (true, "now_ms") => "(result i64)",
                (true, _) => "(result i32)",
                _ => "",
            };
            text.push_str(&format!("(import \"{module}\" \"{name}\" (func $f{n} (param {}) {result}))\n", params.join(" ")));
        }
        text.push_str("(memory (export \"memory\") 2)\n");
        text.push_str(
            "(func (export \"start\") (result i32) (local $p i32) (local $end i32) (local $op i32) (local $mask i32)
               (local $a i32) (local $b i32) (local $c i32) (local $d i32)
               (local.set $end (call $f0))
               (if (i32.gt_u (local.get $end) (i32.const 65536)) (then (local.set $end (i32.const 65536))))
               (call $f1 (i32.const 65536))
               (local.set $p (i32.const 65536))
               (local.set $end (i32.add (local.get $end) (i32.const 65536)))
               (block $done (loop $next
                 (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const 20)) (local.get $end)))
                 (local.set $op (i32.load (local.get $p)))
                 (local.set $mask (select (i32.const -1) (i32.const 0x1ffff) (i32.and (local.get $op) (i32.const 0x100))))
                 (local.set $a (i32.and (i32.load offset=4 (local.get $p)) (local.get $mask)))
                 (local.set $b (i32.and (i32.load offset=8 (local.get $p)) (local.get $mask)))
                 (local.set $c (i32.and (i32.load offset=12 (local.get $p)) (local.get $mask)))
                 (local.set $d (i32.and (i32.load offset=16 (local.get $p)) (local.get $mask)))
                 (local.set $p (i32.add (local.get $p) (i32.const 20)))\n",
        );
        // A block per import, dispatched by br_table on op mod the number of imports.
        let count = IMPORTS.len();
        for n in (0..count).rev() {
            text.push_str(&format!("(block $b{n}\n"));
        }
        let targets: Vec<String> = (0..count).map(|n| format!("$b{n}")).collect();
        text.push_str(&format!(
            "(br_table {} (i32.rem_u (i32.and (local.get $op) (i32.const 0xff)) (i32.const {count})))\n",
            targets.join(" ")
        ));
        for (n, (_, _, params, result)) in IMPORTS.iter().enumerate() {
            text.push_str(")\n");
            let args: Vec<String> = params
                .chars()
                .zip(["$a", "$b", "$c", "$d"])
                .map(|(kind, arg)| {
                    if kind == 'I' { format!("(i64.extend_i32_u (local.get {arg}))") } else { format!("(local.get {arg})") }
                })
                .collect();
            let call = format!("(call $f{n} {})", args.join(" "));
            text.push_str(&if *result { format!("(drop {call})") } else { call });
            text.push_str("\n(br $next)\n");
        }
        text.push_str(")) i32.const 0))");
        let bytes = wat::parse_str(&text).expect("the ABI caller assembles");
        runtime().deploy(&bytes).expect("the ABI caller deploys").app
    })
}

/// A guest whose `start` hands its input to `next` as its next step (its other actions, `other`
/// and `later`, give the step something to name).
pub fn next_step_guest() -> &'static Arc<App> {
    static APP: OnceLock<Arc<App>> = OnceLock::new();
    APP.get_or_init(|| {
        let text = r#"(module
            (import "turnstile" "input_len" (func $input_len (result i32)))
            (import "turnstile" "input_read" (func $input_read (param i32)))
            (import "turnstile" "next" (func $next (param i32 i32)))
            (memory (export "memory") 2)
            (func (export "start") (result i32) (call $input_read (i32.const 0)) (call $next (i32.const 0) (call $input_len)) i32.const 0)
            (func (export "other") (result i32) i32.const 0)
            (func (export "later") (result i32) i32.const 0))"#;
        runtime().deploy(&wat::parse_str(text).expect("assembles")).expect("deploys").app
    })
}

/// A trivial app's bytes (actions `start` and `other`), for a host to deploy.
pub fn trivial_app_bytes() -> Vec<u8> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "start") (result i32) i32.const 0)
             (func (export "other") (result i32) i32.const 0))"#,
    )
    .expect("assembles")
}
