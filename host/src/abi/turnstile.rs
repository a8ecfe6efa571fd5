//! The `turnstile` import module: the session's input and state, outputs, the next step, the
//! tenant's key-value space, logging, the clock and random bytes. Each import is charged (its
//! [`Charge`]) before it does its work.

use super::{
    ActionCtx, Charge, ImportTable, LogLevel, burn_bytes, guest_range, host_call, length, split, waiting_host_call,
};
use crate::failure::FailureKind;
use crate::json::{MAX_OUTPUT_DEPTH, text_depth};
use crate::session::Next;
use wasmtime::{Caller, Linker, ValType};

/// The import module of the ABI.
pub(crate) const MODULE: &str = "turnstile";

/// Largest next-step document a guest may pass.
const MAX_NEXT_BYTES: usize = 4 << 10;
/// Largest `random` request.
const MAX_RANDOM_BYTES: usize = 64 << 10;

/// The `turnstile` imports and their signatures: what deploy checks a module's imports against.
/// A unit test keeps this table and the linker in step.
pub(crate) const IMPORTS: ImportTable = {
    use ValType::{I32, I64};
    &[
        ("input_len", &[], &[I32]),
        ("input_read", &[I32], &[]),
        ("state_len", &[], &[I32]),
        ("state_read", &[I32], &[]),
        ("state_write", &[I32, I32], &[]),
        ("emit", &[I32, I32], &[]),
        ("next", &[I32, I32], &[]),
        ("kv_get", &[I32, I32], &[I32]),
        ("kv_read", &[I32], &[]),
        ("kv_set", &[I32, I32, I32, I32], &[]),
        ("log", &[I32, I32, I32], &[]),
        ("now_ms", &[], &[I64]),
        ("random", &[I32, I32], &[]),
    ]
};

// The charges, calibrated with `turnstile bench --imports` (fuel ≈ the CPU of that much wasm).
pub(crate) const INPUT_LEN: Charge = Charge { import: "turnstile::input_len", base: 130, per_kib: 0 };
pub(crate) const INPUT_READ: Charge = Charge { import: "turnstile::input_read", base: 185, per_kib: 150 };
pub(crate) const STATE_LEN: Charge = Charge { import: "turnstile::state_len", base: 125, per_kib: 0 };
pub(crate) const STATE_READ: Charge = Charge { import: "turnstile::state_read", base: 185, per_kib: 150 };
pub(crate) const STATE_WRITE: Charge = Charge { import: "turnstile::state_write", base: 500, per_kib: 150 };
pub(crate) const EMIT: Charge = Charge { import: "turnstile::emit", base: 750, per_kib: 3000 };
pub(crate) const NEXT: Charge = Charge { import: "turnstile::next", base: 800, per_kib: 3000 };
pub(crate) const KV_GET: Charge = Charge { import: "turnstile::kv_get", base: 18000, per_kib: 300 };
pub(crate) const KV_READ: Charge = Charge { import: "turnstile::kv_read", base: 250, per_kib: 200 };
pub(crate) const KV_SET: Charge = Charge { import: "turnstile::kv_set", base: 900, per_kib: 300 };
pub(crate) const LOG: Charge = Charge { import: "turnstile::log", base: 250, per_kib: 2000 };
pub(crate) const NOW_MS: Charge = Charge { import: "turnstile::now_ms", base: 375, per_kib: 0 };
pub(crate) const RANDOM: Charge = Charge { import: "turnstile::random", base: 350, per_kib: 1050 };

/// Copies `len` bytes from guest memory at `ptr` (charged), after checking the range and the limit.
fn read(
    caller: &mut Caller<'_, ActionCtx>,
    charge: &Charge,
    (ptr, len): (i32, i32),
    limit: usize,
    over: FailureKind,
) -> wasmtime::Result<Vec<u8>> {
    let (mem, ctx) = split(caller)?;
    let range = guest_range(ctx, mem.len(), (ptr, len), limit, over, charge.import)?;
    burn_bytes(caller, charge, range.len())?;
    let (mem, _) = split(caller)?;
    Ok(mem[range].to_vec())
}

/// Writes the bytes `pick` selects from the context into guest memory at `dst` (charged, checked).
fn write(
    caller: &mut Caller<'_, ActionCtx>,
    charge: &Charge,
    dst: i32,
    pick: fn(&ActionCtx) -> Option<&[u8]>,
) -> wasmtime::Result<()> {
    let (mem, ctx) = split(caller)?;
    let Some(len) = pick(ctx).map(<[u8]>::len) else {
        let message = format!("{}: nothing to read (call kv_get first)", charge.import);
        return Err(ctx.violate(FailureKind::AbiMisuse, message));
    };
    let range =
        guest_range(ctx, mem.len(), (dst, length("read", len)), usize::MAX, FailureKind::AbiMisuse, charge.import)?;
    burn_bytes(caller, charge, len)?;
    let (mem, ctx) = split(caller)?;
    if let Some(bytes) = pick(ctx) {
        mem[range].copy_from_slice(bytes);
    }
    Ok(())
}

fn utf8(ctx: &mut ActionCtx, bytes: Vec<u8>, what: &str) -> wasmtime::Result<String> {
    String::from_utf8(bytes).map_err(|_| ctx.violate(FailureKind::AbiMisuse, format!("{what}: bytes are not UTF-8")))
}

/// Registers the `turnstile` imports.
pub(crate) fn add_to_linker(linker: &mut Linker<ActionCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "input_len", |mut caller: Caller<'_, ActionCtx>| {
        host_call(&mut caller, &INPUT_LEN, |caller| Ok(length("input", caller.data().input.len())))
    })?;
    linker.func_wrap(MODULE, "input_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        host_call(&mut caller, &INPUT_READ, |caller| write(caller, &INPUT_READ, dst, |c| Some(&c.input[..])))
    })?;
    linker.func_wrap(MODULE, "state_len", |mut caller: Caller<'_, ActionCtx>| {
        host_call(&mut caller, &STATE_LEN, |caller| Ok(length("state", caller.data().current_state().len())))
    })?;
    linker.func_wrap(MODULE, "state_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        host_call(&mut caller, &STATE_READ, |caller| write(caller, &STATE_READ, dst, |c| Some(c.current_state())))
    })?;
    linker.func_wrap(MODULE, "state_write", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        host_call(&mut caller, &STATE_WRITE, |caller| {
            let limit = caller.data().limits.max_state_bytes;
            let state = read(caller, &STATE_WRITE, (src, len), limit, FailureKind::StateLimit)?;
            caller.data_mut().new_state = Some(state);
            Ok(())
        })
    })?;
    linker.func_wrap(MODULE, "emit", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        host_call(&mut caller, &EMIT, |caller| {
            let ctx = caller.data_mut();
            if ctx.outputs.len() >= ctx.limits.max_outputs {
                let message = format!("emit: more than {} outputs in one action", ctx.limits.max_outputs);
                return Err(ctx.violate(FailureKind::OutputLimit, message));
            }
            let room = ctx.limits.max_output_bytes.saturating_sub(ctx.output_bytes);
            let bytes = read(caller, &EMIT, (src, len), room, FailureKind::OutputLimit)?;
            let ctx = caller.data_mut();
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                let message = format!("emit: the output is not one JSON value: {e}");
                return Err(ctx.violate(FailureKind::AbiMisuse, message));
            }
            let depth = text_depth(&bytes);
            if depth > MAX_OUTPUT_DEPTH {
                let message =
                    format!("emit: the output nests {depth} levels deep, over the limit of {MAX_OUTPUT_DEPTH}");
                return Err(ctx.violate(FailureKind::OutputLimit, message));
            }
            let text = utf8(ctx, bytes, "emit")?;
            ctx.output_bytes += text.len();
            ctx.outputs.push(text);
            Ok(())
        })
    })?;
    linker.func_wrap(MODULE, "next", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        host_call(&mut caller, &NEXT, |caller| {
            let bytes = read(caller, &NEXT, (src, len), MAX_NEXT_BYTES, FailureKind::BadNext)?;
            let ctx = caller.data_mut();
            match Next::parse(&bytes, &ctx.actions) {
                Ok(next) => {
                    ctx.next = Some(next);
                    Ok(())
                }
                Err(message) => Err(ctx.violate(FailureKind::BadNext, message)),
            }
        })
    })?;
    linker.func_wrap(MODULE, "kv_get", |mut caller: Caller<'_, ActionCtx>, key: i32, key_len: i32| {
        waiting_host_call(&mut caller, &KV_GET, |caller| {
            let limit = caller.data().limits.max_kv_key_bytes;
            let key = read(caller, &KV_GET, (key, key_len), limit, FailureKind::AbiMisuse)?;
            let ctx = caller.data_mut();
            let key = utf8(ctx, key, "kv_get key")?;
            ctx.kv_found = match ctx.kv_writes.get(&key) {
                Some(pending) => Some(pending.clone()),
                None => ctx.kv.kv_get(&key),
            };
            let found = ctx.kv_found.as_ref().map(Vec::len);
            // The value was looked up and copied out of the store: charge its bytes too.
            burn_bytes(caller, &KV_GET, found.unwrap_or(0))?;
            Ok(found.map_or(-1, |len| length("kv value", len)))
        })
    })?;
    linker.func_wrap(MODULE, "kv_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        host_call(&mut caller, &KV_READ, |caller| write(caller, &KV_READ, dst, |c| c.kv_found.as_deref()))
    })?;
    linker.func_wrap(
        MODULE,
        "kv_set",
        |mut caller: Caller<'_, ActionCtx>, key: i32, key_len: i32, val: i32, val_len: i32| {
            host_call(&mut caller, &KV_SET, |caller| {
                let limits = caller.data().limits.clone();
                let key = read(caller, &KV_SET, (key, key_len), limits.max_kv_key_bytes, FailureKind::StateLimit)?;
                let room = limits.max_kv_write_bytes.saturating_sub(caller.data().kv_write_bytes + key.len());
                let value = read(caller, &KV_SET, (val, val_len), room, FailureKind::StateLimit)?;
                let ctx = caller.data_mut();
                let key = utf8(ctx, key, "kv_set key")?;
                ctx.kv_write_bytes += key.len() + value.len();
                ctx.kv_writes.insert(key, value);
                Ok(())
            })
        },
    )?;
    linker.func_wrap(MODULE, "log", |mut caller: Caller<'_, ActionCtx>, level: i32, src: i32, len: i32| {
        host_call(&mut caller, &LOG, |caller| {
            let limit = caller.data().limits.max_log_bytes;
            if caller.data().log_bytes >= limit {
                // Past the budget the line is dropped: checked, and charged its base, not copied.
                let (mem, ctx) = split(caller)?;
                guest_range(ctx, mem.len(), (src, len), limit, FailureKind::AbiMisuse, LOG.import)?;
                return Ok(());
            }
            let bytes = read(caller, &LOG, (src, len), limit, FailureKind::AbiMisuse)?;
            let level = match level {
                i32::MIN..=0 => LogLevel::Trace,
                1 => LogLevel::Debug,
                2 => LogLevel::Info,
                3 => LogLevel::Warn,
                _ => LogLevel::Error,
            };
            caller.data_mut().push_log(level, String::from_utf8_lossy(&bytes).into_owned());
            Ok(())
        })
    })?;
    linker.func_wrap(MODULE, "now_ms", |mut caller: Caller<'_, ActionCtx>| {
        host_call(&mut caller, &NOW_MS, |_| Ok(i64::try_from(crate::session::now_ms()).unwrap_or(i64::MAX)))
    })?;
    linker.func_wrap(MODULE, "random", |mut caller: Caller<'_, ActionCtx>, dst: i32, len: i32| {
        host_call(&mut caller, &RANDOM, |caller| {
            let (mem, ctx) = split(caller)?;
            let range = guest_range(ctx, mem.len(), (dst, len), MAX_RANDOM_BYTES, FailureKind::AbiMisuse, "random")?;
            burn_bytes(caller, &RANDOM, range.len())?;
            let (mem, ctx) = split(caller)?;
            ctx.fill_random(&mut mem[range]);
            Ok(())
        })
    })?;
    Ok(())
}
