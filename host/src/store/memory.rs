//! The in-memory store: checkpoints and key-value spaces in maps. Nothing survives the process;
//! it is for tests, benchmarks and the demo.

use super::{Checkpoint, Store};
use crate::error::Error;
use crate::scheduler::SessionId;
use crate::session::Session;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// Keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    kv: HashMap<String, BTreeMap<String, Vec<u8>>>,
    sessions: HashMap<SessionId, Session>,
}

impl MemoryStore {
    /// The last committed snapshot of a session.
    pub fn snapshot(&self, session: SessionId) -> Option<Session> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).sessions.get(&session).cloned()
    }
}

impl Store for MemoryStore {
    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.kv.get(tenant).and_then(|space| space.get(key)).cloned())
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kv
            .entry(tenant.to_owned())
            .or_default()
            .extend(writes);
        Ok(())
    }

    fn commit(&self, group: Vec<Checkpoint>) -> Result<(), Error> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for checkpoint in group {
            if !checkpoint.kv_writes.is_empty() {
                inner.kv.entry(checkpoint.tenant).or_default().extend(checkpoint.kv_writes);
            }
            inner.sessions.insert(checkpoint.session, checkpoint.snapshot);
        }
        Ok(())
    }
}
