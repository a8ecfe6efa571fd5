//! Compiled modules on demand: a session's code comes from the runtime while it holds it, and
//! otherwise from the store's bytes (compiled again, or read back from the disk cache). The
//! housekeeping thread evicts what no session has held or asked for lately, so a host with many
//! apps, most of them idle, holds compiled code only for those in use.

use super::kernel::Kernel;
use crate::app::App;
use crate::error::Error;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

impl Kernel {
    /// The compiled code of the app version `hash`, loaded from the store if it is not held.
    pub(crate) fn code(&self, hash: &str) -> Result<Arc<App>, Error> {
        if let Some(app) = self.runtime().loaded(hash) {
            return Ok(app);
        }
        let bytes = self.store().module(hash)?.ok_or_else(|| StoreError::MissingModule(hash.to_owned()))?;
        let app = self.runtime().reload(&bytes)?;
        tracing::debug!(module = hash, "an evicted module was loaded again");
        Ok(app)
    }

    /// Evicts the modules no session holds and no one asked for in `idle`.
    pub(crate) fn evict_idle_modules(&self, idle: Duration) {
        let evicted = self.runtime().evict_idle(idle);
        if evicted > 0 {
            tracing::debug!(evicted, "unused compiled modules evicted");
        }
    }
}
