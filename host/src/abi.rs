//! Host side of guest ABI v1: the `turnstile` imports, and the only code that touches guest memory.
//!
//! Every pointer is bounds-checked against the guest's exported `memory`; every length is checked
//! against its limit *before* the host allocates; nothing here can panic on guest input. A guest
//! that breaks a rule gets a trap, and the rule it broke is recorded in [`ActionCtx::violation`] so
//! the failure carries the precise kind (`abi_misuse`, `output_limit`, …) rather than a bare trap.
//!
//! Nothing an action writes leaves this context until the action has completed: outputs, state
//! and key-value writes are collected here and handed to the session as one set of effects.

use crate::failure::FailureKind;
use crate::limits::Limits;
use crate::session::Next;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, ValType};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// The import module of the ABI.
pub(crate) const MODULE: &str = "turnstile";
/// The import module a `wasm32-wasip1` build may also use.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Largest next-step document a guest may pass.
const MAX_NEXT_BYTES: usize = 4 << 10;
/// Largest `random` request.
const MAX_RANDOM_BYTES: usize = 64 << 10;

/// The `turnstile` imports and their signatures: what deploy checks a module's imports against.
/// A unit test keeps this table and the linker in step.
pub(crate) const IMPORTS: &[(&str, &[ValType], &[ValType])] = {
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

/// Read access to a tenant's key-value space, as of the start of an action.
pub trait KvRead: Send + Sync {
    /// The value under `key`, if any.
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;
}

/// How important a guest log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Level 0.
    Trace,
    /// Level 1.
    Debug,
    /// Level 2.
    Info,
    /// Level 3.
    Warn,
    /// Level 4 (and above).
    Error,
    /// Captured stdout/stderr of a `wasm32-wasip1` module.
    Stdio,
}

/// One line of a session's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// Its text (invalid UTF-8 replaced).
    pub message: String,
}

/// The store data of one action: what the guest may read, what it has written so far, and the
/// limits it runs under.
pub(crate) struct ActionCtx {
    pub(crate) memory: Option<Memory>,
    actions: Arc<HashSet<String>>,
    limits: Arc<Limits>,
    input: Vec<u8>,
    pub(crate) state: Vec<u8>,
    pub(crate) outputs: Vec<String>,
    output_bytes: usize,
    pub(crate) next: Option<Next>,
    kv: Arc<dyn KvRead>,
    kv_found: Option<Vec<u8>>,
    pub(crate) kv_writes: BTreeMap<String, Vec<u8>>,
    kv_write_bytes: usize,
    pub(crate) log: Vec<LogLine>,
    log_bytes: usize,
    rng: u64,
    /// The rule the guest broke, set just before the trap it causes.
    pub(crate) violation: Option<(FailureKind, String)>,
    wasi: Option<WasiP1Ctx>,
    stdio: Option<MemoryOutputPipe>,
}

/// What an action starts from.
pub(crate) struct ActionInput {
    pub(crate) actions: Arc<HashSet<String>>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) input: Vec<u8>,
    pub(crate) state: Vec<u8>,
    pub(crate) kv: Arc<dyn KvRead>,
}

impl ActionCtx {
    pub(crate) fn new(from: ActionInput) -> ActionCtx {
        ActionCtx {
            memory: None,
            actions: from.actions,
            limits: from.limits,
            input: from.input,
            state: from.state,
            outputs: Vec::new(),
            output_bytes: 0,
            next: None,
            kv: from.kv,
            kv_found: None,
            kv_writes: BTreeMap::new(),
            kv_write_bytes: 0,
            log: Vec::new(),
            log_bytes: 0,
            rng: seed(),
            violation: None,
            wasi: None,
            stdio: None,
        }
    }

    /// Records the rule broken and returns the error that traps the guest.
    fn violate(&mut self, kind: FailureKind, message: String) -> wasmtime::Error {
        let error = wasmtime::Error::msg(message.clone());
        self.violation = Some((kind, message));
        error
    }

    /// Appends a log line unless the action's log budget is spent (then one marker line says so).
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        let limit = self.limits.max_log_bytes;
        if self.log_bytes >= limit {
            return;
        }
        self.log_bytes += message.len();
        if self.log_bytes >= limit {
            self.log.push(LogLine { level: LogLevel::Warn, message: "log limit reached: later lines dropped".into() });
        } else {
            self.log.push(LogLine { level, message });
        }
    }

    /// The WASI context, built on first use: no files, no environment, no arguments, no network;
    /// stdout and stderr go to one bounded pipe that ends up in the session log.
    fn wasi(&mut self) -> &mut WasiP1Ctx {
        let (limit, stdio) = (self.limits.max_log_bytes, &mut self.stdio);
        self.wasi.get_or_insert_with(|| {
            let pipe = MemoryOutputPipe::new(limit);
            *stdio = Some(pipe.clone());
            WasiCtxBuilder::new().stdout(pipe.clone()).stderr(pipe).build_p1()
        })
    }

    /// Moves what a wasip1 module printed into the log.
    pub(crate) fn drain_stdio(&mut self) {
        if let Some(pipe) = self.stdio.take() {
            let text = pipe.contents();
            for line in String::from_utf8_lossy(&text).lines() {
                self.log.push(LogLine { level: LogLevel::Stdio, message: line.to_owned() });
            }
        }
    }

    /// The last error-level line the guest logged (the SDK logs its panic message there).
    pub(crate) fn last_error_log(&self) -> Option<&str> {
        self.log.iter().rev().find(|l| l.level == LogLevel::Error).map(|l| l.message.as_str())
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: not for secrets, enough for a script's coin flips and ids.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

impl ResourceLimiter for ActionCtx {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            let message =
                format!("memory would grow to {desired} bytes, over the limit of {} bytes", self.limits.memory_bytes);
            return Err(self.violate(FailureKind::MemoryLimit, message));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            let message =
                format!("a table would grow to {desired} elements, over the limit of {}", self.limits.table_elements);
            return Err(self.violate(FailureKind::MemoryLimit, message));
        }
        Ok(true)
    }
}

/// A guest pointer and length, checked: non-negative, inside memory, length within `limit`.
/// The limit is checked first, so a hostile length never reaches an allocation.
fn guest_range(
    ctx: &mut ActionCtx,
    memory_len: usize,
    ptr: i32,
    len: i32,
    limit: usize,
    what: &str,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let (Ok(start), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return Err(ctx.violate(FailureKind::AbiMisuse, format!("{what}: negative pointer or length ({ptr}, {len})")));
    };
    if len > limit {
        let kind = match what {
            "emit" => FailureKind::OutputLimit,
            "state_write" | "kv_set" => FailureKind::StateLimit,
            "next" => FailureKind::BadNext,
            _ => FailureKind::AbiMisuse,
        };
        return Err(ctx.violate(kind, format!("{what}: {len} bytes, over the limit of {limit}")));
    }
    match start.checked_add(len) {
        Some(end) if end <= memory_len => Ok(start..end),
        _ => Err(ctx.violate(
            FailureKind::AbiMisuse,
            format!("{what}: {len} bytes at {start:#x} are outside the guest's memory of {memory_len} bytes"),
        )),
    }
}

/// Borrows the guest's memory and the action context together.
fn split<'a>(caller: &'a mut Caller<'_, ActionCtx>) -> wasmtime::Result<(&'a mut [u8], &'a mut ActionCtx)> {
    match caller.data().memory {
        Some(memory) => Ok(memory.data_and_store_mut(caller)),
        None => Err(wasmtime::Error::msg("the guest called the host before its memory was known")),
    }
}

/// Copies `len` bytes from guest memory at `ptr`, after checking the range and the limit.
fn read(caller: &mut Caller<'_, ActionCtx>, ptr: i32, len: i32, limit: usize, what: &str) -> wasmtime::Result<Vec<u8>> {
    let (mem, ctx) = split(caller)?;
    let range = guest_range(ctx, mem.len(), ptr, len, limit, what)?;
    Ok(mem[range].to_vec())
}

/// Writes `bytes` (taken from the context by `pick`) into guest memory at `dst`, checked.
fn write(
    caller: &mut Caller<'_, ActionCtx>,
    dst: i32,
    what: &str,
    pick: fn(&ActionCtx) -> Option<&[u8]>,
) -> wasmtime::Result<()> {
    let (mem, ctx) = split(caller)?;
    let Some(len) = pick(ctx).map(<[u8]>::len) else {
        return Err(ctx.violate(FailureKind::AbiMisuse, format!("{what}: nothing to read (call kv_get first)")));
    };
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    let range = guest_range(ctx, mem.len(), dst, len, usize::MAX, what)?;
    if let Some(bytes) = pick(ctx) {
        mem[range].copy_from_slice(bytes);
    }
    Ok(())
}

fn length(what: &str, len: usize) -> i32 {
    // Every length handed to the guest is bounded by a limit far below i32::MAX.
    i32::try_from(len).unwrap_or_else(|_| {
        debug_assert!(false, "{what} length {len} exceeds i32");
        i32::MAX
    })
}

fn utf8(ctx: &mut ActionCtx, bytes: Vec<u8>, what: &str) -> wasmtime::Result<String> {
    String::from_utf8(bytes).map_err(|_| ctx.violate(FailureKind::AbiMisuse, format!("{what}: bytes are not UTF-8")))
}

/// Registers the `turnstile` imports and WASI preview 1 (for `wasm32-wasip1` modules).
pub(crate) fn add_to_linker(linker: &mut Linker<ActionCtx>) -> wasmtime::Result<()> {
    linker
        .func_wrap(MODULE, "input_len", |caller: Caller<'_, ActionCtx>| length("input", caller.data().input.len()))?;
    linker.func_wrap(MODULE, "input_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        write(&mut caller, dst, "input_read", |c| Some(&c.input))
    })?;
    linker
        .func_wrap(MODULE, "state_len", |caller: Caller<'_, ActionCtx>| length("state", caller.data().state.len()))?;
    linker.func_wrap(MODULE, "state_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        write(&mut caller, dst, "state_read", |c| Some(&c.state))
    })?;
    linker.func_wrap(MODULE, "state_write", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        let limit = caller.data().limits.max_state_bytes;
        let state = read(&mut caller, src, len, limit, "state_write")?;
        caller.data_mut().state = state;
        Ok(())
    })?;
    linker.func_wrap(MODULE, "emit", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        let ctx = caller.data_mut();
        if ctx.outputs.len() >= ctx.limits.max_outputs {
            let message = format!("emit: more than {} outputs in one action", ctx.limits.max_outputs);
            return Err(ctx.violate(FailureKind::OutputLimit, message));
        }
        let room = ctx.limits.max_output_bytes.saturating_sub(ctx.output_bytes);
        let bytes = read(&mut caller, src, len, room, "emit")?;
        let ctx = caller.data_mut();
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ctx.violate(FailureKind::AbiMisuse, format!("emit: the output is not one JSON value: {e}")));
        }
        let text = utf8(ctx, bytes, "emit")?;
        ctx.output_bytes += text.len();
        ctx.outputs.push(text);
        Ok(())
    })?;
    linker.func_wrap(MODULE, "next", |mut caller: Caller<'_, ActionCtx>, src: i32, len: i32| {
        let bytes = read(&mut caller, src, len, MAX_NEXT_BYTES, "next")?;
        let ctx = caller.data_mut();
        let next = match Next::parse(&bytes, &ctx.actions) {
            Ok(next) => next,
            Err(message) => return Err(ctx.violate(FailureKind::BadNext, message)),
        };
        ctx.next = Some(next);
        Ok(())
    })?;
    linker.func_wrap(MODULE, "kv_get", |mut caller: Caller<'_, ActionCtx>, key: i32, key_len: i32| {
        let limit = caller.data().limits.max_kv_key_bytes;
        let key = read(&mut caller, key, key_len, limit, "kv_get")?;
        let ctx = caller.data_mut();
        let key = utf8(ctx, key, "kv_get key")?;
        ctx.kv_found = match ctx.kv_writes.get(&key) {
            Some(pending) => Some(pending.clone()),
            None => ctx.kv.kv_get(&key),
        };
        Ok(ctx.kv_found.as_ref().map_or(-1, |v| length("kv value", v.len())))
    })?;
    linker.func_wrap(MODULE, "kv_read", |mut caller: Caller<'_, ActionCtx>, dst: i32| {
        write(&mut caller, dst, "kv_read", |c| c.kv_found.as_deref())
    })?;
    linker.func_wrap(
        MODULE,
        "kv_set",
        |mut caller: Caller<'_, ActionCtx>, key: i32, key_len: i32, val: i32, val_len: i32| {
            let limits = caller.data().limits.clone();
            let key = read(&mut caller, key, key_len, limits.max_kv_key_bytes, "kv_set")?;
            let room = limits.max_kv_write_bytes.saturating_sub(caller.data().kv_write_bytes + key.len());
            let value = read(&mut caller, val, val_len, room, "kv_set")?;
            let ctx = caller.data_mut();
            let key = utf8(ctx, key, "kv_set key")?;
            ctx.kv_write_bytes += key.len() + value.len();
            ctx.kv_writes.insert(key, value);
            Ok(())
        },
    )?;
    linker.func_wrap(MODULE, "log", |mut caller: Caller<'_, ActionCtx>, level: i32, src: i32, len: i32| {
        let limit = caller.data().limits.max_log_bytes;
        let bytes = read(&mut caller, src, len, limit, "log")?;
        let level = match level {
            i32::MIN..=0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        };
        caller.data_mut().push_log(level, String::from_utf8_lossy(&bytes).into_owned());
        Ok(())
    })?;
    linker.func_wrap(MODULE, "now_ms", || i64::try_from(crate::session::now_ms()).unwrap_or(i64::MAX))?;
    linker.func_wrap(MODULE, "random", |mut caller: Caller<'_, ActionCtx>, dst: i32, len: i32| {
        let (mem, ctx) = split(&mut caller)?;
        let range = guest_range(ctx, mem.len(), dst, len, MAX_RANDOM_BYTES, "random")?;
        for chunk in mem[range].chunks_mut(8) {
            let word = ctx.next_random().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    })?;
    wasmtime_wasi::p1::add_to_linker_sync(linker, ActionCtx::wasi)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_table_matches_the_linker() {
        let engine = wasmtime::Engine::default();
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker).expect("linker");
        let mut store = wasmtime::Store::new(
            &engine,
            ActionCtx::new(ActionInput {
                actions: Arc::default(),
                limits: Arc::default(),
                input: Vec::new(),
                state: Vec::new(),
                kv: Arc::new(NoKv),
            }),
        );
        let mut defined = 0;
        for (name, params, results) in IMPORTS {
            let func = linker.get(&mut store, MODULE, name).ok().and_then(wasmtime::Extern::into_func).expect(name);
            let ty = func.ty(&store);
            let got: Vec<String> = ty.params().map(|t| t.to_string()).collect();
            let want: Vec<String> = params.iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "params of {name}");
            let got: Vec<String> = ty.results().map(|t| t.to_string()).collect();
            let want: Vec<String> = results.iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "results of {name}");
            defined += 1;
        }
        let in_linker = linker.iter(&mut store).filter(|(module, _, _)| *module == MODULE).count();
        assert_eq!(defined, in_linker, "every `turnstile` import is in the table");
    }

    struct NoKv;
    impl KvRead for NoKv {
        fn kv_get(&self, _key: &str) -> Option<Vec<u8>> {
            None
        }
    }
}
