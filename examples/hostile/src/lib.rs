//! # hostile: a tenant that misbehaves on purpose
//!
//! Shows (and lets the host's tests check) what the sandbox does with a script that attacks it:
//! every action but `ok` breaks a rule and must end as a failed action of the right kind, while
//! the host, and other sessions, carry on. `ok` proves the same module still works.
//!
//! | action | what it does | expected failure |
//! |---|---|---|
//! | `spin` | loops for ever | fuel / wall time |
//! | `memory_bomb` | allocates and touches 1 MiB blocks for ever | memory limit |
//! | `deep_recursion` | recurses without bound | stack overflow |
//! | `huge_output` | says a 16 MiB message | output limit (or fuel, building it) |
//! | `trap` | panics with "hostile: deliberate panic" | trap, with the message logged |
//! | `bad_pointer` | calls `emit` with a pointer outside memory | ABI misuse |
//! | `bad_next` | goes to an action that does not exist | bad next step |
//! | `host_burner` | asks the host for 64 KiB of random bytes, for ever | fuel (host calls are charged) |
//! | `state_reader` | stores a 64 KiB state, then reads it back, for ever | fuel |
//! | `kv_reader` | looks up a key in the tenant's key-value space, for ever | fuel |
//! | `log_flood` | logs 16 KiB lines for ever (past the log budget they are dropped, still charged) | fuel |
//! | `sleeper` | asks WASI `poll_oneoff` to sleep for 2^64 ns (584 years) | deadline, at once |
//! | `napper` | sleeps 900 ms in `poll_oneoff`, just inside the default 1 s deadline | none: charged the time it slept |
//! | `ok` | says "still alive" | none |
//!
//! Build and run:
//!
//! ```sh
//! cargo build -p hostile --target wasm32-unknown-unknown --release
//! cargo run -p turnstile -- run target/wasm32-unknown-unknown/release/hostile.wasm
//! ```
//!
//! Do not call these actions natively (for example from a unit test): they do exactly what
//! they say.

#![cfg_attr(
    target_arch = "wasm32",
    expect(unsafe_code, reason = "bad_pointer calls a raw host import with a bad pointer, on purpose")
)]

use core::hint::black_box;
use turnstile_sdk::{Ctx, Next, action};

/// Loops for ever; `black_box` keeps the optimiser from proving the loop useless.
#[action]
pub fn spin(_ctx: &mut Ctx) -> Next {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks and keeps them all, for ever. Each allocation grows the linear
/// memory; nothing is written, so the bomb costs almost no fuel and only the memory limit stops it.
#[action]
pub fn memory_bomb(_ctx: &mut Ctx) -> Next {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(Vec::with_capacity(1 << 20)));
    }
}

/// Non-tail recursion: the result of the call is used after it returns, so it cannot become
/// a loop, and nothing takes a local's address, so each frame stays in wasm locals (the native
/// stack of the engine) rather than the linear-memory shadow stack.
#[inline(never)]
fn down(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    down(n + 1).rotate_left(1) ^ n
}

/// Recurses without bound.
#[action]
pub fn deep_recursion(_ctx: &mut Ctx) -> Next {
    let depth = down(black_box(0));
    Next::done_with(&depth)
}

/// Tries to emit one 2 MiB output event through `say` (32 times the default output limit, and
/// small enough that escaping it for JSON stays within the default fuel).
#[action]
pub fn huge_output(ctx: &mut Ctx) -> Next {
    let text = "x".repeat(black_box(2 << 20));
    ctx.say(&text);
    Next::done()
}

/// Panics; the SDK logs the message before the trap.
#[action]
pub fn trap(_ctx: &mut Ctx) -> Next {
    panic!("hostile: deliberate panic");
}

/// Asks the host to read 4 KiB at 0x7FFF_FFF0, far outside this module's memory.
#[action]
pub fn bad_pointer(_ctx: &mut Ctx) -> Next {
    emit_raw(black_box(0x7FFF_FFF0), 4096);
    Next::done()
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "turnstile")]
unsafe extern "C" {
    /// The ABI's `emit`, under another Rust name so it cannot clash with the SDK's declaration.
    #[link_name = "emit"]
    fn raw_emit(src: i32, len: i32);
    /// The ABI's `state_write` and `state_read`, called directly to loop on them.
    #[link_name = "state_write"]
    fn raw_state_write(src: *const u8, len: i32);
    #[link_name = "state_read"]
    fn raw_state_read(dst: *mut u8);
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// WASI preview 1's `poll_oneoff`: waits for the first of `n` subscriptions.
    fn poll_oneoff(subscriptions: *const u8, events: *mut u8, n: i32, nevents: *mut i32) -> i32;
}

/// Sleeps `nanos` in WASI `poll_oneoff` (one relative clock subscription on the monotonic clock).
#[cfg(target_arch = "wasm32")]
fn wasi_sleep(nanos: u64) -> i32 {
    // Subscription: userdata u64, tag u8 at 8 (0 = clock), clock id u32 at 16 (1 = monotonic),
    // timeout u64 at 24, precision u64 at 32, flags u16 at 40 (0 = relative).
    let mut subscription = [0u8; 48];
    subscription[16] = 1;
    subscription[24..32].copy_from_slice(&nanos.to_le_bytes());
    let mut event = [0u8; 32];
    let mut count = 0i32;
    // SAFETY: the host reads 48 bytes of `subscription` and writes at most one 32-byte event
    // into `event` and the count into `count`, all live locals of this frame.
    unsafe { poll_oneoff(subscription.as_ptr(), event.as_mut_ptr(), 1, &mut count) }
}

#[cfg(not(target_arch = "wasm32"))]
fn wasi_sleep(_nanos: u64) -> i32 {
    panic!("sleeping in the host only means something inside a Wasm host");
}

/// Writes a 64 KiB state, then reads it back for ever.
#[cfg(target_arch = "wasm32")]
fn read_state_forever() -> ! {
    let mut state = vec![7u8; 64 << 10];
    // SAFETY: the host reads `state.len()` bytes of the live vector, then writes exactly as many
    // (the state it holds) back into it.
    unsafe { raw_state_write(state.as_ptr(), 64 << 10) };
    loop {
        // SAFETY: the state is the 64 KiB just written, and `state` holds 64 KiB.
        unsafe { raw_state_read(black_box(state.as_mut_ptr())) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn read_state_forever() -> ! {
    panic!("state_reader only means something inside a Wasm host");
}

/// Calls the ABI's `emit` with whatever pointer and length it is given.
#[cfg(target_arch = "wasm32")]
fn emit_raw(ptr: i32, len: i32) {
    // SAFETY: none: this is deliberately hostile. The host must bounds-check the range and trap;
    // a correct host never touches memory outside the guest's, so it cannot corrupt this module.
    unsafe { raw_emit(ptr, len) }
}

/// Natively there is no host to attack.
#[cfg(not(target_arch = "wasm32"))]
fn emit_raw(_ptr: i32, _len: i32) {
    panic!("bad_pointer only means something inside a Wasm host");
}

/// Goes to an action this app does not have.
#[action]
pub fn bad_next(_ctx: &mut Ctx) -> Next {
    Next::goto("no_such_action")
}

/// Asks the host for random bytes in a loop: each call is host work fuel alone would not see.
#[action]
pub fn host_burner(ctx: &mut Ctx) -> Next {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        ctx.random_bytes(black_box(&mut buf));
    }
}

/// Reads its (64 KiB) state back from the host in a loop.
#[action]
pub fn state_reader(_ctx: &mut Ctx) -> Next {
    read_state_forever()
}

/// Looks up a key in the store in a loop.
#[action]
pub fn kv_reader(ctx: &mut Ctx) -> Next {
    loop {
        black_box(ctx.kv_get(black_box("balance:1000")));
    }
}

/// Logs 16 KiB lines in a loop: past the action's log budget they are dropped, but still charged.
#[action]
pub fn log_flood(ctx: &mut Ctx) -> Next {
    let line = "x".repeat(16 << 10);
    loop {
        ctx.log(turnstile_sdk::Level::Info, black_box(&line));
    }
}

/// Asks to sleep 2^64 - 1 ns: far past any deadline.
#[action]
pub fn sleeper(_ctx: &mut Ctx) -> Next {
    wasi_sleep(black_box(u64::MAX));
    Next::done()
}

/// Sleeps 900 ms: allowed, just inside the default deadline, and charged as that much fuel.
#[action]
pub fn napper(ctx: &mut Ctx) -> Next {
    let status = wasi_sleep(black_box(900_000_000));
    ctx.say(format!("slept (poll_oneoff returned {status})"));
    Next::done()
}

/// Works: proves the module is still usable after the others fail.
#[action]
pub fn ok(ctx: &mut Ctx) -> Next {
    ctx.say("still alive");
    Next::done()
}
