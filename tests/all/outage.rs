//! A store that fails for a while (a full disk, a lost database): nothing acknowledged that was
//! not committed, no session lost or stopped, new work refused with `store_unavailable` (the
//! API, `/readyz` and the metrics say so), and the host back to work by itself when the store is.

use crate::durability::{host_on, temp_dir, wait_app, wait_for, waiting};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tower::ServiceExt;
use turnstile::api::{Api, router};
use turnstile::{
    AppRecord, Error, Host, Image, SessionEvent, SessionId, SqliteStore, Status, StorageUsage, Store, StoreError,
    StoredSession, TenantConfig, TenantRecord, TokenRecord, Write, Written,
};

/// A store whose writes fail on command, as a full disk's would; reads go through. It can also
/// spoil one session's checkpoints: refuse them (an error of their own), or commit them and
/// answer that it could not tell whether they landed.
struct FailingStore {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
    refused: AtomicU64,
    spoiled: std::sync::Mutex<Option<Spoiled>>,
}

/// Whose checkpoints are spoiled, how, and how many more times.
#[derive(Clone, Copy)]
struct Spoiled {
    session: SessionId,
    landed: bool,
    times: u32,
}

impl FailingStore {
    fn new(inner: Arc<dyn Store>) -> FailingStore {
        FailingStore { inner, failing: AtomicBool::new(false), refused: 0.into(), spoiled: Default::default() }
    }

    /// Spoils `session`'s next `times` checkpoints.
    fn spoil(&self, session: SessionId, landed: bool, times: u32) {
        *self.spoiled.lock().expect("spoiled") = Some(Spoiled { session, landed, times });
    }

    /// Commits `batch`, unless it carries a checkpoint to spoil. A refusal spoils a checkpoint
    /// committed on its own (as the host tries again a group one refused), so that one is counted.
    fn commit_or_spoil(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut spoiled = self.spoiled.lock().expect("spoiled");
        let hit = spoiled.filter(|s| {
            s.times > 0
                && (s.landed || batch.len() == 1)
                && batch.iter().any(|w| matches!(w, Write::Checkpoint(c) if c.session == s.session))
        });
        let Some(hit) = hit else {
            drop(spoiled);
            return self.inner.commit(batch);
        };
        *spoiled = Some(Spoiled { times: hit.times - 1, ..hit });
        drop(spoiled);
        let refused = StoreError::Damaged { report: "this checkpoint is refused (injected)".into() };
        if !hit.landed {
            return Err(refused);
        }
        self.inner.commit(batch)?;
        Err(StoreError::CommitUnknown { source: Box::new(refused) })
    }

    fn fail<T>(&self, write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (injected)");
            return Err(StoreError::Io { context: "writing the database", source: full });
        }
        write()
    }
}

impl Store for FailingStore {
    fn load(&self) -> Result<Image, StoreError> {
        self.inner.load()
    }
    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError> {
        self.inner.session(id)
    }
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.fail(|| self.inner.put_tenant(tenant))
    }
    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        self.fail(|| self.inner.delete_tenant(name))
    }
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.fail(|| self.inner.put_token(token))
    }
    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.fail(|| self.inner.delete_token(tenant, id))
    }
    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError> {
        self.fail(|| self.inner.put_app(app, module))
    }
    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        self.fail(|| self.commit_or_spoil(batch))
    }
    fn outputs(&self, session: SessionId, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.inner.outputs(session, after, limit)
    }
    fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.module(hash)
    }
    fn started_with(&self, tenant: &str, key: &str) -> Result<Option<(SessionId, String)>, StoreError> {
        self.inner.started_with(tenant, key)
    }
    fn kv_get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kv_get(tenant, key)
    }
    fn purge(&self, sessions: &[SessionId]) -> Result<Vec<SessionId>, StoreError> {
        self.fail(|| self.inner.purge(sessions))
    }
    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        self.fail(|| self.inner.kv_put(tenant, writes))
    }
    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
        self.inner.usage()
    }
}

const ADMIN: &str = "admin-token-for-outage-tests-0123";

fn unavailable(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(error) => assert_eq!(error.code(), "store_unavailable", "{}", error.chain()),
        Ok(done) => panic!("acknowledged while the store failed: {done:?}"),
    }
}

async fn get(router: &axum::Router, path: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::get(path).header("authorization", format!("Bearer {ADMIN}")).body(Body::empty());
    let response = router.clone().oneshot(request.expect("request")).await.expect("answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

#[test]
fn a_failing_store_loses_nothing_and_the_host_recovers_by_itself() {
    let dir = temp_dir("outage");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let store = Arc::new(FailingStore::new(sqlite.clone()));
    let host = Arc::new(host_on(store.clone(), &dir.join("modules")));
    let api = router(Api::new(host.clone(), ADMIN));
    let http = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    host.deploy("t", "timed", &wait_app(Some(200))).expect("deploys");
    let patient: Vec<SessionId> =
        (0..5).map(|_| host.start_session("t", "patient", "start", Vec::new()).expect("starts")).collect();
    // All of them wait (one event stream: waiting for each in turn would drop the others' events).
    let mut left: std::collections::HashSet<SessionId> = patient.iter().copied().collect();
    while !left.is_empty() {
        let event = events.recv_timeout(std::time::Duration::from_secs(60)).expect("the sessions move on");
        if waiting(&event.status) {
            left.remove(&event.session);
        }
    }

    // The disk fills while timed sessions wait: their timers fire, their actions run, and their
    // checkpoints meet the failing store.
    let timed: Vec<SessionId> =
        (0..20).map(|_| host.start_session("t", "timed", "start", Vec::new()).expect("starts")).collect();
    store.failing.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.refused.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline, "the timed sessions' checkpoints are tried");
        std::thread::yield_now();
    }
    // New work is refused at once, and names the outage; nothing of it is acknowledged.
    unavailable(host.deliver("t", patient[0], br#""lost""#.to_vec(), Some("k1")));
    unavailable(host.start_session("t", "patient", "start", Vec::new()));
    unavailable(host.cancel_session("t", patient[1]));
    unavailable(host.deploy("t", "other", &wait_app(Some(5))));
    assert!(host.store_outage().is_some());
    let metrics = host.metrics();
    assert!(!metrics.store_up && metrics.store_failures >= 1);
    assert!(metrics.prometheus().contains("turnstile_store_up 0"));
    http.block_on(async {
        let (status, body) = get(&api, "/readyz").await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable")));
    });
    // No session was stopped: the timed ones are still on their way (their checkpoints kept).
    for &id in &timed {
        let view = host.session("t", id).expect("still there");
        assert!(!matches!(view.status, Status::Failed { .. }), "{id}: {:?}", view.status);
    }

    // The disk is freed: the kept checkpoints land with no one asking, and new work is taken.
    store.failing.store(false, Ordering::SeqCst);
    all_done(&host, &events, &timed);
    host.deliver("t", patient[0], br#""kept""#.to_vec(), Some("k1")).expect("taken again");
    wait_for(&events, patient[0], |status| matches!(status, Status::Done { .. }));
    assert_eq!(crate::fixtures::outputs_of(&host, "t", patient[0]), [r#""kept""#], "the refused event never landed");
    assert!(host.store_outage().is_none());
    assert!(host.metrics().store_up);
    http.block_on(async {
        assert_eq!(get(&api, "/readyz").await.0, StatusCode::OK);
    });
    drop(api);
    drop(host);

    // What was committed is what a restart finds.
    let image = sqlite.load().expect("loads");
    let done = image.sessions.iter().filter(|s| matches!(s.record.snapshot.status, Status::Done { .. })).count();
    assert_eq!(done, timed.len() + 1);
}

#[test]
fn a_host_stopped_during_an_outage_stops_at_once_and_resumes_every_session_after() {
    let dir = temp_dir("outage-stop");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let store = Arc::new(FailingStore::new(sqlite.clone()));
    let host = host_on(store.clone(), &dir.join("modules"));
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "timed", &wait_app(Some(100))).expect("deploys");
    let timed: Vec<SessionId> =
        (0..10).map(|_| host.start_session("t", "timed", "start", Vec::new()).expect("starts")).collect();
    store.failing.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.refused.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "checkpoints are tried");
        std::thread::yield_now();
    }
    // The host does not wait the outage out.
    drop(host);

    let host = host_on(sqlite.clone(), &dir.join("modules"));
    let events = host.subscribe();
    all_done(&host, &events, &timed);
}

/// Waits until every one of `sessions` is done (woken by the host's events).
fn all_done(host: &Host, events: &std::sync::mpsc::Receiver<SessionEvent>, sessions: &[SessionId]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let open = sessions
            .iter()
            .filter(|&&id| !matches!(host.session("t", id).expect("there").status, Status::Done { .. }))
            .count();
        if open == 0 {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        events.recv_timeout(left).unwrap_or_else(|_| panic!("{open} sessions never finished"));
    }
}

/// A small tmpfs, unmounted on drop; `None` where the machine does not allow mounting one.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        mounted.is_ok_and(|status| status.success()).then_some(SmallDisk { path })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the disk under `dir` with one file: writes until there is no space left.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).expect("ballast");
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_refuses_new_sessions_loses_none_and_is_forgotten_once_freed() {
    let dir = temp_dir("full-disk");
    let Some(disk) = SmallDisk::mount(dir.join("data"), "8m") else {
        eprintln!("skipped: this machine does not allow mounting a tmpfs");
        return;
    };
    let db = disk.path.join("turnstile.db");
    let host = host_on(Arc::new(SqliteStore::open(&db).expect("opens")), &dir.join("modules"));
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let ballast = fill(&disk.path);
    let mut acknowledged = std::collections::BTreeSet::new();
    let refused = loop {
        match host.start_session("t", "patient", "start", vec![b' '; 4096]) {
            Ok(id) => assert!(acknowledged.insert(id), "ids are not given twice"),
            Err(error) => break error,
        }
        assert!(acknowledged.len() < 100_000, "the disk never filled");
    };
    assert_eq!(refused.code(), "store_unavailable", "{}", refused.chain());
    assert!(host.store_outage().is_some());
    unavailable(host.start_session("t", "patient", "start", Vec::new()));

    // Space comes back: once the outage is quiet the next session is taken.
    std::fs::remove_file(&ballast).expect("frees the disk");
    let deadline = std::time::Instant::now() + health_quiet() * 10;
    let id = loop {
        match host.start_session("t", "patient", "start", Vec::new()) {
            Ok(id) => break id,
            Err(error) => assert_eq!(error.code(), "store_unavailable", "{}", error.chain()),
        }
        assert!(std::time::Instant::now() < deadline, "the host never took work again");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    acknowledged.insert(id);
    assert!(host.store_outage().is_none());
    drop(host);

    // The database is whole, and holds every acknowledged session and no other.
    let image = SqliteStore::open(&db).expect("passes its integrity check").load().expect("loads");
    let stored: std::collections::BTreeSet<SessionId> = image.sessions.iter().map(|s| s.record.id).collect();
    assert_eq!(stored, acknowledged);
}

/// How long a host waits after a failed commit before new work tries the store again.
fn health_quiet() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

#[test]
fn a_cancel_meeting_a_failing_store_is_answered_at_once_and_lands_when_it_is_back() {
    let dir = temp_dir("outage-cancel");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let store = Arc::new(FailingStore::new(sqlite));
    let host = host_on(store.clone(), &dir.join("modules"));
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let id = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, id, waiting);
    // The store fails before anything has told the host: the cancel itself meets it, and its
    // caller is answered (not acknowledged) rather than kept waiting for the store.
    store.failing.store(true, Ordering::SeqCst);
    unavailable(host.cancel_session("t", id));
    store.failing.store(false, Ordering::SeqCst);
    wait_for(&events, id, |status| matches!(status, Status::Cancelled));
    // The host stops cleanly, with nothing left waiting.
    drop(host);
}

/// A checkpoint the store refuses, or one whose commit landed while the host could not learn so
/// (a connection lost at COMMIT), stops nothing: its session is taken back from what the store
/// holds and goes on, its action run again only if it had not landed, no output lost or
/// repeated. One whose checkpoints are refused time after time is given up, failed and saying
/// why, and left open in the store for a restart.
#[test]
fn a_checkpoint_refused_or_of_unknown_outcome_is_taken_back_and_the_call_goes_on() {
    let dir = temp_dir("takeback");
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let store = Arc::new(FailingStore::new(sqlite.clone()));
    let host = Arc::new(host_on(store.clone(), &dir.join("modules")));
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let start = || {
        let id = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
        wait_for(&events, id, waiting);
        id
    };
    let done = |status: &Status| matches!(status, Status::Done { .. });

    // Started first: an unknown outcome refuses new work for a moment (an outage, as far as the
    // host can tell).
    let (refused, landed, hopeless) = (start(), start(), start());

    // Refused: not written, so the action runs again from the last committed checkpoint.
    store.spoil(refused, false, 1);
    host.deliver("t", refused, br#""first""#.to_vec(), Some("k1")).expect("acknowledged");
    wait_for(&events, refused, done);
    assert_eq!(crate::fixtures::outputs_of(&host, "t", refused), [r#""first""#]);

    // Landed, its answer lost: read back as it landed, not run again. An output stream open over
    // HTTP meanwhile carries the output it never heard live (read from the store), once, and the
    // end.
    let stream = output_stream(&host, landed);
    store.spoil(landed, true, 1);
    host.deliver("t", landed, br#""second""#.to_vec(), Some("k2")).expect("acknowledged");
    // Its watchers hear it ended, though nothing ran after the take-back to tell them.
    wait_for(&events, landed, done);
    assert_eq!(crate::fixtures::outputs_of(&host, "t", landed), [r#""second""#], "once");
    let streamed = stream.join().expect("the stream ends");
    assert_eq!(streamed.matches("event: output").count(), 1, "{streamed}");
    assert!(streamed.contains("id: 1\n") && streamed.contains(r#""second""#), "{streamed}");
    assert!(streamed.contains("event: end"), "{streamed}");
    assert_eq!(host.session("t", landed).expect("kept").counters.actions, 2, "the answer ran once");
    let counted = host.metrics().tenant("t").map(|t| (t.sessions_started, t.sessions_finished));
    assert_eq!(counted, Some((3, 2)), "its end, landed unheard, counted once");

    // Refused every time: given up, saying why; still open in the store, for a restart.
    store.spoil(hopeless, false, u32::MAX);
    // New work is taken again once the unknown outcome is `QUIET` old (2 s) with nothing to retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(error) = host.deliver("t", hopeless, br#""third""#.to_vec(), Some("k3")) {
        assert!(error.code().starts_with("store") && std::time::Instant::now() < deadline, "{}", error.chain());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_for(&events, hopeless, |status| matches!(status, Status::Failed { .. }));
    let view = host.session("t", hopeless).expect("kept");
    let Status::Failed { failure } = &view.status else { unreachable!() };
    assert!(failure.message.contains("refused (injected)"), "{}", failure.message);
    assert!(crate::fixtures::outputs_of(&host, "t", hopeless).is_empty(), "nothing of it released");
    let stored = sqlite.session(hopeless).expect("reads").expect("stored");
    assert!(waiting(&stored.record.snapshot.status), "open in the store: {:?}", stored.record.snapshot.status);
    assert_eq!(stored.inbox.len(), 1, "its event kept for the restart");
}

/// Session `id`'s output stream, opened over HTTP (open once this returns), read to its end on a
/// thread of its own.
fn output_stream(host: &Arc<Host>, id: SessionId) -> std::thread::JoinHandle<String> {
    let (_, token) = host.issue_token("t").expect("token");
    let api = router(Api::new(host.clone(), ADMIN));
    let (open, opened) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let http = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        http.block_on(async move {
            let request = Request::get(format!("/v1/sessions/{}/outputs", id.0))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request");
            // The router (and the API's shutdown signal in it) lives as long as the stream.
            let response = api.clone().oneshot(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            open.send(()).expect("the test waits");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            String::from_utf8(body.to_vec()).expect("utf-8")
        })
    });
    opened.recv().expect("the stream opens");
    reader
}
