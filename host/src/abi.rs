//! Host side of guest ABI v1, and the only code that touches guest memory.
//!
//! - `abi/turnstile.rs`: the `turnstile` imports (input, state, outputs, next step, kv, log).
//! - `abi/wasi.rs`: the WASI preview 1 functions a `wasm32-wasip1` script may import, written
//!   here rather than taken from wasmtime-wasi, so that each is bounded and charged like the rest
//!   (an allow-list: deploy refuses any other WASI import, naming it).
//!
//! Every host call obeys three rules, because fuel only meters wasm instructions and the epoch
//! deadline cannot interrupt a thread inside the host:
//! 1. **Checked before allocated**: every pointer is bounds-checked against the guest's exported
//!    `memory` and every length against its limit before the host allocates or copies anything;
//!    nothing here can panic on guest input.
//! 2. **Charged in fuel**: a call costs a base plus a cost per KiB it copies, parses, generates or
//!    looks up ([`CHARGES`]), taken from the action's fuel *before* the work is done, so a loop of
//!    host calls burns fuel at the rate plain wasm of the same CPU cost would.
//! 3. **Bounded by the deadline**: no call blocks past the action's wall-clock deadline (a WASI
//!    sleep that would is refused as `deadline`), and a call that may wait (a sleep, a store
//!    look-up) ends the action if it returns past it. The time those calls wait is measured; the
//!    time of the others is their charge at the engine's fuel per second (reading the clock twice
//!    would cost more than most of them).
//!
//! A guest that breaks a rule gets a trap, and the rule it broke is recorded in
//! [`ActionCtx::violation`] so the failure carries its precise kind (`abi_misuse`, `output_limit`,
//! …) rather than a bare trap. Nothing an action writes leaves this context until the action has
//! completed: outputs, state and key-value writes are collected here and handed on as one set of
//! effects.

mod turnstile;
mod wasi;

use crate::failure::FailureKind;
use crate::limits::Limits;
use crate::session::Next;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, ValType};

pub(crate) use turnstile::{IMPORTS, MODULE};
pub(crate) use wasi::{IMPORTS as WASI_IMPORTS, MODULE as WASI_MODULE};

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

/// What one host call costs in fuel: `base` per call plus `per_kib` per KiB of bytes it copies,
/// parses, generates or looks up (rounded up). Calibrated so that a unit of fuel spent in the
/// host costs about the CPU time of one in wasm (`turnstile bench --imports` measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Charge {
    /// The import (`turnstile::emit`, `wasi_snapshot_preview1::fd_write`, …).
    pub import: &'static str,
    /// Fuel per call.
    pub base: u64,
    /// Fuel per KiB of data the call handles.
    pub per_kib: u64,
}

impl Charge {
    /// The fuel for a call that handles `bytes` bytes (on top of [`Charge::base`]).
    fn for_bytes(&self, bytes: usize) -> u64 {
        u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(self.per_kib).div_ceil(1024)
    }
}

/// Every import's charge: the `turnstile` imports, then the WASI functions.
pub const CHARGES: &[&Charge] = &[
    &turnstile::INPUT_LEN,
    &turnstile::INPUT_READ,
    &turnstile::STATE_LEN,
    &turnstile::STATE_READ,
    &turnstile::STATE_WRITE,
    &turnstile::EMIT,
    &turnstile::NEXT,
    &turnstile::KV_GET,
    &turnstile::KV_READ,
    &turnstile::KV_SET,
    &turnstile::LOG,
    &turnstile::NOW_MS,
    &turnstile::RANDOM,
    &wasi::ARGS_AND_ENV,
    &wasi::CLOCK,
    &wasi::FD,
    &wasi::FD_WRITE,
    &wasi::POLL_ONEOFF,
    &wasi::PROC_EXIT,
    &wasi::RANDOM_GET,
];

/// Which functions a linker provides: those of a synchronous run (where a sleep asks for the
/// action to be started again as a task) or those of a preemptible task (where a sleep parks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linking {
    /// For actions run synchronously within one slice.
    Sync,
    /// For actions run as preemptible tasks.
    Task,
}

/// How an action runs, as its host calls see it.
pub(crate) enum Mode {
    /// Synchronously, within one slice, since `started`.
    Sync,
    /// As a preemptible task, with its own clock.
    Task(Arc<ActionClock>),
}

/// A task's own time: how long it has run (and slept), and when it wants to be woken. Its
/// deadline is counted in it, not in the time it waited for a worker.
#[derive(Debug, Default)]
pub(crate) struct ActionClock {
    state: Mutex<ClockState>,
}

/// What [`ActionClock::pause`] found of the slice that ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paused {
    /// How long it ran.
    pub(crate) ran: Duration,
    /// When the action wants to be woken, if it went to sleep.
    pub(crate) sleeping_until: Option<Instant>,
    /// The time its host calls measured waiting.
    pub(crate) waited: Duration,
}

#[derive(Debug, Default)]
struct ClockState {
    active: Duration,
    /// The part of `active` it ran (not asleep).
    ran: Duration,
    /// Time its host calls measured waiting in the current slice (store look-ups).
    waited: Duration,
    running_since: Option<Instant>,
    sleeping_until: Option<Instant>,
}

impl ActionClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task's time so far: running and asleep.
    pub(crate) fn active(&self) -> Duration {
        let state = self.state();
        state.active + state.running_since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// The part of its time it ran (not asleep), up to now.
    pub(crate) fn ran(&self) -> Duration {
        let state = self.state();
        state.ran + state.running_since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// The action is about to sleep until `until` (it counts as its time).
    fn sleep_until(&self, until: Instant) {
        self.state().sleeping_until = Some(until);
    }

    /// A slice starts at `now`.
    pub(crate) fn resume(&self, now: Instant) {
        self.state().running_since = Some(now);
    }

    /// Ends a slice at `now`: its length, the wake time if the action went to sleep (the sleep
    /// is counted as its time at once), and the time its host calls waited in it.
    pub(crate) fn pause(&self, now: Instant) -> Paused {
        let mut state = self.state();
        let ran = state.running_since.take().map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        state.active += ran;
        state.ran += ran;
        let sleeping_until = state.sleeping_until.take();
        if let Some(until) = sleeping_until {
            state.active += until.saturating_duration_since(now);
        }
        Paused { ran, sleeping_until, waited: std::mem::take(&mut state.waited) }
    }
}

/// The store data of one action: what the guest may read, what it has written so far, the
/// limits it runs under, and what its host calls have cost.
pub(crate) struct ActionCtx {
    pub(crate) memory: Option<Memory>,
    actions: Arc<HashSet<String>>,
    limits: Arc<Limits>,
    input: Arc<[u8]>,
    /// The state the action started from.
    state: Arc<[u8]>,
    /// The state it wrote, if it did.
    pub(crate) new_state: Option<Vec<u8>>,
    pub(crate) outputs: Vec<String>,
    output_bytes: usize,
    pub(crate) next: Option<Next>,
    kv: Arc<dyn KvRead>,
    kv_found: Option<Vec<u8>>,
    pub(crate) kv_writes: BTreeMap<String, Vec<u8>>,
    kv_write_bytes: usize,
    pub(crate) log: Vec<LogLine>,
    log_bytes: usize,
    /// Captured stdout/stderr not yet ended by a newline.
    stdio_line: Vec<u8>,
    rng: u64,
    /// The rule the guest broke, set just before the trap it causes.
    pub(crate) violation: Option<(FailureKind, String)>,
    started: Instant,
    mode: Mode,
    /// A synchronous run asked to sleep: it must be started again as a task.
    wants_task: bool,
    /// Time measured inside host calls that wait (sleeps, store look-ups).
    pub(crate) host_time: Duration,
    /// Fuel charged by the other host calls (their time is this at the engine's fuel per second).
    pub(crate) host_fuel: u64,
}

/// What an action starts from.
pub(crate) struct ActionInput {
    pub(crate) actions: Arc<HashSet<String>>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) input: Arc<[u8]>,
    pub(crate) state: Arc<[u8]>,
    pub(crate) kv: Arc<dyn KvRead>,
}

impl ActionCtx {
    pub(crate) fn new(from: ActionInput, mode: Mode, started: Instant) -> ActionCtx {
        ActionCtx {
            memory: None,
            actions: from.actions,
            limits: from.limits,
            input: from.input,
            state: from.state,
            new_state: None,
            outputs: Vec::new(),
            output_bytes: 0,
            next: None,
            kv: from.kv,
            kv_found: None,
            kv_writes: BTreeMap::new(),
            kv_write_bytes: 0,
            log: Vec::new(),
            log_bytes: 0,
            stdio_line: Vec::new(),
            rng: seed(),
            violation: None,
            started,
            mode,
            wants_task: false,
            host_time: Duration::ZERO,
            host_fuel: 0,
        }
    }

    /// The time the action has used: since it started (synchronous), or its own clock (task).
    pub(crate) fn time_used(&self) -> Duration {
        match &self.mode {
            Mode::Sync => self.started.elapsed(),
            Mode::Task(clock) => clock.active(),
        }
    }

    /// Whether a synchronous run asked for what only a task can do (sleep).
    pub(crate) fn wants_task(&self) -> bool {
        self.wants_task
    }

    /// The session state as the action sees it now.
    fn current_state(&self) -> &[u8] {
        self.new_state.as_deref().unwrap_or(&self.state)
    }

    /// Records the rule broken and returns the error that traps the guest.
    fn violate(&mut self, kind: FailureKind, message: String) -> wasmtime::Error {
        let error = wasmtime::Error::msg(message.clone());
        self.violation = Some((kind, message));
        error
    }

    /// Appends a log line unless the action's log budget is spent (then one marker line says so).
    fn push_log(&mut self, level: LogLevel, message: String) {
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

    /// Takes bytes a wasip1 module wrote to stdout or stderr: each complete line becomes a log
    /// line (within the same budget as `log`); what is over the budget is dropped, not kept.
    fn push_stdio(&mut self, bytes: &[u8]) {
        let room = self.limits.max_log_bytes.saturating_sub(self.log_bytes + self.stdio_line.len());
        let mut rest = &bytes[..bytes.len().min(room)];
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            self.stdio_line.extend_from_slice(&rest[..newline]);
            let line = std::mem::take(&mut self.stdio_line);
            self.push_log(LogLevel::Stdio, String::from_utf8_lossy(&line).into_owned());
            rest = &rest[newline + 1..];
        }
        self.stdio_line.extend_from_slice(rest);
        if bytes.len() > room && self.log_bytes < self.limits.max_log_bytes {
            self.log_bytes = self.limits.max_log_bytes;
            self.log.push(LogLine { level: LogLevel::Warn, message: "log limit reached: later output dropped".into() });
        }
    }

    /// Moves what a wasip1 module printed without a final newline into the log.
    pub(crate) fn drain_stdio(&mut self) {
        if !self.stdio_line.is_empty() {
            let line = std::mem::take(&mut self.stdio_line);
            self.log_bytes = self.log_bytes.saturating_sub(line.len());
            self.push_log(LogLevel::Stdio, String::from_utf8_lossy(&line).into_owned());
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

    /// Fills `buf` with random bytes.
    fn fill_random(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_random().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_random().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
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

/// Runs one host call: charges its base cost first; `body` charges the per-byte part itself,
/// before doing the work. Its time in the host is counted as its charge at the engine's fuel
/// per second (the charges are calibrated to the CPU they take), without reading a clock.
fn host_call<R>(
    caller: &mut Caller<'_, ActionCtx>,
    charge: &Charge,
    body: impl FnOnce(&mut Caller<'_, ActionCtx>) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let before = caller.get_fuel()?;
    burn(caller, charge, charge.base)?;
    let result = body(caller);
    let charged = before.saturating_sub(caller.get_fuel().unwrap_or(0));
    caller.data_mut().host_fuel += charged;
    result
}

/// Runs a host call that may wait (a sleep, a store look-up): like [`host_call`], but its time
/// is measured, and it ends the action if it returns past the deadline.
fn waiting_host_call<R>(
    caller: &mut Caller<'_, ActionCtx>,
    charge: &Charge,
    body: impl FnOnce(&mut Caller<'_, ActionCtx>) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let entered = Instant::now();
    burn(caller, charge, charge.base)?;
    let result = body(caller);
    let ctx = caller.data_mut();
    let waited = entered.elapsed();
    ctx.host_time += waited;
    if let Mode::Task(clock) = &ctx.mode {
        clock.state().waited += waited;
    }
    if result.is_ok() && ctx.time_used() > ctx.limits.wall_time {
        let message = format!(
            "ran past its wall-clock limit of {:?} (in the host call `{}`)",
            ctx.limits.wall_time, charge.import
        );
        return Err(ctx.violate(FailureKind::Deadline, message));
    }
    result
}

/// Takes `fuel` from the action for work done in the host, or ends it `out_of_fuel`.
fn burn(caller: &mut Caller<'_, ActionCtx>, charge: &Charge, fuel: u64) -> wasmtime::Result<()> {
    let left = caller.get_fuel()?;
    match left.checked_sub(fuel) {
        Some(rest) => caller.set_fuel(rest),
        None => {
            caller.set_fuel(0)?;
            let limit = caller.data().limits.fuel_per_action;
            let message = format!(
                "burned all {limit} fuel of one action (the host call `{}` needed {fuel}, {left} was left)",
                charge.import
            );
            Err(caller.data_mut().violate(FailureKind::OutOfFuel, message))
        }
    }
}

/// Charges the per-byte part of a call for `bytes` bytes.
fn burn_bytes(caller: &mut Caller<'_, ActionCtx>, charge: &Charge, bytes: usize) -> wasmtime::Result<()> {
    burn(caller, charge, charge.for_bytes(bytes))
}

/// A guest pointer and length, checked: non-negative, inside memory, length within `limit`.
/// The limit is checked first, so a hostile length never reaches an allocation. `over` is the
/// failure kind of a length over the limit.
fn guest_range(
    ctx: &mut ActionCtx,
    memory_len: usize,
    (ptr, len): (i32, i32),
    limit: usize,
    over: FailureKind,
    what: &str,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let (Ok(start), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return Err(ctx.violate(FailureKind::AbiMisuse, format!("{what}: negative pointer or length ({ptr}, {len})")));
    };
    if len > limit {
        return Err(ctx.violate(over, format!("{what}: {len} bytes, over the limit of {limit}")));
    }
    in_memory(ctx, memory_len, start, len, what)
}

/// `len` bytes at `start`, if they are inside a memory of `memory_len` bytes.
fn in_memory(
    ctx: &mut ActionCtx,
    memory_len: usize,
    start: usize,
    len: usize,
    what: &str,
) -> wasmtime::Result<std::ops::Range<usize>> {
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

/// A length handed to the guest; every one is bounded by a limit far below `i32::MAX`.
fn length(what: &str, len: usize) -> i32 {
    i32::try_from(len).unwrap_or_else(|_| {
        debug_assert!(false, "{what} length {len} exceeds i32");
        i32::MAX
    })
}

/// Registers the `turnstile` imports and the allowed WASI preview 1 functions, as a synchronous
/// run or a task links them.
pub(crate) fn add_to_linker(linker: &mut Linker<ActionCtx>, linking: Linking) -> wasmtime::Result<()> {
    turnstile::add_to_linker(linker)?;
    wasi::add_to_linker(linker, linking)
}

/// An import table: (name, params, results) for each function of one import module.
pub(crate) type ImportTable = &'static [(&'static str, &'static [ValType], &'static [ValType])];

#[cfg(test)]
mod tests {
    use super::*;

    struct NoKv;
    impl KvRead for NoKv {
        fn kv_get(&self, _key: &str) -> Option<Vec<u8>> {
            None
        }
    }

    #[test]
    fn import_tables_match_the_linker() {
        let engine = wasmtime::Engine::default();
        for linking in [Linking::Sync, Linking::Task] {
            let mut linker = Linker::new(&engine);
            add_to_linker(&mut linker, linking).expect("linker");
            let input = ActionInput {
                actions: Arc::default(),
                limits: Arc::default(),
                input: Arc::from(Vec::new()),
                state: Arc::from(Vec::new()),
                kv: Arc::new(NoKv),
            };
            let mut store = wasmtime::Store::new(&engine, ActionCtx::new(input, Mode::Sync, Instant::now()));
            for (module, table) in [(MODULE, IMPORTS), (WASI_MODULE, WASI_IMPORTS)] {
                let mut defined = 0;
                for (name, params, results) in table {
                    let func =
                        linker.get(&mut store, module, name).ok().and_then(wasmtime::Extern::into_func).expect(name);
                    let ty = func.ty(&store);
                    let got: Vec<String> = ty.params().map(|t| t.to_string()).collect();
                    let want: Vec<String> = params.iter().map(ToString::to_string).collect();
                    assert_eq!(got, want, "params of {module}::{name}");
                    let got: Vec<String> = ty.results().map(|t| t.to_string()).collect();
                    let want: Vec<String> = results.iter().map(ToString::to_string).collect();
                    assert_eq!(got, want, "results of {module}::{name}");
                    defined += 1;
                }
                let in_linker = linker.iter(&mut store).filter(|(m, _, _)| *m == module).count();
                assert_eq!(defined, in_linker, "every `{module}` import is in the table");
            }
        }
    }

    #[test]
    fn every_import_has_a_charge() {
        for (module, table) in [(MODULE, IMPORTS), (WASI_MODULE, WASI_IMPORTS)] {
            for (name, _, _) in table {
                let charged = CHARGES.iter().any(|c| {
                    let (m, names) = c.import.split_once("::").expect("module::names");
                    m == module && names.split(',').any(|n| n.trim() == *name)
                });
                assert!(charged, "{module}::{name} has no charge");
            }
        }
    }

    #[test]
    fn charges_round_up_per_kib() {
        let charge = Charge { import: "x::y", base: 10, per_kib: 100 };
        assert_eq!(charge.for_bytes(0), 0);
        assert_eq!(charge.for_bytes(1), 1);
        assert_eq!(charge.for_bytes(1024), 100);
        assert_eq!(charge.for_bytes(usize::MAX), u64::MAX.div_ceil(1024));
    }
}
