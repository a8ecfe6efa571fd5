//! A session snapshot (as `turnstile session import` reads it): parsed, imported into a store
//! that has its tenant and app, and resumed by a host — refused with a reason or resumed, never
//! a panic, and the host starts either way.
#![no_main]

use std::sync::Arc;
use turnstile::{MemoryStore, Snapshot, Store, TenantConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut snapshot) = Snapshot::parse(text) else { return };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let host = turnstile_fuzz::host_on(Arc::clone(&store)).expect("the host starts");
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    let version = host.deploy("t", "app", &turnstile_fuzz::trivial_app_bytes()).expect("deploys").version;
    drop(host);
    // Aim it at what exists, so the import gets as far as the resume.
    snapshot.tenant = "t".into();
    snapshot.app = "app".into();
    snapshot.snapshot.app = version;
    if turnstile::import_session(store.as_ref(), &snapshot).is_ok() {
        let _ = turnstile_fuzz::host_on(store);
    }
});
