//! Tenants' API tokens, kept as their sha-256: who a bearer token acts for. Looked up on every
//! API request, so reads take no lock (a copy-on-write map swapped atomically); issuing and
//! revoking (rare) copy it.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A live token: its id and its tenant.
#[derive(Debug, Clone)]
struct Token {
    id: String,
    tenant: Arc<str>,
}

/// Live tokens by hash.
#[derive(Default)]
pub(crate) struct Tokens {
    by_hash: ArcSwap<HashMap<String, Token>>,
    write: Mutex<()>,
}

/// sha-256 of a token, hex: what is stored and looked up.
pub(crate) fn token_hash(token: &str) -> String {
    crate::app::module_hash(token.as_bytes())
}

impl Tokens {
    /// The tenant a token acts for, if it is live.
    pub(crate) fn tenant_of(&self, token: &str) -> Option<Arc<str>> {
        self.by_hash.load().get(&token_hash(token)).map(|t| t.tenant.clone())
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<String, Token>)) {
        let _write = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = HashMap::clone(&self.by_hash.load());
        change(&mut map);
        self.by_hash.store(Arc::new(map));
    }

    pub(crate) fn insert(&self, hash: String, id: String, tenant: Arc<str>) {
        self.update(|map| {
            map.insert(hash, Token { id, tenant });
        });
    }

    /// Revokes token `id` of `tenant`.
    pub(crate) fn revoke(&self, tenant: &str, id: &str) {
        self.update(|map| map.retain(|_, t| !(t.id == id && &*t.tenant == tenant)));
    }

    /// Revokes every token of `tenant`.
    pub(crate) fn revoke_all(&self, tenant: &str) {
        self.update(|map| map.retain(|_, t| &*t.tenant != tenant));
    }
}
