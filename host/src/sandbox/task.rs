//! A long action as a preemptible task: wasmtime runs it on a fiber of its own, it yields its
//! worker after every slice of fuel (wherever it is, host calls included, since they are charged
//! in fuel), and a WASI sleep parks it off the workers until it is due. The worker that polls it
//! next may be another one: the task owns its `Store` and everything the action started from.
//!
//! Its deadline counts its own time, running and asleep, not the time it waited for a worker
//! while other tenants' actions ran: being preempted never makes an action miss its deadline.

use super::{ActionCall, ActionOutcome, Span, Usage, finish};
use crate::abi::{ActionClock, ActionCtx, Linking, Mode};
use crate::app::App;
use crate::engine::{Engine, Meter};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use wasmtime::{Store, UpdateDeadline};

/// A long action in progress.
pub(crate) struct ActionTask {
    app: Arc<App>,
    /// The action's outcome, with what its synchronous first attempt used.
    future: Pin<Box<dyn Future<Output = (ActionOutcome, Usage)> + Send>>,
    clock: Arc<ActionClock>,
    meter: Meter,
    /// The time its slices so far are charged (see `sandbox/span.rs`).
    charged: Duration,
}

/// What one slice of a task came to.
pub(crate) enum Slice {
    /// The action ended.
    Done(ActionOutcome),
    /// It used its slice and yielded: resume it when its turn comes.
    Yielded(Usage),
    /// It went to sleep until `until`: resume it then.
    Sleeping {
        /// When it is due.
        until: Instant,
        /// What the slice before the sleep used.
        slice: Usage,
    },
}

impl ActionTask {
    /// Starts a long action as a task with its full fuel; `spent` is what its synchronous first
    /// attempt used, added to its receipt.
    pub(crate) fn start(engine: &Engine, call: ActionCall, spent: Usage) -> ActionTask {
        let clock = Arc::new(ActionClock::default());
        let meter = engine.meter();
        let wasmtime = engine.wasmtime().clone();
        let slice = engine.slice_fuel();
        let preempt = engine.preempting().clone();
        let task_clock = clock.clone();
        let app = call.app.clone();
        let future = async move {
            let ctx = call.ctx(Mode::Task(task_clock.clone()), Instant::now());
            let mut store = Store::new(&wasmtime, ctx);
            store.limiter(|ctx| ctx);
            // At every epoch (a tick, or a poke when work waits): the deadline, in the task's own
            // time, and a yield if someone waits for a worker.
            let wall = call.limits.wall_time;
            store.epoch_deadline_callback(move |ctx| {
                Ok(if ctx.data().time_used() > wall {
                    UpdateDeadline::Interrupt
                } else if preempt.load(std::sync::atomic::Ordering::Acquire) {
                    UpdateDeadline::Yield(1)
                } else {
                    UpdateDeadline::Continue(1)
                })
            });
            store.set_epoch_deadline(1);
            let result = match store.set_fuel(call.fuel).and_then(|()| store.fuel_async_yield_interval(Some(slice))) {
                Ok(()) => call_async(&mut store, &call).await,
                Err(error) => Err(error),
            };
            let burned = call.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            let mut ctx = store.into_data();
            let times = (task_clock.active(), task_clock.ran());
            (finish(&meter, &call, result, &mut ctx, burned, times), spent)
        };
        ActionTask { app, future: Box::pin(future), clock, meter, charged: Duration::ZERO }
    }

    /// The app version the action belongs to.
    pub(crate) fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Runs the task on this thread until it ends, yields or sleeps.
    pub(crate) fn run_slice(&mut self) -> Slice {
        let span = Span::start();
        self.clock.resume(span.started());
        let poll = self.future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        let paused = self.clock.pause(Instant::now());
        let time = span.end(paused.waited);
        self.charged += time.charged;
        match poll {
            Poll::Ready((mut outcome, spent)) => {
                // Charged its slices' time and its sleeps: its whole time but what the machine
                // took away from it.
                let asleep = outcome.usage.elapsed.saturating_sub(outcome.usage.running);
                let own = self.meter.fuel_for(self.charged.saturating_add(asleep));
                outcome.usage.cost = outcome.usage.fuel.max(own);
                outcome.usage = spent.plus(outcome.usage);
                Slice::Done(outcome)
            }
            Poll::Pending => {
                let cost = self.meter.fuel_for(time.charged);
                let ran = paused.ran;
                let slice = Usage { fuel: 0, cost, elapsed: ran, running: ran, host_time: Duration::ZERO };
                match paused.sleeping_until {
                    Some(until) => Slice::Sleeping { until, slice },
                    None => Slice::Yielded(slice),
                }
            }
        }
    }
}

async fn call_async(store: &mut Store<ActionCtx>, call: &ActionCall) -> wasmtime::Result<i32> {
    let instance = call.app.pre(Linking::Task).instantiate_async(&mut *store).await?;
    store.data_mut().memory = instance.get_memory(&mut *store, "memory");
    let func = call
        .app
        .export(&call.action)
        .and_then(|export| instance.get_module_export(&mut *store, export))
        .and_then(wasmtime::Extern::into_func)
        .ok_or_else(|| wasmtime::Error::msg(format!("no action `{}`", call.action)))?;
    func.typed::<(), i32>(&*store)?.call_async(&mut *store, ()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, RuntimeConfig};

    #[test]
    fn a_long_task_yields_after_its_slices_and_ends_out_of_fuel() {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let module = r#"(module (memory (export "memory") 1) (func (export "spin") (result i32) (loop $l (br $l)) i32.const 0))"#;
        let app = runtime.deploy(&wat::parse_str(module).expect("wat")).expect("deploys").app;
        let limits = Arc::new(crate::limits::Limits { fuel_per_action: 5_000_000, ..Default::default() });
        let call = ActionCall {
            app,
            action: "spin".into(),
            input: Arc::from(Vec::new()),
            state: Arc::from(Vec::new()),
            kv: Arc::new(crate::local::MemoryKv::default()),
            limits,
            fuel: 5_000_000,
        };
        let mut task = runtime.start_task(call, Usage::default());
        let mut yields = 0;
        let outcome = loop {
            match task.run_slice() {
                Slice::Done(outcome) => break outcome,
                Slice::Yielded(slice) => {
                    assert!(slice.running > Duration::ZERO);
                    yields += 1;
                }
                Slice::Sleeping { .. } => panic!("it does not sleep"),
            }
        };
        assert!(yields >= 5, "5M fuel in slices of 200k yields many times, not {yields}");
        assert_eq!(outcome.result.err().map(|f| f.kind), Some(crate::failure::FailureKind::OutOfFuel));
        assert_eq!(outcome.usage.fuel, 5_000_000);
    }
}
