//! Why an action failed: a closed set of kinds a tenant can read and match on.
//!
//! A failure belongs to the tenant's session, never to the host: the host goes on, the next action
//! of any session runs as if nothing happened.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of an action failure. The set is closed and each kind has a stable snake_case name
/// (what the tenant sees in the session, in logs and, later, in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The action burned its whole fuel allowance (an endless or too-long loop).
    OutOfFuel,
    /// The action ran past its wall-clock deadline (the backstop for work fuel does not meter).
    Deadline,
    /// The instance tried to grow its memory (or a table) past the tenant's limit.
    MemoryLimit,
    /// The wasm call stack was exhausted (runaway recursion).
    StackOverflow,
    /// Too many outputs, too many output bytes, or too much captured stdout/stderr in one action.
    OutputLimit,
    /// The state blob or the key-value writes of one action are over their limit.
    StateLimit,
    /// The next step is malformed, names an action the app does not have, or was never given.
    BadNext,
    /// The guest trapped (the message says how), or the action returned a non-zero code.
    Trap,
    /// The guest broke the ABI: a pointer outside its memory, a negative length, bytes that
    /// should be JSON or UTF-8 and are not.
    AbiMisuse,
    /// The session ran more actions than its loop guard allows.
    LoopGuard,
    /// The action's key-value writes or outputs would take its tenant past a storage quota
    /// (`max_kv_bytes`, `max_stored_output_bytes`): nothing of it was kept.
    StorageQuota,
    /// The session's stored checkpoint could not be read when the host started: it was set aside
    /// (not an action failure: the session ends with it so that no restart trips over it).
    Quarantined,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 12] = [
        FailureKind::OutOfFuel,
        FailureKind::Deadline,
        FailureKind::MemoryLimit,
        FailureKind::StackOverflow,
        FailureKind::OutputLimit,
        FailureKind::StateLimit,
        FailureKind::BadNext,
        FailureKind::Trap,
        FailureKind::AbiMisuse,
        FailureKind::LoopGuard,
        FailureKind::StorageQuota,
        FailureKind::Quarantined,
    ];

    /// The stable name of this kind, e.g. `out_of_fuel`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::Deadline => "deadline",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::OutputLimit => "output_limit",
            FailureKind::StateLimit => "state_limit",
            FailureKind::BadNext => "bad_next",
            FailureKind::Trap => "trap",
            FailureKind::AbiMisuse => "abi_misuse",
            FailureKind::LoopGuard => "loop_guard",
            FailureKind::StorageQuota => "storage_quota",
            FailureKind::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed action: what kind, in which action, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// The kind, to match on.
    pub kind: FailureKind,
    /// The action that failed.
    pub action: String,
    /// What happened, for a person.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, action: &str, message: impl Into<String>) -> Self {
        Failure { kind, action: action.to_owned(), message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in action `{}`: {}", self.kind, self.action, self.message)
    }
}
