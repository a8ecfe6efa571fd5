//! The in-memory store: everything in maps. A host dropped and rebuilt on the same store resumes
//! from it (that is how recovery is tested without a disk); nothing survives the process.

use super::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, SessionRecord, Store, StoredSession, TenantRecord, TokenRecord,
};
use crate::error::Error;
use crate::scheduler::SessionId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// Keeps everything in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tenants: BTreeMap<String, TenantRecord>,
    apps: BTreeMap<(String, String), AppRecord>,
    app_versions: Vec<AppRecord>,
    modules: BTreeMap<String, Vec<u8>>,
    sessions: BTreeMap<SessionId, StoredSession>,
    next_seq: HashMap<SessionId, u64>,
    keys: HashSet<(SessionId, String)>,
    kv: HashMap<String, BTreeMap<String, Vec<u8>>>,
    tokens: BTreeMap<String, TokenRecord>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn no_session(session: SessionId) -> Error {
    Error::Store(format!("session {session} is not in the store"))
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Image, Error> {
        let inner = self.lock();
        Ok(Image {
            tenants: inner.tenants.values().cloned().collect(),
            apps: inner.apps.values().cloned().collect(),
            app_versions: inner.app_versions.clone(),
            modules: inner.modules.clone(),
            sessions: inner.sessions.values().cloned().collect(),
            tokens: inner.tokens.values().cloned().collect(),
        })
    }

    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), Error> {
        self.lock().tenants.insert(tenant.name.clone(), tenant.clone());
        Ok(())
    }

    fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.tenants.remove(name);
        inner.apps.retain(|(tenant, _), _| tenant != name);
        inner.app_versions.retain(|a| a.tenant != name);
        inner.sessions.retain(|_, s| s.record.tenant != name);
        inner.kv.remove(name);
        inner.tokens.retain(|_, t| t.tenant != name);
        Ok(())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), Error> {
        self.lock().tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, Error> {
        let mut inner = self.lock();
        let found = inner.tokens.get(id).is_some_and(|t| t.tenant == tenant);
        if found {
            inner.tokens.remove(id);
        }
        Ok(found)
    }

    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.modules.entry(app.version.clone()).or_insert_with(|| module.to_vec());
        if !inner.app_versions.contains(app) {
            inner.app_versions.push(app.clone());
        }
        inner.apps.insert((app.tenant.clone(), app.app.clone()), app.clone());
        Ok(())
    }

    fn create_session(&self, session: &SessionRecord) -> Result<(), Error> {
        let stored = StoredSession { record: session.clone(), inbox: Vec::new(), outputs: Vec::new() };
        self.lock().sessions.insert(session.id, stored);
        Ok(())
    }

    fn append_event(&self, session: SessionId, event: &[u8], key: Option<&str>) -> Result<Appended, Error> {
        let mut inner = self.lock();
        if !inner.sessions.contains_key(&session) {
            return Err(no_session(session));
        }
        if let Some(key) = key
            && !inner.keys.insert((session, key.to_owned()))
        {
            return Ok(Appended::Duplicate);
        }
        let seq = inner.next_seq.entry(session).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let stored = inner.sessions.get_mut(&session).ok_or_else(|| no_session(session))?;
        stored.inbox.push(InboxEvent { seq, event: event.to_vec() });
        Ok(Appended::New(seq))
    }

    fn has_event_key(&self, session: SessionId, key: &str) -> Result<bool, Error> {
        Ok(self.lock().keys.contains(&(session, key.to_owned())))
    }

    fn commit(&self, group: &[Checkpoint]) -> Result<(), Error> {
        let mut inner = self.lock();
        // All or none: check every fencing token before changing anything.
        for checkpoint in group {
            let stored = inner.sessions.get(&checkpoint.session).ok_or_else(|| no_session(checkpoint.session))?;
            if stored.record.fence != checkpoint.fence {
                return Err(Error::Fenced { session: checkpoint.session.to_string() });
            }
        }
        for checkpoint in group {
            if !checkpoint.kv_writes.is_empty() {
                inner.kv.entry(checkpoint.tenant.clone()).or_default().extend(checkpoint.kv_writes.clone());
            }
            let stored = inner.sessions.get_mut(&checkpoint.session).ok_or_else(|| no_session(checkpoint.session))?;
            stored.record.snapshot = checkpoint.snapshot.clone();
            stored.outputs.extend(checkpoint.outputs.iter().cloned());
            if let Some(consumed) = checkpoint.consumed {
                stored.inbox.retain(|e| e.seq != consumed);
            }
        }
        Ok(())
    }

    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().kv.get(tenant).and_then(|space| space.get(key)).cloned())
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
        self.lock().kv.entry(tenant.to_owned()).or_default().extend(writes);
        Ok(())
    }
}
