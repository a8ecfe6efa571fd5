//! Operating a host: backups under load, upgrades, retention, and compiled modules evicted when unused.

use crate::durability::{host_on, temp_dir, wait_app, wait_for, waiting};
use crate::serve::wait_until;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use turnstile::{SqliteStore, Status, Store, TenantConfig};

#[test]
fn a_backup_taken_under_load_resumes_every_session_of_its_moment() {
    let dir = temp_dir("backup");
    let live = dir.join("live");
    let open = |data: &std::path::Path| {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.join("turnstile.db")).expect("opens"));
        host_on(store, &dir.join("modules"))
    };
    let host = Arc::new(open(&live));
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let before: Vec<_> = (0..100)
        .map(|_| {
            let id = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
            wait_for(&events, id, waiting);
            id
        })
        .collect();
    // Load while the backup runs: sessions start and events end them.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (host, stop, before) = (host.clone(), stop.clone(), before.clone());
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                host.start_session("t", "patient", "start", Vec::new()).expect("starts under load");
                if let Some(&id) = before.get(answered) {
                    host.deliver("t", id, br#""x""#.to_vec(), None).expect("delivered under load");
                    answered += 1;
                }
            }
        })
    };
    let out = dir.join("copy").join("turnstile.db");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("dir");
    let backup = |out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .args(["backup", "--data-dir"])
            .arg(&live)
            .arg("--out")
            .arg(out)
            .output()
            .expect("turnstile runs")
    };
    let made = backup(&out);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load");
    // A second backup onto the same file is refused, and the copy left as it was.
    let again = backup(&out);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    drop(events);
    drop(host);

    // A host on the copy has every session of that moment, each where it was, and they go on.
    let copy = open(out.parent().expect("parent"));
    let events = copy.subscribe();
    for &id in &before {
        let view = copy.session("t", id).expect("every session of the moment is in the copy");
        match view.status {
            // Waiting, or about to take the event acknowledged before the backup (its inbox).
            Status::Waiting { .. } | Status::Ready { .. } => {
                if let Err(error) = copy.deliver("t", id, br#""y""#.to_vec(), None) {
                    // It took its inbox event first: refused, or stored and reported not applied.
                    assert!(["session_state", "not_applied"].contains(&error.code()), "{error}");
                }
                if !copy.session("t", id).expect("s").status.is_finished() {
                    wait_for(&events, id, Status::is_finished);
                }
            }
            Status::Done { .. } => {}
            other => panic!("session {id} is {other:?} in the copy"),
        }
        assert!(matches!(copy.session("t", id).expect("s").status, Status::Done { .. }));
    }
    drop(copy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database written by this release (schema 3), kept so that every later schema is tested to
/// open it: `tests/fixtures/schema-3.db`, with the token it holds beside it.
fn upgrade_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/schema-3.db")
}

/// Writes the upgrade fixture again. Run it only when this release's schema is the one to keep:
/// `cargo test -- --ignored write_the_upgrade_fixture`.
#[test]
#[ignore = "writes a committed fixture"]
fn write_the_upgrade_fixture() {
    let path = upgrade_fixture();
    let _ = std::fs::remove_file(&path);
    let dir = temp_dir("fixture");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("opens"));
    let host = host_on(store, &dir.join("modules"));
    let events = host.subscribe();
    host.create_tenant("shop", TenantConfig { weight: 3, ..TenantConfig::default() }).expect("tenant");
    let (_, token) = host.issue_token("shop").expect("token");
    std::fs::write(path.with_extension("token"), &token).expect("token written");
    host.kv_put("shop", [("greeting".to_owned(), b"hello".to_vec())]).expect("kv");
    host.deploy("shop", "patient", &wait_app(None)).expect("deploys");
    host.deploy("shop", "timed", &wait_app(Some(86_400_000))).expect("deploys");
    let waiting_forever = host.start_session("shop", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, waiting_forever, waiting);
    let timed = host.start_session("shop", "timed", "start", Vec::new()).expect("starts");
    wait_for(&events, timed, waiting);
    let done = host.start_session("shop", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, done, waiting);
    host.deliver("shop", done, br#""x""#.to_vec(), Some("key-1")).expect("delivered");
    wait_for(&events, done, Status::is_finished);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_database_of_an_earlier_release_opens_and_every_session_resumes() {
    let dir = temp_dir("upgrade");
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("turnstile.db");
    std::fs::copy(upgrade_fixture(), &db).expect("the fixture is there");
    let token = std::fs::read_to_string(upgrade_fixture().with_extension("token")).expect("its token");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).expect("the old database opens"));
    let host = host_on(store.clone(), &dir.join("modules"));
    assert_eq!(host.authenticate(&token).as_deref(), Some("shop"), "its token still works");
    assert_eq!(store.kv_get("shop", "greeting").expect("kv"), Some(b"hello".to_vec()));
    assert_eq!(host.tenant("shop").expect("tenant").config.weight, 3);
    let sessions: Vec<_> =
        host.sessions().into_iter().map(|(tenant, view)| (assert_eq!(tenant, "shop"), view).1).collect();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let events = host.subscribe();
    let mut finished = 0;
    for view in sessions {
        if view.app == "timed" {
            // Its one-day wait ran out long ago (the fixture is older than that): its timer,
            // re-armed from the stored due time, fires at once, and it ends by its timeout.
            wait_until("the overdue timer to end its session", || {
                host.session("shop", view.id).is_ok_and(|v| v.status == Status::Done { result: "expired".into() })
            });
            assert_eq!(crate::fixtures::outputs_of(&host, "shop", view.id), Vec::<String>::new());
            continue;
        }
        match view.status {
            Status::Waiting { .. } => {
                host.deliver("shop", view.id, br#""y""#.to_vec(), None).expect("delivered");
                wait_for(&events, view.id, Status::is_finished);
            }
            Status::Done { .. } => finished += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(finished, 1);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn finished_sessions_are_purged_after_their_retention_and_their_ids_never_come_back() {
    let dir = temp_dir("retention");
    let open = || {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
        let mut config = turnstile::HostConfig {
            workers: 2,
            store,
            retention: std::time::Duration::from_millis(50),
            ..turnstile::HostConfig::default()
        };
        config.runtime.engine.pool_instances = 8;
        config.runtime.engine.cache_dir = Some(dir.join("modules"));
        turnstile::Host::new(config).expect("host starts")
    };
    let host = open();
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "patient", &wait_app(None)).expect("deploys");
    let open_one = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, open_one, waiting);
    // The newest session is the one that finishes: its id is the highest ever used.
    let finished = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, finished, waiting);
    host.deliver("t", finished, br#""x""#.to_vec(), Some("k")).expect("delivered");
    wait_for(&events, finished, Status::is_finished);
    // The purge has no event to wait for: poll, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while host.session("t", finished).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the finished session was never purged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let purged = host.session("t", finished).expect_err("purged");
    assert_eq!(purged.code(), "not_found");
    assert!(purged.to_string().contains("purged once their retention has passed"), "{purged}");
    assert!(host.outputs("t", finished, 0, 10).is_err());
    let listed: Vec<_> =
        host.tenant_sessions("t", turnstile::SessionId(0), 100).expect("list").iter().map(|v| v.id).collect();
    assert_eq!(listed, [open_one], "the tenant's list still holds the purged session");
    // A session still open is never purged.
    assert!(matches!(host.session("t", open_one).expect("kept").status, Status::Waiting { .. }));
    drop(events);
    drop(host);
    // After a restart the purged session stays gone, and its id is not given to another.
    let host = open();
    assert_eq!(host.session("t", finished).expect_err("still purged").code(), "not_found");
    assert!(matches!(host.session("t", open_one).expect("kept").status, Status::Waiting { .. }));
    let newest = host.start_session("t", "patient", "start", Vec::new()).expect("starts");
    assert!(newest.0 > finished.0, "id {} was used again", newest.0);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deleted_tenants_session_ids_are_not_given_again_after_a_restart() {
    let dir = temp_dir("deleted-ids");
    let open = || {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
        host_on(store, &dir.join("modules"))
    };
    let host = open();
    let events = host.subscribe();
    for tenant in ["kept", "gone"] {
        host.create_tenant(tenant, TenantConfig::default()).expect("tenant");
        host.deploy(tenant, "patient", &wait_app(None)).expect("deploys");
    }
    let kept = host.start_session("kept", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, kept, waiting);
    let gone = host.start_session("gone", "patient", "start", Vec::new()).expect("starts");
    wait_for(&events, gone, waiting);
    host.cancel_session("gone", gone).expect("cancelled");
    wait_for(&events, gone, Status::is_finished);
    host.delete_tenant("gone").expect("deleted");
    drop(events);
    drop(host);
    let host = open();
    let newest = host.start_session("kept", "patient", "start", Vec::new()).expect("starts");
    assert!(newest.0 > gone.0, "id {} was used again", newest.0);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tenants_own_retention_counts_from_the_end_across_a_restart() {
    let dir = temp_dir("tenant-retention");
    let open = || {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
        host_on(store, &dir.join("modules"))
    };
    let brief = std::time::Duration::from_secs(4);
    let host = open();
    let refused = host
        .create_tenant("bad", TenantConfig { retention: Some(std::time::Duration::ZERO), ..TenantConfig::default() });
    assert!(refused.expect_err("zero retention").chain().contains("`retention`"));
    let events = host.subscribe();
    host.create_tenant("brief", TenantConfig { retention: Some(brief), ..TenantConfig::default() }).expect("tenant");
    host.create_tenant("kept", TenantConfig::default()).expect("tenant");
    let mut ended = Vec::new();
    for tenant in ["brief", "kept"] {
        host.deploy(tenant, "patient", &wait_app(None)).expect("deploys");
        let id = host.start_session(tenant, "patient", "start", Vec::new()).expect("starts");
        wait_for(&events, id, waiting);
        host.deliver(tenant, id, br#""x""#.to_vec(), None).expect("delivered");
        wait_for(&events, id, Status::is_finished);
        ended.push((tenant, id));
    }
    let finished_at = std::time::Instant::now();
    drop(events);
    drop(host);
    // The retention passes while no host runs: the next one purges the session at once rather
    // than counting it again from its start.
    std::thread::sleep(brief.saturating_sub(finished_at.elapsed()));
    let host = open();
    let deadline = std::time::Instant::now() + brief / 2;
    while host.session("brief", ended[0].1).is_ok() {
        assert!(std::time::Instant::now() < deadline, "its retention was counted again from the restart");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(host.session("kept", ended[1].1).is_ok(), "the host's retention (7 days) keeps the other");
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_changed_retention_applies_to_sessions_already_finished() {
    let dir = temp_dir("retention-change");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
    let host = host_on(store, &dir.join("modules"));
    let events = host.subscribe();
    let keep =
        |secs: u64| TenantConfig { retention: Some(std::time::Duration::from_secs(secs)), ..TenantConfig::default() };
    host.create_tenant("shortened", keep(3600)).expect("tenant");
    host.create_tenant("lengthened", keep(1)).expect("tenant");
    let mut ended = Vec::new();
    // The lengthened one finishes first: its old retention comes due before the other's new one.
    for tenant in ["lengthened", "shortened"] {
        host.deploy(tenant, "patient", &wait_app(None)).expect("deploys");
        let id = host.start_session(tenant, "patient", "start", Vec::new()).expect("starts");
        wait_for(&events, id, waiting);
        host.deliver(tenant, id, br#""x""#.to_vec(), None).expect("delivered");
        wait_for(&events, id, Status::is_finished);
        ended.push(id);
    }
    // A legal hold: one tenant's retention goes from 1 s to an hour, the other's from an hour to 1 s.
    host.reconfigure_tenant("lengthened", keep(3600)).expect("updated");
    host.reconfigure_tenant("shortened", keep(1)).expect("updated");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.session("shortened", ended[1]).is_ok() {
        assert!(std::time::Instant::now() < deadline, "a shortened retention was not applied");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // By now the lengthened tenant's old second has long passed, and its session is kept.
    assert!(host.session("lengthened", ended[0]).is_ok(), "a lengthened retention was not applied");
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unused_compiled_modules_leave_memory_and_load_again_on_demand() {
    let dir = temp_dir("module-eviction");
    let open = |module_idle| {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("turnstile.db")).expect("opens"));
        let mut config = turnstile::HostConfig { workers: 2, store, module_idle, ..turnstile::HostConfig::default() };
        config.runtime.engine.pool_instances = 8;
        config.runtime.engine.cache_dir = Some(dir.join("modules"));
        turnstile::Host::new(config).expect("host starts")
    };
    let host = open(std::time::Duration::ZERO);
    let events = host.subscribe();
    host.create_tenant("t", TenantConfig::default()).expect("tenant");
    host.deploy("t", "held", &wait_app(None)).expect("deploys");
    host.deploy("t", "idle", &wait_app(Some(60_000))).expect("deploys");
    let held = host.start_session("t", "held", "start", Vec::new()).expect("starts");
    wait_for(&events, held, waiting);
    // The idle app's code leaves memory; the other stays while its session is open.
    wait_until("the unused module to be evicted", || {
        let modules = host.metrics().modules;
        modules.loaded == 1 && modules.evicted >= 1
    });
    let reloads = host.metrics().modules.reloads;
    // Sessions of the evicted app load it again, once for all of them, and run as before.
    let started: Vec<turnstile::SessionId> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| host.start_session("t", "idle", "start", Vec::new()).expect("starts")))
            .collect();
        starts.into_iter().map(|start| start.join().expect("start thread")).collect()
    });
    assert_eq!(host.metrics().modules.reloads, reloads + 1, "the evicted module was not loaded again once");
    for &id in &started[1..] {
        host.cancel_session("t", id).expect("cancelled");
    }
    let again = started[0];
    wait_for(&events, again, waiting);
    for session in [again, held] {
        host.deliver("t", session, br#""hello""#.to_vec(), None).expect("delivered");
        wait_for(&events, session, Status::is_finished);
        assert_eq!(crate::fixtures::outputs_of(&host, "t", session), [r#""hello""#]);
    }
    // With every session finished nothing holds compiled code.
    wait_until("the modules of finished sessions to be evicted", || host.metrics().modules.loaded == 0);
    assert!(host.metrics().prometheus().contains("turnstile_modules_loaded 0"));
    drop(events);
    drop(host);
    // At start only the versions of open sessions are compiled (none here); the others when a
    // session needs them.
    let host = open(std::time::Duration::from_secs(600));
    assert_eq!(host.metrics().modules.loaded, 0, "a start compiled versions no session needed");
    let events = host.subscribe();
    let after = host.start_session("t", "held", "start", Vec::new()).expect("starts after a restart");
    wait_for(&events, after, waiting);
    assert_eq!((host.metrics().modules.loaded, host.metrics().modules.reloads), (1, 1));
    // Asking for an action the app does not have is still answered with the ones it has.
    let unknown = host.start_session("t", "idle", "nope", Vec::new()).expect_err("no such action");
    assert_eq!(unknown.code(), "unknown_action");
    drop(events);
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}
