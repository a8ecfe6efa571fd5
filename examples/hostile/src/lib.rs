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

/// Works: proves the module is still usable after the others fail.
#[action]
pub fn ok(ctx: &mut Ctx) -> Next {
    ctx.say("still alive");
    Next::done()
}
