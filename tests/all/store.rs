//! The store conformance suite: one contract, every store. Each test below runs against
//! `MemoryStore`, `SqliteStore` and `PgStore` (each PostgreSQL test in a schema of its own, dropped
//! afterwards), so that whatever a host relies on holds on each of them alike.
//!
//! PostgreSQL is found at `TURNSTILE_TEST_POSTGRES` (default: the local server's `test`
//! database); the suite fails, rather than skips, when it is not there.

use crate::durability::temp_dir;
use std::collections::BTreeMap;
use std::sync::Arc;
use turnstile::{
    AppRecord, Appended, Checkpoint, Counters, MemoryStore, PgStore, Session, SessionId, SessionRecord, SqliteStore,
    StartKey, Status, Store, TenantConfig, TenantRecord, TokenRecord, Unapplied, Write, Written,
};

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("TURNSTILE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own on the test server, dropped when this is dropped.
pub struct PgSchema {
    /// The store URL naming it.
    pub url: String,
}

impl PgSchema {
    /// A fresh schema for the test `name` (a leftover of an earlier run is dropped first).
    pub fn new(name: &str) -> PgSchema {
        let url = format!("{}?schema=t_{name}_{}", postgres_url(), std::process::id());
        PgStore::drop_schema(&url).expect("PostgreSQL is reachable at TURNSTILE_TEST_POSTGRES or 127.0.0.1:5432");
        PgSchema { url }
    }

    /// The URL with more parameters.
    pub fn url_with(&self, more: &str) -> String {
        format!("{}&{more}", self.url)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = PgStore::drop_schema(&self.url);
    }
}

/// One store under test, which can be opened again (a restart).
enum Subject {
    Memory(Arc<dyn Store>),
    Sqlite(std::path::PathBuf),
    Postgres(PgSchema),
}

impl Subject {
    fn new(kind: &str, name: &str) -> Subject {
        match kind {
            "memory" => Subject::Memory(Arc::new(MemoryStore::default())),
            "sqlite" => Subject::Sqlite(temp_dir(&format!("store-{name}")).join("turnstile.db")),
            _ => Subject::Postgres(PgSchema::new(name)),
        }
    }

    fn open(&self) -> Arc<dyn Store> {
        match self {
            Subject::Memory(store) => store.clone(),
            Subject::Sqlite(path) => Arc::new(SqliteStore::open(path).expect("opens")),
            Subject::Postgres(schema) => Arc::new(PgStore::open(&schema.url).expect("opens")),
        }
    }
}

fn session(status: Status, outputs: u64) -> Session {
    let counters = Counters { outputs, ..Counters::default() };
    Session { app: "v1".into(), status, state: b"{}".to_vec(), counters, last_failure: None, finished_ms: None }
}

fn ready() -> Status {
    Status::Ready { action: "start".into(), input: Vec::new() }
}

fn create(id: u64, tenant: &str) -> Write {
    Write::Create {
        record: SessionRecord {
            id: SessionId(id),
            tenant: tenant.into(),
            app: "bot".into(),
            snapshot: session(ready(), 0),
            fence: 0,
        },
        key: None,
    }
}

fn append(id: u64, event: &str, key: Option<&str>) -> Write {
    Write::Append {
        session: SessionId(id),
        tenant: "t".into(),
        event: event.as_bytes().to_vec(),
        key: key.map(str::to_owned),
    }
}

fn checkpoint(id: u64, tenant: &str, status: Status, outputs: &[&str], released: u64, consumed: Option<u64>) -> Write {
    Write::Checkpoint(Checkpoint {
        session: SessionId(id),
        tenant: tenant.into(),
        snapshot: session(status, released),
        outputs: outputs.iter().map(|o| (*o).to_owned()).collect(),
        kv_writes: BTreeMap::new(),
        consumed,
        fence: 0,
    })
}

fn done() -> Status {
    Status::Done { result: "ok".into() }
}

fn outputs(store: &Arc<dyn Store>, id: u64) -> Vec<(u64, String)> {
    store.outputs(SessionId(id), 0, 1000).expect("outputs")
}

fn catalogue_round_trips(kind: &str) {
    let subject = Subject::new(kind, "catalogue");
    let store = subject.open();
    let config = TenantConfig { weight: 3, ..TenantConfig::default() };
    store.put_tenant(&TenantRecord { name: "acme".into(), config: TenantConfig::default() }).expect("tenant");
    store.put_tenant(&TenantRecord { name: "acme".into(), config: config.clone() }).expect("updated");
    store.put_token(&TokenRecord { id: "t1".into(), tenant: "acme".into(), hash: "h1".into() }).expect("token");
    store.put_token(&TokenRecord { id: "t2".into(), tenant: "acme".into(), hash: "h2".into() }).expect("token");
    assert!(store.delete_token("acme", "t2").expect("revoked"));
    assert!(!store.delete_token("acme", "t2").expect("answers"), "a token is revoked once");
    assert!(!store.delete_token("other", "t1").expect("answers"), "only by its own tenant");
    let app = |version: &str| AppRecord { tenant: "acme".into(), app: "ivr".into(), version: version.into() };
    store.put_app(&app("hash-1"), b"module one").expect("app");
    store.put_app(&app("hash-2"), b"module two").expect("app");
    store.put_app(&app("hash-1"), b"module one").expect("back to the first");
    let image = subject.open().load().expect("loads");
    assert_eq!(image.tenants, [TenantRecord { name: "acme".into(), config }]);
    assert_eq!(image.tokens, [TokenRecord { id: "t1".into(), tenant: "acme".into(), hash: "h1".into() }]);
    assert_eq!(image.apps, [app("hash-1")]);
    assert_eq!(image.app_versions, [app("hash-1"), app("hash-2")], "each version once, oldest first");
    assert_eq!(image.modules.get("hash-2").map(Vec::as_slice), Some(&b"module two"[..]));
}

fn sessions_resume_with_inbox_outputs_and_kv(kind: &str) {
    let subject = Subject::new(kind, "resume");
    let store = subject.open();
    let written = store
        .commit(&[create(1, "acme"), append(1, "first", Some("k1")), append(1, "second", None), create(2, "acme")])
        .expect("commits");
    assert_eq!(
        written,
        [Written::Created, Written::Appended(Appended::New(1)), Written::Appended(Appended::New(2)), Written::Created]
    );
    let Write::Checkpoint(mut step) = checkpoint(1, "acme", ready(), &["hello", "world"], 2, Some(1)) else {
        unreachable!()
    };
    step.kv_writes.insert("balance".into(), b"7".to_vec());
    // Two checkpoints of one session in one batch, in order: outputs numbered on.
    let written =
        store.commit(&[Write::Checkpoint(step), checkpoint(1, "acme", ready(), &["again"], 3, None)]).expect("commits");
    assert_eq!(written, [Written::Committed, Written::Committed]);
    let store = subject.open();
    let image = store.load().expect("loads");
    let ids: Vec<u64> = image.sessions.iter().map(|s| s.record.id.0).collect();
    assert_eq!(ids, [1, 2]);
    let first = &image.sessions[0];
    assert_eq!(first.record.snapshot.counters.outputs, 3);
    assert_eq!(first.inbox.len(), 1, "the consumed event is gone, the other waits");
    assert_eq!((first.inbox[0].seq, first.inbox[0].event.as_slice()), (2, &b"second"[..]));
    assert_eq!(outputs(&store, 1), [(1, "hello".into()), (2, "world".into()), (3, "again".into())]);
    assert_eq!(store.outputs(SessionId(1), 1, 1).expect("a page"), [(2, "world".into())]);
    assert_eq!(store.kv_get("acme", "balance").expect("kv"), Some(b"7".to_vec()));
    assert_eq!(store.kv_get("other", "balance").expect("kv"), None, "key-value spaces are per tenant");
    assert_eq!(image.last_session_id, 2);
}

fn keys_make_events_idempotent_and_ended_sessions_report_them(kind: &str) {
    let subject = Subject::new(kind, "keys");
    let store = subject.open();
    store.commit(&[create(1, "acme"), append(1, "a", Some("k1")), append(1, "b", Some("k2"))]).expect("commits");
    let again = store.commit(&[append(1, "a", Some("k1")), append(1, "a", Some("k1"))]).expect("commits");
    assert_eq!(again, [Written::Appended(Appended::Duplicate), Written::Appended(Appended::Duplicate)]);
    // A key twice in one batch, beside events of another session: added once, numbered on.
    store.commit(&[create(2, "acme")]).expect("commits");
    let mixed = store
        .commit(&[append(2, "x", Some("k9")), append(1, "c", None), append(2, "x", Some("k9")), append(2, "y", None)])
        .expect("commits");
    assert_eq!(
        mixed,
        [
            Written::Appended(Appended::New(1)),
            Written::Appended(Appended::New(3)),
            Written::Appended(Appended::Duplicate),
            Written::Appended(Appended::New(2))
        ]
    );
    // The session takes k1's event and ends: k2's is reported, never dropped.
    store.commit(&[checkpoint(1, "acme", done(), &[], 0, Some(1))]).expect("commits");
    let after = store
        .commit(&[
            append(1, "a", Some("k1")),
            append(1, "b", Some("k2")),
            append(1, "c", Some("k3")),
            append(1, "d", None),
        ])
        .expect("commits");
    assert_eq!(
        after,
        [
            Written::Appended(Appended::Duplicate),
            Written::Appended(Appended::NotApplied),
            Written::Appended(Appended::SessionEnded),
            Written::Appended(Appended::SessionEnded)
        ]
    );
    let image = subject.open().load().expect("loads");
    assert!(image.sessions[0].inbox.is_empty());
    assert_eq!(
        image.sessions[0].unapplied,
        [Unapplied { seq: 2, key: Some("k2".into()) }, Unapplied { seq: 3, key: None }]
    );
    let inbox: Vec<(u64, Option<String>)> = image.sessions[1].inbox.iter().map(|e| (e.seq, e.key.clone())).collect();
    assert_eq!(inbox, [(1, Some("k9".into())), (2, None)]);
    // One session read on its own (as a host takes one back) is what the load gave of it.
    let store = subject.open();
    for stored in &image.sessions {
        assert_eq!(store.session(stored.record.id).expect("reads").as_ref(), Some(stored));
    }
    assert_eq!(store.session(SessionId(3)).expect("reads"), None, "never stored");
    // A key twice in one batch for an ended session: ended both times.
    let ended = store.commit(&[append(1, "z", Some("k7")), append(1, "z", Some("k7"))]).expect("commits");
    assert_eq!(ended, [Written::Appended(Appended::SessionEnded), Written::Appended(Appended::SessionEnded)]);
}

fn a_checkpoint_without_a_session_is_refused_alone(kind: &str) {
    let subject = Subject::new(kind, "unknown");
    let store = subject.open();
    let written = store
        .commit(&[
            create(1, "acme"),
            checkpoint(9, "acme", ready(), &["lost"], 1, None),
            checkpoint(1, "acme", ready(), &["kept"], 1, None),
        ])
        .expect("commits");
    assert_eq!(written, [Written::Created, Written::Fenced, Written::Committed]);
    assert!(outputs(&store, 9).is_empty());
    assert_eq!(outputs(&store, 1), [(1, "kept".into())]);
}

fn purges_take_only_finished_sessions_and_ids_stay_used(kind: &str) {
    let subject = Subject::new(kind, "purge");
    let store = subject.open();
    store.commit(&[create(1, "acme"), create(2, "acme"), create(3, "acme")]).expect("commits");
    store.commit(&[append(3, "e", Some("k")), append(2, "e", Some("k"))]).expect("appends");
    // More outputs than one purge chunk holds (4096).
    let many: Vec<String> = (0..5000).map(|n| format!("\"{n}\"")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    store
        .commit(&[checkpoint(3, "acme", done(), &many, 5000, None), checkpoint(1, "acme", done(), &[], 0, None)])
        .expect("commits");
    let mut purged = store.purge(&[SessionId(2), SessionId(3), SessionId(1), SessionId(7)]).expect("purges");
    purged.sort();
    assert_eq!(purged, [SessionId(1), SessionId(3)], "only finished sessions in the store");
    assert!(outputs(&store, 3).is_empty());
    assert_eq!(store.commit(&[append(2, "e", Some("k"))]).expect("appends"), [Written::Appended(Appended::Duplicate)]);
    let image = subject.open().load().expect("loads");
    assert_eq!(image.sessions.iter().map(|s| s.record.id.0).collect::<Vec<_>>(), [2]);
    assert_eq!(image.last_session_id, 3, "a purged id is never used again");
}

fn deleting_a_tenant_deletes_its_all_and_keeps_its_ids_used(kind: &str) {
    let subject = Subject::new(kind, "delete");
    let store = subject.open();
    for tenant in ["acme", "keep"] {
        store.put_tenant(&TenantRecord { name: tenant.into(), config: TenantConfig::default() }).expect("tenant");
        store.put_app(&AppRecord { tenant: tenant.into(), app: "a".into(), version: "h".into() }, b"m").expect("app");
        store.kv_put(tenant, [("k".to_owned(), b"v".to_vec())].into()).expect("kv");
    }
    store.commit(&[create(1, "keep"), create(5, "acme"), append(5, "e", Some("k"))]).expect("commits");
    store.commit(&[checkpoint(5, "acme", ready(), &["out"], 1, None)]).expect("commits");
    store.delete_tenant("acme").expect("deleted");
    let store = subject.open();
    let image = store.load().expect("loads");
    assert_eq!(image.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["keep"]);
    assert_eq!(image.apps.len(), 1);
    assert_eq!(image.sessions.iter().map(|s| s.record.id.0).collect::<Vec<_>>(), [1]);
    assert_eq!(image.last_session_id, 5);
    assert!(outputs(&store, 5).is_empty());
    assert_eq!(store.kv_get("acme", "k").expect("kv"), None);
    assert_eq!(store.kv_get("keep", "k").expect("kv"), Some(b"v".to_vec()));
}

fn the_last_key_value_write_of_a_batch_wins(kind: &str) {
    let subject = Subject::new(kind, "kvorder");
    let store = subject.open();
    store.commit(&[create(1, "acme"), create(2, "acme")]).expect("commits");
    let with_kv = |id: u64, value: &str| {
        let Write::Checkpoint(mut c) = checkpoint(id, "acme", ready(), &[], 0, None) else { unreachable!() };
        c.kv_writes.insert("shared".into(), value.as_bytes().to_vec());
        Write::Checkpoint(c)
    };
    store.commit(&[with_kv(1, "first"), with_kv(2, "second")]).expect("commits");
    assert_eq!(store.kv_get("acme", "shared").expect("kv"), Some(b"second".to_vec()));
    store.kv_put("acme", [("shared".to_owned(), b"operator".to_vec())].into()).expect("kv");
    assert_eq!(subject.open().kv_get("acme", "shared").expect("kv"), Some(b"operator".to_vec()));
    // A key may hold any character a guest sends, NUL included.
    store.commit(&[with_kv(1, "zero")]).expect("commits");
    let Write::Checkpoint(mut odd) = checkpoint(1, "acme", ready(), &[], 0, None) else { unreachable!() };
    odd.kv_writes.insert("nul\0key".into(), b"kept".to_vec());
    assert_eq!(store.commit(&[Write::Checkpoint(odd)]).expect("commits"), [Written::Committed]);
    assert_eq!(subject.open().kv_get("acme", "nul\0key").expect("kv"), Some(b"kept".to_vec()));
}

/// A creation under an idempotency key, asking for `request`.
fn create_keyed(id: u64, tenant: &str, key: &str, request: &str) -> Write {
    let Write::Create { record, .. } = create(id, tenant) else { unreachable!() };
    Write::Create { record, key: Some(StartKey { key: key.into(), request: request.into() }) }
}

fn a_start_key_starts_one_session_per_tenant_until_it_is_purged(kind: &str) {
    let subject = Subject::new(kind, "startkey");
    let store = subject.open();
    let again =
        |session: u64, same_request: bool| Written::AlreadyStarted { session: SessionId(session), same_request };
    // The second start under a key, in the same batch or a later one, finds the first.
    let written = store
        .commit(&[create_keyed(1, "acme", "k", "r"), create_keyed(2, "acme", "k", "r"), create(3, "acme")])
        .expect("commits");
    assert_eq!(written, [Written::Created, again(1, true), Written::Created]);
    let store = subject.open();
    assert_eq!(store.started_with("acme", "k").expect("reads"), Some((SessionId(1), "r".into())));
    assert_eq!(store.started_with("acme", "other").expect("reads"), None);
    assert_eq!(store.started_with("keep", "k").expect("reads"), None, "keys are each tenant's own");
    let written = store
        .commit(&[create_keyed(4, "acme", "k", "another request"), create_keyed(5, "keep", "k", "r")])
        .expect("commits");
    assert_eq!(written, [again(1, false), Written::Created]);
    let ids: Vec<u64> = store.load().expect("loads").sessions.iter().map(|s| s.record.id.0).collect();
    assert_eq!(ids, [1, 3, 5], "a start that found its session wrote nothing");
    // Purged with its session, the key starts a new one.
    store.commit(&[checkpoint(1, "acme", done(), &[], 0, None)]).expect("commits");
    assert_eq!(store.purge(&[SessionId(1)]).expect("purges"), [SessionId(1)]);
    assert_eq!(store.started_with("acme", "k").expect("reads"), None);
    assert_eq!(store.commit(&[create_keyed(6, "acme", "k", "r")]).expect("commits"), [Written::Created]);
    // Deleted with its tenant.
    store.delete_tenant("keep").expect("deleted");
    assert_eq!(subject.open().started_with("keep", "k").expect("reads"), None);
}

/// Runs each contract test against each store.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory { $( #[test] fn $test() { super::$test("memory") } )* }
        mod sqlite { $( #[test] fn $test() { super::$test("sqlite") } )* }
        mod postgres { $( #[test] fn $test() { super::$test("postgres") } )* }
    };
}

conformance!(
    catalogue_round_trips,
    sessions_resume_with_inbox_outputs_and_kv,
    keys_make_events_idempotent_and_ended_sessions_report_them,
    a_checkpoint_without_a_session_is_refused_alone,
    purges_take_only_finished_sessions_and_ids_stay_used,
    deleting_a_tenant_deletes_its_all_and_keeps_its_ids_used,
    the_last_key_value_write_of_a_batch_wins,
    a_start_key_starts_one_session_per_tenant_until_it_is_purged,
);
