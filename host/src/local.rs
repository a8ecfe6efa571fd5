//! One session driven in-process, synchronously, with an in-memory key-value space: what
//! `turnstile run` and the tests use to walk a script step by step. Timeouts are fired by the
//! caller ([`LocalSession::time_out`]), so a test needs no clock.

use crate::abi::{KvRead, LogLine};
use crate::app::App;
use crate::error::Error;
use crate::failure::Failure;
use crate::runtime::Runtime;
use crate::session::{Session, Status, now_ms};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A tenant's key-value space held in memory.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryKv {
    /// Sets `key` to `value`.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).insert(key.into(), value.into());
    }

    /// Applies the writes of one action.
    pub fn apply(&self, writes: BTreeMap<String, Vec<u8>>) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).extend(writes);
    }
}

impl KvRead for MemoryKv {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }
}

/// What one action did, as the driver saw it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The action that ran.
    pub action: String,
    /// Its outputs, released after it completed (none when it failed).
    pub outputs: Vec<String>,
    /// Its failure, if it failed.
    pub failure: Option<Failure>,
    /// Fuel it burned.
    pub fuel: u64,
    /// Time it took.
    pub elapsed: Duration,
    /// What it logged.
    pub log: Vec<LogLine>,
}

/// One session of one app, run to its next wait (or its end) on every call.
pub struct LocalSession<'r> {
    runtime: &'r Runtime,
    app: Arc<App>,
    session: Session,
    kv: Arc<MemoryKv>,
}

impl<'r> LocalSession<'r> {
    /// Starts a session at `entry` and runs it until it waits or ends.
    pub fn start(
        runtime: &'r Runtime,
        app: Arc<App>,
        entry: &str,
        input: Vec<u8>,
        kv: Arc<MemoryKv>,
    ) -> Result<(LocalSession<'r>, Vec<Step>), Error> {
        check_event_size(runtime, &input)?;
        let session = Session::start(&app, entry, input)?;
        let mut local = LocalSession { runtime, app, session, kv };
        let steps = local.run_until_blocked();
        Ok((local, steps))
    }

    /// Delivers a customer event to the waiting session and runs it until it waits or ends.
    pub fn deliver(&mut self, event: Vec<u8>) -> Result<Vec<Step>, Error> {
        check_event_size(self.runtime, &event)?;
        self.session.deliver(event)?;
        Ok(self.run_until_blocked())
    }

    /// Fires the waiting session's timeout and runs it until it waits or ends.
    pub fn time_out(&mut self) -> Result<Vec<Step>, Error> {
        self.session.time_out()?;
        Ok(self.run_until_blocked())
    }

    /// The session as it stands.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The status as it stands.
    pub fn status(&self) -> &Status {
        &self.session.status
    }

    fn run_until_blocked(&mut self) -> Vec<Step> {
        let limits = self.runtime.limits().clone();
        let mut steps = Vec::new();
        while let Some((action, input)) = self.session.due(limits.max_actions_per_session) {
            let action = action.to_owned();
            let input = input.to_vec();
            let kv: Arc<dyn KvRead> = self.kv.clone();
            let state = self.session.state.clone();
            let outcome =
                self.runtime.run_action(&self.app, &action, input, state, kv, &limits, limits.fuel_per_action);
            let mut step = Step {
                action,
                outputs: Vec::new(),
                failure: None,
                fuel: outcome.usage.fuel,
                elapsed: outcome.usage.elapsed,
                log: outcome.log,
            };
            step.failure = outcome.result.as_ref().err().cloned();
            let released = self.session.apply(self.app.error_action(), &outcome.usage, outcome.result, now_ms());
            self.kv.apply(released.kv_writes);
            step.outputs = released.outputs;
            steps.push(step);
        }
        steps
    }
}

fn check_event_size(runtime: &Runtime, event: &[u8]) -> Result<(), Error> {
    let limit = runtime.limits().max_input_bytes;
    if event.len() > limit {
        return Err(Error::EventTooLarge { size: event.len(), limit });
    }
    Ok(())
}
