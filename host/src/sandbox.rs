//! One action in a fresh sandbox: a new `Store` with its fuel, memory limit and deadline, a fresh
//! instance from the pooling allocator, one call, and the outcome classified into either the
//! action's effects or a [`Failure`] of a precise kind.
//!
//! An action first runs *synchronously*, with at most one slice of fuel: almost every action of
//! a contact-centre script ends well within it, at full speed. One that does not (or that wants
//! to sleep) is *long*: it is started again as a preemptible task (`sandbox/task.rs`) that yields
//! its worker after every slice and while it sleeps, so a long action delays other tenants by a
//! slice at most. Re-running from the start is safe: nothing an action does leaves the sandbox
//! before it completes, and the wasted slice is charged to its tenant.

mod span;
mod task;

use span::Span;
pub(crate) use span::thread_cpu_time;
pub(crate) use task::{ActionTask, Slice};

use crate::abi::{ActionCtx, ActionInput, KvRead, Linking, LogLine, Mode};
use crate::app::App;
use crate::engine::{Engine, Meter};
use crate::failure::{Failure, FailureKind};
use crate::limits::Limits;
use crate::session::Next;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

/// What a successful action produced. Nothing of it has left the sandbox yet: the driver commits
/// it (state and kv) and only then releases the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// The new state blob, or `None` when the action did not write it.
    pub state: Option<Vec<u8>>,
    /// The next step.
    pub next: Next,
    /// Output events, each one JSON value.
    pub outputs: Vec<String>,
    /// Key-value writes.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
}

/// What one action (or one slice of it) used: the receipt it is charged by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fuel burned (wasm instructions, plus host calls at their charge).
    pub fuel: u64,
    /// What the action really cost, in fuel: the fuel it burned, or its time at the engine's
    /// measured fuel per second if that is more. Its time is what it kept a worker busy (the
    /// thread's CPU time plus what its host calls measured waiting, see `sandbox/span.rs`) and
    /// the time it slept; time the machine took its thread away is not. The fair share and the
    /// tenant's fuel bucket are charged this.
    pub cost: u64,
    /// Wall-clock time it ran (time preempted, waiting for a worker, is not counted; time
    /// asleep is).
    pub elapsed: Duration,
    /// The part of `elapsed` it held a worker (not asleep).
    pub running: Duration,
    /// The part of `elapsed` spent inside host calls: measured for the calls that wait (sleeps,
    /// store look-ups), the others' charge at the host's fuel per second.
    pub host_time: Duration,
}

impl Usage {
    /// What is left of a receipt once `part` of it is taken away.
    pub(crate) fn minus(self, part: Usage) -> Usage {
        Usage {
            fuel: self.fuel.saturating_sub(part.fuel),
            cost: self.cost.saturating_sub(part.cost),
            elapsed: self.elapsed.saturating_sub(part.elapsed),
            running: self.running.saturating_sub(part.running),
            host_time: self.host_time.saturating_sub(part.host_time),
        }
    }

    /// The sum of two receipts.
    pub(crate) fn plus(self, other: Usage) -> Usage {
        Usage {
            fuel: self.fuel.saturating_add(other.fuel),
            cost: self.cost.saturating_add(other.cost),
            elapsed: self.elapsed.saturating_add(other.elapsed),
            running: self.running.saturating_add(other.running),
            host_time: self.host_time.saturating_add(other.host_time),
        }
    }
}

/// The outcome of one action.
#[derive(Debug)]
pub struct ActionOutcome {
    /// Effects, or why it failed.
    pub result: Result<Effects, Failure>,
    /// What it used (a wasted first attempt of a long action included).
    pub usage: Usage,
    /// What the guest logged (and printed, for wasip1 modules).
    pub log: Vec<LogLine>,
}

/// One action to run: everything it starts from, owned, so that a long action can be started
/// again as a task.
#[derive(Clone)]
pub(crate) struct ActionCall {
    pub(crate) app: Arc<App>,
    pub(crate) action: String,
    pub(crate) input: Arc<[u8]>,
    pub(crate) state: Arc<[u8]>,
    pub(crate) kv: Arc<dyn KvRead>,
    pub(crate) limits: Arc<Limits>,
    /// Fuel for this action: what the scheduler reserved for it.
    pub(crate) fuel: u64,
}

/// What a synchronous attempt came to.
pub(crate) enum Attempt {
    /// The action ran to its end.
    Done(ActionOutcome),
    /// It needs more than one slice (or wants to sleep): start it as a task; `spent` is what the
    /// attempt used, to be charged.
    Long(ActionCall, Usage),
}

impl ActionCall {
    pub(crate) fn ctx(&self, mode: Mode, started: Instant) -> ActionCtx {
        let input = ActionInput {
            actions: self.app.action_names().clone(),
            limits: self.limits.clone(),
            input: self.input.clone(),
            state: self.state.clone(),
            kv: self.kv.clone(),
        };
        ActionCtx::new(input, mode, started)
    }
}

/// Runs an action synchronously with at most `slice` fuel; an action that needs more than its
/// slice, or wants to sleep, comes back [`Attempt::Long`] untouched.
pub(crate) fn attempt(engine: &Engine, call: ActionCall, slice: u64) -> Attempt {
    let span = Span::start();
    let sliced = call.fuel > slice;
    let fuel = if sliced { slice } else { call.fuel };
    let mut store = Store::new(engine.wasmtime(), call.ctx(Mode::Sync, span.started()));
    store.limiter(|ctx| ctx);
    let wall = call.limits.wall_time;
    store.epoch_deadline_callback(move |ctx| {
        Ok(if ctx.data().time_used() > wall { UpdateDeadline::Interrupt } else { UpdateDeadline::Continue(1) })
    });
    store.set_epoch_deadline(1);
    let result = store.set_fuel(fuel).and_then(|()| call_sync(&mut store, &call.app, &call.action));
    let burned = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let mut ctx = store.into_data();
    let time = span.end(ctx.host_time);
    let cost = burned.max(engine.meter().fuel_for(time.charged));
    let out_of_slice = sliced && result.is_err() && burned >= fuel;
    if ctx.wants_task() || out_of_slice {
        let elapsed = time.elapsed;
        let spent = Usage { fuel: burned, cost, elapsed, running: elapsed, host_time: Duration::ZERO };
        return Attempt::Long(call, spent);
    }
    let mut outcome = finish(&engine.meter(), &call, result, &mut ctx, burned, (time.elapsed, time.elapsed));
    outcome.usage.cost = cost;
    Attempt::Done(outcome)
}

/// Runs an action to its end on this thread: synchronously if it fits in one slice, else as a
/// task driven here (sleeping where it sleeps). For `turnstile run`, tests and benchmarks.
pub(crate) fn run(engine: &Engine, call: ActionCall) -> ActionOutcome {
    match attempt(engine, call, engine.attempt_fuel()) {
        Attempt::Done(outcome) => outcome,
        Attempt::Long(call, spent) => {
            let mut task = ActionTask::start(engine, call, spent);
            loop {
                match task.run_slice() {
                    Slice::Done(outcome) => return outcome,
                    Slice::Yielded(_) => {}
                    Slice::Sleeping { until, .. } => {
                        std::thread::sleep(until.saturating_duration_since(Instant::now()))
                    }
                }
            }
        }
    }
}

fn call_sync(store: &mut Store<ActionCtx>, app: &App, action: &str) -> wasmtime::Result<i32> {
    let instance = app.pre(Linking::Sync).instantiate(&mut *store)?;
    store.data_mut().memory = instance.get_memory(&mut *store, "memory");
    let func = app
        .export(action)
        .and_then(|export| instance.get_module_export(&mut *store, export))
        .and_then(wasmtime::Extern::into_func)
        .ok_or_else(|| wasmtime::Error::msg(format!("no action `{action}`")))?;
    func.typed::<(), i32>(&*store)?.call(&mut *store, ())
}

/// Classifies how an action ended and takes its receipt, charged only its fuel so far: the
/// caller, which measured its time, raises the cost to that.
fn finish(
    meter: &Meter,
    call: &ActionCall,
    result: wasmtime::Result<i32>,
    ctx: &mut ActionCtx,
    fuel: u64,
    (elapsed, running): (Duration, Duration),
) -> ActionOutcome {
    ctx.drain_stdio();
    let result = classify(result, ctx, &call.action, &call.limits);
    let host_time = (ctx.host_time + meter.time_for(ctx.host_fuel)).min(elapsed);
    let usage = Usage { fuel, cost: fuel, elapsed, running, host_time };
    ActionOutcome { result, usage, log: std::mem::take(&mut ctx.log) }
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
                state: ctx.new_state.take(),
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
