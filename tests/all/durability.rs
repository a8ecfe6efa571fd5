//! Checkpoints and recovery: a host rebuilt on the store of a previous one resumes every
//! session where its last checkpoint left it, on the in-memory and the SQLite store alike;
//! customer events are applied exactly once; bad data is refused and left untouched.

use crate::fixtures::{abi_module, example, outputs_of};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use turnstile::{
    Delivery, EngineConfig, Host, HostConfig, MemoryStore, RuntimeConfig, SessionEvent, SessionId, SqliteStore, Status,
    Store, StoreError, TenantConfig,
};

/// A directory of its own under the system's temp dir, emptied first.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnstile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn host_on(store: Arc<dyn Store>, cache: &std::path::Path) -> Host {
    let engine = EngineConfig { cache_dir: Some(cache.to_path_buf()), pool_instances: 8, ..EngineConfig::default() };
    let config = HostConfig {
        workers: 2,
        store,
        runtime: RuntimeConfig { engine, ..RuntimeConfig::default() },
        ..HostConfig::default()
    };
    Host::new(config).expect("host starts")
}

pub fn wait_for(events: &Receiver<SessionEvent>, session: SessionId, pred: impl Fn(&Status) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events.recv_timeout(left).expect("the session moves on");
        if event.session == session && pred(&event.status) {
            return;
        }
    }
}

pub fn waiting(status: &Status) -> bool {
    matches!(status, Status::Waiting { .. })
}

/// A waiting app: `start` waits for `answer` (with a timeout, or for ever), which is done.
pub fn wait_app(timeout_ms: Option<u64>) -> Vec<u8> {
    let wait = match timeout_ms {
        Some(ms) => format!(r#"{{"wait":{{"action":"answer","timeout_ms":{ms},"on_timeout":"expired"}}}}"#),
        None => r#"{"wait":{"action":"answer"}}"#.to_owned(),
    };
    abi_module(&format!(
        r#"(data (i32.const 0) "{escaped}")
           (data (i32.const 200) "{{\"done\":\"answered\"}}")
           (data (i32.const 300) "{{\"done\":\"expired\"}}")
           (func (export "start") (result i32) (call $next (i32.const 0) (i32.const {len})) i32.const 0)
           (func (export "answer") (result i32)
             (call $input_read (i32.const 1000)) (call $emit (i32.const 1000) (call $input_len))
             (call $next (i32.const 200) (i32.const 19)) i32.const 0)
           (func (export "expired") (result i32) (call $next (i32.const 300) (i32.const 18)) i32.const 0)"#,
        escaped = wait.replace('"', "\\\""),
        len = wait.len()
    ))
}

fn resumes_every_session(store: impl Fn() -> Arc<dyn Store>, name: &str) {
    let cache = temp_dir(&format!("{name}-cache"));
    let (call, finished, expiring, patient);
    let outputs_before;
    {
        let host = host_on(store(), &cache);
        let events = host.subscribe();
        host.create_tenant("bank", TenantConfig::default()).expect("tenant");
        host.kv_put("bank", [("balance:demo".to_owned(), b"7 EUR".to_vec())]).expect("kv");
        host.deploy("bank", "ivr", &example("ivr_menu")).expect("deploys");
        host.deploy("bank", "short", &wait_app(Some(1000))).expect("deploys");
        host.deploy("bank", "patient", &wait_app(None)).expect("deploys");

        call = host.start_session("bank", "ivr", "start", Vec::new()).expect("starts");
        wait_for(&events, call, waiting);
        host.deliver("bank", call, b"1".to_vec(), None).expect("delivered");
        wait_for(&events, call, waiting);
        finished = host.start_session("bank", "ivr", "start", Vec::new()).expect("starts");
        wait_for(&events, finished, waiting);
        host.deliver("bank", finished, b"9".to_vec(), None).expect("delivered");
        wait_for(&events, finished, Status::is_finished);
        expiring = host.start_session("bank", "short", "start", Vec::new()).expect("starts");
        patient = host.start_session("bank", "patient", "start", Vec::new()).expect("starts");
        wait_for(&events, patient, waiting);
        outputs_before = outputs_of(&host, "bank", call);
        assert!(outputs_before.iter().any(|o| o.contains("Your balance is 7 EUR.")), "{outputs_before:?}");
    }

    // A new host on the same store: everything is where it was.
    let host = host_on(store(), &cache);
    assert_eq!(host.runtime().compile_stats().compiled, 0, "recovery compiles nothing compiled before");
    let events = host.subscribe();
    let view = host.session("bank", call).expect("resumed");
    assert!(waiting(&view.status), "{:?}", view.status);
    assert_eq!(outputs_of(&host, "bank", call), outputs_before, "released outputs are kept, none twice");
    assert_eq!(view.outputs, outputs_before.len() as u64);
    assert!(host.session("bank", finished).expect("kept").status.is_finished());
    // The short wait's timer was re-armed with what was left of it, and fires.
    if !host.session("bank", expiring).expect("s").status.is_finished() {
        wait_for(&events, expiring, Status::is_finished);
    }
    assert_eq!(host.session("bank", expiring).expect("s").status, Status::Done { result: "expired".into() });
    // The others take events as before.
    host.deliver("bank", call, b"9".to_vec(), None).expect("delivered");
    wait_for(&events, call, Status::is_finished);
    host.deliver("bank", patient, br#""still here""#.to_vec(), None).expect("delivered");
    wait_for(&events, patient, Status::is_finished);
    assert_eq!(outputs_of(&host, "bank", patient), [r#""still here""#]);
    // New sessions get new ids.
    let fresh = host.start_session("bank", "patient", "start", Vec::new()).expect("starts");
    assert!(fresh.0 > patient.0.max(call.0).max(expiring.0), "{fresh} reuses an id");
}

#[test]
fn a_host_on_a_memory_store_resumes_every_session() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    resumes_every_session(|| store.clone(), "memory");
}

#[test]
fn a_host_on_sqlite_resumes_every_session() {
    let dir = temp_dir("sqlite-resume");
    let path = dir.join("turnstile.db");
    resumes_every_session(|| Arc::new(SqliteStore::open(&path).expect("opens")), "sqlite");
}

#[test]
fn a_host_on_postgres_resumes_every_session() {
    let schema = crate::store::PgSchema::new("host_resume");
    resumes_every_session(|| Arc::new(turnstile::PgStore::open(&schema.url).expect("opens")), "postgres");
}

#[test]
fn a_retried_event_with_the_same_key_is_acknowledged_and_applied_once() {
    let dir = temp_dir("idempotent");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let host = host_on(store, &dir.join("cache"));
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let id = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, id, waiting);
    let first = host.deliver("t", id, br#""once""#.to_vec(), Some("evt-1")).expect("delivered");
    let again = host.deliver("t", id, br#""once""#.to_vec(), Some("evt-1")).expect("acknowledged");
    assert_eq!((first, again), (Delivery::Accepted, Delivery::Duplicate));
    wait_for(&events, id, Status::is_finished);
    assert_eq!(outputs_of(&host, "t", id), [r#""once""#]);
    // A key seen before is a duplicate even after the session ended; a new event is refused.
    assert_eq!(host.deliver("t", id, b"x".to_vec(), Some("evt-1")).expect("acknowledged"), Delivery::Duplicate);
    assert_eq!(host.deliver("t", id, b"x".to_vec(), Some("evt-2")).expect_err("finished").code(), "session_state");
}

#[test]
fn bad_databases_are_refused_with_a_clear_error_and_left_untouched() {
    let dir = temp_dir("bad-db");
    // Not a database at all.
    let junk = dir.join("junk.db");
    std::fs::write(&junk, b"this is not sqlite, just text that is long enough to matter ".repeat(100)).expect("write");
    let before = std::fs::read(&junk).expect("read");
    let error = SqliteStore::open(&junk).expect_err("refused");
    assert!(matches!(error, StoreError::NotADatabase { .. }), "{error}");
    assert!(error.to_string().contains("not a readable Turnstile database"), "{error}");
    assert_eq!(std::fs::read(&junk).expect("read"), before, "left untouched");

    // A real database cut in half.
    let good = dir.join("good.db");
    {
        let store = SqliteStore::open(&good).expect("opens");
        for n in 0..200 {
            let tenant = turnstile::TenantRecord { name: format!("tenant-{n}"), config: TenantConfig::default() };
            store.put_tenant(&tenant).expect("stored");
        }
    }
    let bytes = std::fs::read(&good).expect("read");
    let truncated = dir.join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let error = SqliteStore::open(&truncated).expect_err("refused");
    assert!(matches!(error, StoreError::NotADatabase { .. } | StoreError::Damaged { .. }), "{error}");

    // A database from a newer Turnstile.
    let newer = dir.join("newer.db");
    std::fs::copy(&good, &newer).expect("copy");
    set_user_version(&newer, 99);
    let error = SqliteStore::open(&newer).expect_err("refused");
    assert!(error.to_string().contains("schema version 99, newer"), "{error}");
    // The good one still opens, with everything in it.
    let image = SqliteStore::open(&good).expect("opens").load().expect("loads");
    assert_eq!(image.tenants.len(), 200);
}

/// Sets a database's `user_version` by patching its header (bytes 60..64, big-endian), as a
/// newer Turnstile would have left it.
fn set_user_version(path: &std::path::Path, version: u32) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[60..64].copy_from_slice(&version.to_be_bytes());
    std::fs::write(path, bytes).expect("write");
}

fn sqlite_host(dir: &std::path::Path) -> Host {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    host_on(store, &dir.join("modules"))
}

fn turnstile(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_turnstile")).args(args).output().expect("turnstile runs")
}

#[test]
fn a_session_exported_from_one_host_resumes_on_another() {
    let root = temp_dir("snapshot");
    let (first, second, third) = (root.join("first"), root.join("second"), root.join("third"));
    let session = {
        let host = sqlite_host(&first);
        let events = host.subscribe();
        host.create_tenant("shop", TenantConfig::default()).expect("tenant");
        host.deploy("shop", "bot", &example("order_bot")).expect("deploys");
        let id = host.start_session("shop", "bot", "start", Vec::new()).expect("starts");
        wait_for(&events, id, waiting);
        host.deliver("shop", id, b"pizza".to_vec(), None).expect("delivered");
        wait_for(&events, id, waiting);
        id
    };
    for (dir, module) in [(&second, example("order_bot")), (&third, example("ivr_menu"))] {
        let host = sqlite_host(dir);
        host.create_tenant("shop", TenantConfig::default()).expect("tenant");
        host.deploy("shop", "bot", &module).expect("deploys");
    }

    let file = root.join("session.json");
    let out = turnstile(&[
        "session".as_ref(),
        "export".as_ref(),
        "--data-dir".as_ref(),
        first.as_os_str(),
        "--session".as_ref(),
        session.0.to_string().as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot = turnstile::Snapshot::parse(&std::fs::read_to_string(&file).expect("written")).expect("parses");
    assert_eq!((snapshot.tenant.as_str(), snapshot.app.as_str()), ("shop", "bot"));

    // A host without that app version refuses it, clearly.
    let out =
        turnstile(&["session".as_ref(), "import".as_ref(), "--data-dir".as_ref(), third.as_os_str(), file.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks app version"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One that has it resumes the conversation where it was.
    let out = turnstile(&[
        "session".as_ref(),
        "import".as_ref(),
        "--data-dir".as_ref(),
        second.as_os_str(),
        file.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let host = sqlite_host(&second);
    let events = host.subscribe();
    let (tenant, view) = host.sessions().into_iter().next().expect("imported");
    assert_eq!(tenant, "shop");
    assert!(waiting(&view.status), "{:?}", view.status);
    host.deliver("shop", view.id, b"2".to_vec(), None).expect("delivered");
    wait_for(&events, view.id, waiting);
    host.deliver("shop", view.id, b"yes".to_vec(), None).expect("delivered");
    wait_for(&events, view.id, Status::is_finished);
    match host.session("shop", view.id).expect("s").status {
        Status::Done { result } => {
            assert_eq!((result["item"].clone(), result["quantity"].clone()), ("pizza".into(), 2.into()))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn snapshots_that_do_not_parse_are_refused_with_the_reason() {
    for (text, reason) in [
        ("{\"format\": \"turnstile-session-snapshot\", \"vers", "not JSON"),
        ("{\"hello\": 1}", "not a Turnstile session snapshot"),
        ("{\"format\": \"turnstile-session-snapshot\", \"version\": 99}", "format version 99"),
        ("{\"format\": \"turnstile-session-snapshot\", \"version\": 1, \"session\": 1}", "malformed snapshot"),
    ] {
        let error = turnstile::Snapshot::parse(text).expect_err("refused");
        assert_eq!(error.code(), "bad_snapshot");
        assert!(error.to_string().contains(reason), "{error} should say {reason}");
    }
}

#[test]
fn key_value_reads_in_a_loop_never_make_a_commit_fail() {
    let dir = temp_dir("kv-hammer");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let host = host_on(store.clone(), &dir.join("cache"));
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.kv_put("t", [("k".to_owned(), vec![b'v'; 1024])]).expect("kv");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.kv_get("t", "k").expect("a read never fails");
                }
            })
        })
        .collect();
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    for _ in 0..300 {
        let id = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
        wait_for(&events, id, waiting);
        host.deliver("t", id, br#""x""#.to_vec(), None).expect("delivered");
        wait_for(&events, id, Status::is_finished);
        assert!(matches!(host.session("t", id).expect("s").status, Status::Done { .. }));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader");
    }
}

/// Under a steady load the commit queue never empties. A caller that had to lead a group commit
/// (its new session had no one else to commit it) is relieved by the next worker once its own
/// write is done, instead of leading for as long as the load lasts: here a new session's start
/// answers while every session of the load is still running.
#[test]
fn a_caller_is_not_kept_leading_commits_while_a_load_lasts() {
    let schema = crate::store::PgSchema::new("relief");
    let cache = temp_dir("relief-cache");
    let host = host_on(Arc::new(turnstile::PgStore::open(&schema.url).expect("opens")), &cache);
    host.create_tenant("load", TenantConfig::default()).expect("tenant");
    host.deploy(
        "load",
        "loop",
        &abi_module(
            r#"(data (i32.const 0) "{\"goto\":\"tick\"}")
        (func (export "tick") (result i32) (call $next (i32.const 0) (i32.const 15)) i32.const 0)"#,
        ),
    )
    .expect("deploys");
    host.deploy("load", "patient", &wait_app(None)).expect("deploys");
    let load: Vec<SessionId> =
        (0..64).map(|_| host.start_session("load", "loop", "tick", Vec::new()).expect("starts")).collect();
    for _ in 0..20 {
        host.start_session("load", "patient", "start", Vec::new()).expect("starts while the load runs");
    }
    let finished = load.iter().filter(|id| host.session("load", **id).expect("known").status.is_finished()).count();
    assert_eq!(finished, 0, "every start answered while the load was still running");
}
