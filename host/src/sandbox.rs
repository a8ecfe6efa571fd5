//! One action in a fresh sandbox: a new `Store` with its fuel, memory limit and epoch deadline,
//! a fresh instance from the pooling allocator, one call, and the outcome classified into either
//! the action's effects or a [`Failure`] of a precise kind.

use crate::abi::{ActionCtx, ActionInput, KvRead, LogLine};
use crate::app::App;
use crate::engine::Engine;
use crate::failure::{Failure, FailureKind};
use crate::limits::Limits;
use crate::session::Next;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// What a successful action produced. Nothing of it has left the sandbox yet: the driver commits
/// it (state and kv) and only then releases the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// The new state blob.
    pub state: Vec<u8>,
    /// The next step.
    pub next: Next,
    /// Output events, each one JSON value.
    pub outputs: Vec<String>,
    /// Key-value writes.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
}

/// What one action used: the receipt it is charged by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fuel burned (wasm instructions, plus host calls at their charge).
    pub fuel: u64,
    /// What the action really cost, in fuel: the fuel it burned, or its wall time at the engine's
    /// measured fuel per second if that is more (time asleep or in the host counts). The fair
    /// share and the tenant's fuel bucket are charged this.
    pub cost: u64,
    /// Wall-clock time in the sandbox.
    pub elapsed: Duration,
    /// The part of `elapsed` spent inside host calls: measured for the calls that wait (sleeps,
    /// store look-ups), the others' charge at the host's fuel per second.
    pub host_time: Duration,
}

/// The outcome of one action.
#[derive(Debug)]
pub struct ActionOutcome {
    /// Effects, or why it failed.
    pub result: Result<Effects, Failure>,
    /// What it used.
    pub usage: Usage,
    /// What the guest logged (and printed, for wasip1 modules).
    pub log: Vec<LogLine>,
}

/// One action to run.
pub(crate) struct ActionCall<'a> {
    pub(crate) app: &'a App,
    pub(crate) action: &'a str,
    pub(crate) input: Vec<u8>,
    pub(crate) state: Vec<u8>,
    pub(crate) kv: Arc<dyn KvRead>,
    pub(crate) limits: &'a Arc<Limits>,
    /// Fuel for this action: the per-action cap, or less when the tenant's bucket holds less.
    pub(crate) fuel: u64,
}

/// Runs one action to completion in a fresh instance. Never panics on guest behaviour.
pub(crate) fn run(engine: &Engine, call: ActionCall<'_>) -> ActionOutcome {
    let started = Instant::now();
    let input = ActionInput {
        actions: call.app.action_names().clone(),
        limits: call.limits.clone(),
        input: call.input,
        state: call.state,
        kv: call.kv,
    };
    let ctx = ActionCtx::new(input, started);
    let mut store = Store::new(engine.wasmtime(), ctx);
    store.limiter(|ctx| ctx);
    store.set_epoch_deadline(engine.deadline_ticks(call.limits.wall_time));
    store.epoch_deadline_trap();
    let result = store.set_fuel(call.fuel).and_then(|()| call_action(&mut store, call.app, call.action));
    let fuel = call.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let mut ctx = store.into_data();
    ctx.drain_stdio();
    let result = classify(result, &mut ctx, call.action, call.limits);
    let elapsed = started.elapsed();
    let host_time = (ctx.host_time + engine.time_for(ctx.host_fuel)).min(elapsed);
    let usage = Usage { fuel, cost: fuel.max(engine.fuel_for(elapsed)), elapsed, host_time };
    ActionOutcome { result, usage, log: ctx.log }
}

fn call_action(store: &mut Store<ActionCtx>, app: &App, action: &str) -> wasmtime::Result<i32> {
    let instance = app.pre.instantiate(&mut *store)?;
    store.data_mut().memory = instance.get_memory(&mut *store, "memory");
    let func = app
        .export(action)
        .and_then(|export| instance.get_module_export(&mut *store, export))
        .and_then(wasmtime::Extern::into_func)
        .ok_or_else(|| wasmtime::Error::msg(format!("no action `{action}`")))?;
    func.typed::<(), i32>(&*store)?.call(&mut *store, ())
}

fn classify(
    result: wasmtime::Result<i32>,
    ctx: &mut ActionCtx,
    action: &str,
    limits: &Limits,
) -> Result<Effects, Failure> {
    let fail = |kind, message: String| Err(Failure::new(kind, action, message));
    match result {
        Ok(0) => match ctx.next.take() {
            Some(next) => Ok(Effects {
                state: std::mem::take(&mut ctx.state),
                next,
                outputs: std::mem::take(&mut ctx.outputs),
                kv_writes: std::mem::take(&mut ctx.kv_writes),
            }),
            None => fail(FailureKind::BadNext, "the action returned without calling `next`".into()),
        },
        Ok(code) => fail(FailureKind::Trap, with_last_error(format!("the action returned error code {code}"), ctx)),
        Err(error) => {
            if let Some((kind, message)) = ctx.violation.take() {
                return fail(kind, message);
            }
            match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => {
                    fail(FailureKind::OutOfFuel, format!("burned all {} fuel of one action", limits.fuel_per_action))
                }
                Some(Trap::Interrupt) => {
                    fail(FailureKind::Deadline, format!("ran past its wall-clock limit of {:?}", limits.wall_time))
                }
                Some(Trap::StackOverflow) => fail(FailureKind::StackOverflow, "the call stack was exhausted".into()),
                Some(trap) => fail(FailureKind::Trap, with_last_error(trap.to_string(), ctx)),
                None => fail(FailureKind::Trap, with_last_error(format!("{error:#}"), ctx)),
            }
        }
    }
}

/// Adds the guest's last error log line (where the SDK puts a panic message) to a trap message.
fn with_last_error(message: String, ctx: &ActionCtx) -> String {
    match ctx.last_error_log() {
        Some(last) => format!("{message} (last error logged: {last})"),
        None => message,
    }
}
