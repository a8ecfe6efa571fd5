//! The in-memory store: everything in maps. A host dropped and rebuilt on the same store resumes
//! from it (that is how recovery is tested without a disk); nothing survives the process.

use super::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, SessionRecord, StartKey, StorageUsage, Store, StoreError,
    StoredSession, TenantRecord, TokenRecord, Unapplied, Write, Written,
};
use crate::session::SessionId;
use std::collections::{BTreeMap, HashMap};
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
    sessions: BTreeMap<SessionId, Stored>,
    kv: HashMap<String, BTreeMap<String, Vec<u8>>>,
    tokens: BTreeMap<String, TokenRecord>,
    /// The sessions started under an idempotency key, by (tenant, key).
    started: HashMap<(String, String), SessionId>,
    /// The highest session id purged (ids are never used twice).
    purged_up_to: u64,
}

/// One session's rows.
#[derive(Debug, Clone)]
struct Stored {
    record: SessionRecord,
    inbox: Vec<InboxEvent>,
    unapplied: Vec<Unapplied>,
    outputs: Vec<String>,
    next_seq: u64,
    /// Idempotency keys seen, with the sequence number of their event.
    keys: HashMap<String, u64>,
    /// The key it was started under.
    start_key: Option<StartKey>,
}

impl Stored {
    /// The session as a host takes it back.
    fn taken_back(&self) -> StoredSession {
        StoredSession { record: self.record.clone(), inbox: self.inbox.clone(), unapplied: self.unapplied.clone() }
    }
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn create(&mut self, record: &SessionRecord, key: Option<&StartKey>) -> Written {
        if let Some(key) = key {
            let by = (record.tenant.clone(), key.key.clone());
            if let Some(session) = self.started.get(&by).copied() {
                let same_request = self
                    .sessions
                    .get(&session)
                    .and_then(|s| s.start_key.as_ref())
                    .is_some_and(|k| k.request == key.request);
                return Written::AlreadyStarted { session, same_request };
            }
            self.started.insert(by, record.id);
        }
        let stored = Stored {
            record: record.clone(),
            inbox: Vec::new(),
            unapplied: Vec::new(),
            outputs: Vec::new(),
            next_seq: 0,
            keys: HashMap::new(),
            start_key: key.cloned(),
        };
        self.sessions.insert(record.id, stored);
        Written::Created
    }

    /// Forgets a session with everything kept for it.
    fn remove(&mut self, id: SessionId) {
        if let Some(stored) = self.sessions.remove(&id)
            && let Some(key) = stored.start_key
        {
            self.started.remove(&(stored.record.tenant, key.key));
        }
    }

    fn append(&mut self, session: SessionId, event: &[u8], key: Option<&str>) -> Appended {
        let Some(stored) = self.sessions.get_mut(&session) else { return Appended::SessionEnded };
        if let Some(seq) = key.and_then(|key| stored.keys.get(key)) {
            return if stored.unapplied.iter().any(|u| u.seq == *seq) {
                Appended::NotApplied
            } else {
                Appended::Duplicate
            };
        }
        if stored.record.snapshot.status.is_finished() {
            return Appended::SessionEnded;
        }
        stored.next_seq += 1;
        let seq = stored.next_seq;
        if let Some(key) = key {
            stored.keys.insert(key.to_owned(), seq);
        }
        stored.inbox.push(InboxEvent { seq, event: event.to_vec(), key: key.map(str::to_owned) });
        Appended::New(seq)
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint) -> Written {
        let Some(stored) = self.sessions.get_mut(&checkpoint.session) else { return Written::Fenced };
        if stored.record.fence != checkpoint.fence {
            return Written::Fenced;
        }
        stored.record.snapshot = checkpoint.snapshot.clone();
        stored.outputs.extend(checkpoint.outputs.iter().cloned());
        if let Some(consumed) = checkpoint.consumed {
            stored.inbox.retain(|e| e.seq != consumed);
        }
        if checkpoint.snapshot.status.is_finished() {
            stored.unapplied.extend(stored.inbox.drain(..).map(|e| Unapplied { seq: e.seq, key: e.key }));
        }
        if !checkpoint.kv_writes.is_empty() {
            self.kv.entry(checkpoint.tenant.clone()).or_default().extend(checkpoint.kv_writes.clone());
        }
        Written::Committed
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Image, StoreError> {
        let inner = self.lock();
        Ok(Image {
            tenants: inner.tenants.values().cloned().collect(),
            apps: inner.apps.values().cloned().collect(),
            app_versions: inner.app_versions.clone(),
            modules: inner.modules.clone(),
            sessions: inner.sessions.values().map(Stored::taken_back).collect(),
            tokens: inner.tokens.values().cloned().collect(),
            quarantined: Vec::new(),
            last_session_id: inner.sessions.keys().last().map_or(0, |id| id.0).max(inner.purged_up_to),
        })
    }

    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.lock().sessions.get(&id).map(Stored::taken_back))
    }

    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.lock().tenants.insert(tenant.name.clone(), tenant.clone());
        Ok(())
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.tenants.remove(name);
        inner.apps.retain(|(tenant, _), _| tenant != name);
        inner.app_versions.retain(|a| a.tenant != name);
        // Its sessions' ids stay used.
        let last = inner.sessions.values().filter(|s| s.record.tenant == name).map(|s| s.record.id.0).max();
        inner.purged_up_to = inner.purged_up_to.max(last.unwrap_or(0));
        inner.sessions.retain(|_, s| s.record.tenant != name);
        inner.started.retain(|(tenant, _), _| tenant != name);
        inner.kv.remove(name);
        inner.tokens.retain(|_, t| t.tenant != name);
        Ok(())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.lock().tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let found = inner.tokens.get(id).is_some_and(|t| t.tenant == tenant);
        if found {
            inner.tokens.remove(id);
        }
        Ok(found)
    }

    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.modules.entry(app.version.clone()).or_insert_with(|| module.to_vec());
        if !inner.app_versions.contains(app) {
            inner.app_versions.push(app.clone());
        }
        inner.apps.insert((app.tenant.clone(), app.app.clone()), app.clone());
        Ok(())
    }

    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut inner = self.lock();
        Ok(batch
            .iter()
            .map(|write| match write {
                Write::Create { record, key } => inner.create(record, key.as_ref()),
                Write::Append { session, event, key, .. } => {
                    Written::Appended(inner.append(*session, event, key.as_deref()))
                }
                Write::Checkpoint(checkpoint) => inner.checkpoint(checkpoint),
            })
            .collect())
    }

    fn outputs(&self, session: SessionId, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let inner = self.lock();
        let Some(stored) = inner.sessions.get(&session) else { return Ok(Vec::new()) };
        let skip = usize::try_from(after).unwrap_or(usize::MAX);
        Ok((after + 1..).zip(stored.outputs.iter().skip(skip).take(limit).cloned()).collect())
    }

    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().modules.get(hash).cloned())
    }

    fn started_with(&self, tenant: &str, key: &str) -> Result<Option<(SessionId, String)>, StoreError> {
        let inner = self.lock();
        let Some(session) = inner.started.get(&(tenant.to_owned(), key.to_owned())) else { return Ok(None) };
        let request = inner.sessions.get(session).and_then(|s| s.start_key.as_ref()).map(|k| k.request.clone());
        Ok(request.map(|request| (*session, request)))
    }

    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().kv.get(tenant).and_then(|space| space.get(key)).cloned())
    }

    fn purge(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
        let mut inner = self.lock();
        let mut purged = Vec::new();
        for id in sessions {
            if inner.sessions.get(id).is_some_and(|s| s.record.snapshot.status.is_finished()) {
                inner.remove(*id);
                inner.purged_up_to = inner.purged_up_to.max(id.0);
                purged.push(*id);
            }
        }
        Ok(purged)
    }

    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        self.lock().kv.entry(tenant.to_owned()).or_default().extend(writes);
        Ok(())
    }

    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
        let inner = self.lock();
        let mut usage: BTreeMap<String, StorageUsage> = BTreeMap::new();
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        for (tenant, kv) in &inner.kv {
            usage.entry(tenant.clone()).or_default().kv_bytes = kv.iter().map(|(k, v)| bytes(k.len() + v.len())).sum();
        }
        for stored in inner.sessions.values() {
            let tenant = usage.entry(stored.record.tenant.clone()).or_default();
            tenant.output_bytes += stored.outputs.iter().map(|o| bytes(o.len())).sum::<u64>();
            tenant.event_keys += bytes(stored.keys.len());
        }
        let versions: std::collections::BTreeSet<(&str, &str)> =
            inner.app_versions.iter().map(|a| (a.tenant.as_str(), a.version.as_str())).collect();
        for (tenant, version) in versions {
            let module = inner.modules.get(version).map_or(0, |m| bytes(m.len()));
            usage.entry(tenant.to_owned()).or_default().module_bytes += module;
        }
        Ok(usage)
    }
}
