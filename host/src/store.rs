//! Where sessions' checkpoints and tenants' key-value spaces are kept, behind one trait.
//!
//! The host calls [`Store::commit`] once an action completes, with the atomic record of what it
//! did (a [`Checkpoint`]), and only then releases its outputs and schedules its next step. Key-value
//! reads of actions go to the store too, so the writes of committed actions are what they see.
//!
//! Implementations: [`MemoryStore`] (tests, benchmarks, the demo). The durable stores (SQLite for
//! one node, PostgreSQL with leases and fencing for a cluster) implement the same trait.

mod memory;

pub use memory::MemoryStore;

use crate::error::Error;
use crate::scheduler::SessionId;
use crate::session::Session;
use std::collections::BTreeMap;

/// The atomic record of one completed action.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The session.
    pub session: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// The session after the action (state, next step, counters).
    pub snapshot: Session,
    /// Outputs the action released, in order.
    pub outputs: Vec<String>,
    /// Key-value writes of the action.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
}

/// A place to keep checkpoints and key-value spaces.
pub trait Store: Send + Sync {
    /// The value under `key` in `tenant`'s key-value space.
    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Sets keys in `tenant`'s key-value space outside any action (an operator seeding data).
    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), Error>;
    /// Commits a group of checkpoints atomically: all of them, or none.
    fn commit(&self, group: Vec<Checkpoint>) -> Result<(), Error>;
}
