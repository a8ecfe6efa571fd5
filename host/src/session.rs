//! The session state machine, as plain data: where a customer interaction is (ready to run an
//! action, waiting for the customer, done, failed), its state blob and its counters.
//!
//! A session never runs anything itself. The driver (the local runner now, the scheduler later)
//! asks it which action is next, runs that action in a sandbox, and hands the outcome back to
//! [`Session::apply`]. Keeping it plain data is what lets it be checkpointed and moved.

use crate::app::App;
use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::json::check_depth;
use crate::sandbox::{Effects, Usage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// A session's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s-{}", self.0)
    }
}

/// The longest a wait may last: 30 days (a wait past it is refused as a bad next step).
pub const MAX_WAIT_MS: u64 = 30 * 24 * 3600 * 1000;
/// How deeply a session's `done` result may nest: well inside what every reader of a stored
/// checkpoint accepts (a deeper one would be a poison pill for the restart that reads it).
pub const MAX_RESULT_DEPTH: usize = 32;

/// Milliseconds since the Unix epoch: the clock of waits (and of the guest's `now_ms`).
pub(crate) fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

/// The next step an action chose, as the guest sent it to `next`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Next {
    /// Run this action next, at once.
    Goto(String),
    /// Wait for the customer's next event, then run `action` with it as input.
    Wait(Wait),
    /// The session is over, with this result.
    Done(serde_json::Value),
}

/// A wait for the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// The action that receives the customer's event.
    pub action: String,
    /// How long to wait; `None` waits for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The action run (with an empty input) when the timeout passes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
}

impl Next {
    /// Parses a guest's next-step document and checks every action it names against the app's.
    pub(crate) fn parse(bytes: &[u8], actions: &HashSet<String>) -> Result<Next, String> {
        let next: Next = serde_json::from_slice(bytes).map_err(|e| {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            format!("next step `{shown}` is not one of {{\"goto\":..}}, {{\"wait\":{{..}}}}, {{\"done\":..}}: {e}")
        })?;
        let known = |name: &str| {
            if actions.contains(name) {
                Ok(())
            } else {
                Err(format!("next step names `{name}`, which is not an action of this app"))
            }
        };
        match &next {
            Next::Goto(action) => known(action)?,
            Next::Wait(wait) => {
                known(&wait.action)?;
                if wait.timeout_ms.is_some_and(|ms| ms > MAX_WAIT_MS) {
                    return Err(format!("a wait's `timeout_ms` may be at most {MAX_WAIT_MS} (30 days)"));
                }
                match (&wait.timeout_ms, &wait.on_timeout) {
                    (Some(_), Some(on_timeout)) => known(on_timeout)?,
                    (None, None) => {}
                    (Some(_), None) => return Err("a wait with `timeout_ms` needs `on_timeout`".into()),
                    (None, Some(_)) => return Err("a wait with `on_timeout` needs `timeout_ms`".into()),
                }
            }
            Next::Done(result) => check_depth(result, MAX_RESULT_DEPTH).map_err(|depth| {
                format!("the `done` result nests {depth} levels deep, over the limit of {MAX_RESULT_DEPTH}")
            })?,
        }
        Ok(next)
    }
}

/// Where a session is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// An action is due, with this input.
    Ready {
        /// The action to run.
        action: String,
        /// Its input (the customer event, or empty), in base64.
        #[serde(with = "base64_bytes")]
        #[schema(value_type = String, format = Byte)]
        input: Vec<u8>,
    },
    /// Waiting for the customer.
    Waiting {
        /// The wait the last action asked for.
        wait: Wait,
        /// When the wait began, in milliseconds since the Unix epoch (to re-arm the remaining
        /// part of a timeout after a restart).
        since_ms: u64,
    },
    /// Finished with a result.
    Done {
        /// What the last action passed to `done`.
        result: serde_json::Value,
    },
    /// Ended by a failure (no error action, or the error action itself failed).
    Failed {
        /// Why.
        failure: Failure,
    },
    /// Ended by its tenant (or the operator) before it finished.
    Cancelled,
}

impl Status {
    /// The status's name: `ready`, `waiting`, `done` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Ready { .. } => "ready",
            Status::Waiting { .. } => "waiting",
            Status::Done { .. } => "done",
            Status::Failed { .. } => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the session is over.
    pub fn is_finished(&self) -> bool {
        matches!(self, Status::Done { .. } | Status::Failed { .. } | Status::Cancelled)
    }
}

/// What a session has used so far: its receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counters {
    /// Actions run (failed ones included).
    pub actions: u64,
    /// Actions that failed.
    pub failures: u64,
    /// Fuel burned by all of them.
    pub fuel: u64,
    /// Output events released.
    pub outputs: u64,
    /// What its actions were charged, in fuel: per action the larger of the fuel burned and its
    /// time (on a worker's CPU, waiting in the host, asleep) at the host's fuel per second.
    #[serde(default)]
    pub cost: u64,
    /// Wall-clock time its actions ran, in microseconds.
    #[serde(default)]
    pub wall_us: u64,
    /// The part of `wall_us` spent in host calls.
    #[serde(default)]
    pub host_us: u64,
}

/// One customer interaction: plain data, everything needed to resume it elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The app version (module sha-256, hex) the session is pinned to.
    pub app: String,
    /// Where it is.
    pub status: Status,
    /// The state blob the app keeps between actions.
    #[serde(with = "base64_bytes")]
    pub state: Vec<u8>,
    /// What it has used.
    pub counters: Counters,
    /// The most recent failure, also when an error action took over.
    pub last_failure: Option<Failure>,
    /// When it finished (ms since the epoch): its retention counts from then, across restarts.
    /// `None` while it is open, and in checkpoints written before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl Session {
    /// A new session of `app` about to run `entry` with `input`.
    pub fn start(app: &App, entry: &str, input: Vec<u8>) -> Result<Session, Error> {
        app.check_action(entry)?;
        Ok(Session {
            app: app.hash().to_owned(),
            status: Status::Ready { action: entry.to_owned(), input },
            state: Vec::new(),
            counters: Counters::default(),
            last_failure: None,
            finished_ms: None,
        })
    }

    /// Hands a customer event to a waiting session: its awaited action becomes ready.
    pub fn deliver(&mut self, event: Vec<u8>) -> Result<(), Error> {
        match &self.status {
            Status::Waiting { wait, .. } => {
                self.status = Status::Ready { action: wait.action.clone(), input: event };
                Ok(())
            }
            other => Err(Error::SessionState { status: other.name(), request: "take a customer event" }),
        }
    }

    /// The wait's timeout passed: its `on_timeout` action becomes ready.
    pub fn time_out(&mut self) -> Result<(), Error> {
        match &self.status {
            Status::Waiting { wait: Wait { on_timeout: Some(action), .. }, .. } => {
                self.status = Status::Ready { action: action.clone(), input: Vec::new() };
                Ok(())
            }
            other => Err(Error::SessionState { status: other.name(), request: "time out" }),
        }
    }

    /// The action due now and its input, or `None` when the session is not ready. Fails the
    /// session instead when its loop guard is reached.
    pub fn due(&mut self, max_actions: u64) -> Option<(&str, &[u8])> {
        if matches!(self.status, Status::Ready { .. }) && self.counters.actions >= max_actions {
            let action = match &self.status {
                Status::Ready { action, .. } => action.clone(),
                _ => String::new(),
            };
            let failure = Failure::new(
                FailureKind::LoopGuard,
                &action,
                format!("the session has run {max_actions} actions, its limit"),
            );
            self.last_failure = Some(failure.clone());
            self.status = Status::Failed { failure };
        }
        match &self.status {
            Status::Ready { action, input } => Some((action, input)),
            _ => None,
        }
    }

    /// Applies the outcome of the action that was due and returns what it releases (outputs and
    /// key-value writes; nothing for a failure). A failure goes to the app's error action
    /// (`error_action`, with the failure as JSON input) unless the failing action *is* it.
    pub fn apply(
        &mut self,
        error_action: Option<&str>,
        usage: &Usage,
        outcome: Result<Effects, Failure>,
        now_ms: u64,
    ) -> Released {
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counters.actions += 1;
        self.counters.fuel = self.counters.fuel.saturating_add(usage.fuel);
        self.counters.cost = self.counters.cost.saturating_add(usage.cost);
        self.counters.wall_us = self.counters.wall_us.saturating_add(micros(usage.elapsed));
        self.counters.host_us = self.counters.host_us.saturating_add(micros(usage.host_time));
        match outcome {
            Ok(effects) => {
                if let Some(state) = effects.state {
                    self.state = state;
                }
                self.counters.outputs += u64::try_from(effects.outputs.len()).unwrap_or(u64::MAX);
                self.status = match effects.next {
                    Next::Goto(action) => Status::Ready { action, input: Vec::new() },
                    Next::Wait(wait) => Status::Waiting { wait, since_ms: now_ms },
                    Next::Done(result) => Status::Done { result },
                };
                Released { outputs: effects.outputs, kv_writes: effects.kv_writes }
            }
            Err(failure) => {
                self.counters.failures += 1;
                self.last_failure = Some(failure.clone());
                self.status = match error_action {
                    Some(handler) if handler != failure.action => Status::Ready {
                        action: handler.to_owned(),
                        input: serde_json::to_vec(&serde_json::json!({ "failure": failure })).unwrap_or_default(),
                    },
                    _ => Status::Failed { failure },
                };
                Released::default()
            }
        }
    }
}

/// What a completed action releases once its checkpoint is committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Output events for the customer, in order.
    pub outputs: Vec<String>,
    /// Writes to the tenant's key-value space.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
}

/// Byte blobs in JSON as base64 strings (a third bigger, rather than four times as an array).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
