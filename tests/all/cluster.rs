//! Cluster mode on PostgreSQL: shard leases (acquire, renew, release, expiry by the database's
//! clock) and the fencing of commits, with each interleaving of a commit and a steal forced with
//! two connections (a lock held open on one, the other seen waiting on it), not timed; a host's
//! claim on every shard with a standby waiting for it (the `turnstile serve` processes of a
//! cluster are in `nodes.rs`).

use crate::store::{PgSchema, postgres_url};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile::{
    Checkpoint, ClaimPolicy, Counters, Lease, PgStore, Session, SessionId, SessionRecord, Status, Store, StoreError,
    Write, Written,
};

const LEASE: Duration = Duration::from_secs(30);

/// A plain connection to `schema`, to read or change its tables as no node would.
pub(crate) fn raw(schema: &PgSchema) -> postgres::Client {
    let mut client = postgres::Client::connect(&postgres_url(), postgres::NoTls).expect("connects");
    let name = schema.url.rsplit("schema=").next().expect("named").to_owned();
    client.batch_execute(&format!("SET search_path TO {name}")).expect("schema");
    client
}

fn session() -> Session {
    Session {
        app: "v1".into(),
        status: Status::Ready { action: "start".into(), input: Vec::new() },
        state: Vec::new(),
        counters: Counters::default(),
        last_failure: None,
        finished_ms: None,
    }
}

fn create(id: u64, fence: u64) -> Write {
    Write::Create {
        record: SessionRecord {
            id: SessionId(id),
            tenant: "acme".into(),
            app: "bot".into(),
            snapshot: session(),
            fence,
        },
        key: None,
    }
}

fn checkpoint(id: u64, fence: u64, output: &str) -> Write {
    let mut snapshot = session();
    snapshot.counters.outputs = 1;
    Write::Checkpoint(Checkpoint {
        session: SessionId(id),
        tenant: "acme".into(),
        snapshot,
        outputs: vec![output.to_owned()],
        kv_writes: BTreeMap::new(),
        consumed: None,
        fence,
    })
}

/// Makes every lease of the schema run out now, by the database's clock.
fn expire_all(client: &mut postgres::Client) {
    client.execute("UPDATE leases SET expires_at = now() - interval '1 second'", &[]).expect("expires");
}

/// Waits until some backend of the server waits on a lock while running a statement that
/// contains `marker`: the signal that a commit or a steal is blocked behind the held lock.
fn wait_until_blocked(observer: &mut postgres::Client, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 in query) > 0",
                &[&marker],
            )
            .expect("reads pg_stat_activity")
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no statement with `{marker}` ever waited on the lock");
        std::thread::yield_now();
    }
}

#[test]
fn shards_are_leased_once_renewed_released_and_taken_over_with_a_new_epoch() {
    let schema = PgSchema::new("leases");
    let store = PgStore::open(&schema.url_with("shards=8")).expect("opens");
    assert_eq!(store.shard_count(), 8);
    let a = store.acquire("node-a", LEASE, 5).expect("acquires");
    assert_eq!(a.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>(), (0..5).map(|s| (s, 1)).collect::<Vec<_>>());
    let b = store.acquire("node-b", LEASE, 100).expect("acquires");
    assert_eq!(b.iter().map(|l| l.shard).collect::<Vec<_>>(), [5, 6, 7], "only the free shards");
    assert!(store.acquire("node-c", LEASE, 100).expect("acquires").is_empty(), "none is free");
    assert_eq!(store.renew("node-a", LEASE, &a).expect("renews"), a);
    // B gives its shards back; C takes them at once, each with a new epoch.
    store.release("node-b", &b).expect("releases");
    let c = store.acquire("node-c", LEASE, 100).expect("acquires");
    assert_eq!(c.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>(), [(5, 2), (6, 2), (7, 2)]);
    // A's leases run out (by the database's clock); C takes them over, A's renewal finds none.
    expire_all(&mut raw(&schema));
    let taken = store.acquire("node-c", LEASE, 100).expect("acquires");
    assert_eq!(taken.len(), 8, "every expired lease, C's own included");
    assert!(store.renew("node-a", LEASE, &a).expect("renews").is_empty(), "A holds nothing any more");
    let table = store.lease_table().expect("reads");
    assert!(table.iter().all(|row| row.owner.as_deref() == Some("node-c") && row.remaining_ms > 20_000), "{table:?}");
    assert!(table.iter().all(|row| row.epoch >= 2), "epochs only increase: {table:?}");
}

#[test]
fn a_zombie_commit_is_fenced_while_the_new_owner_commits() {
    let schema = PgSchema::new("zombie");
    let url = schema.url_with("shards=1");
    let (old, new) = (PgStore::open(&url).expect("opens"), PgStore::open(&url).expect("opens"));
    let [Lease { epoch: first, .. }] = old.acquire("old", LEASE, 1).expect("acquires")[..] else { panic!("one shard") };
    assert_eq!(old.commit(&[create(1, first)]).expect("commits"), [Written::Created]);
    expire_all(&mut raw(&schema));
    let [Lease { epoch: second, .. }] = new.acquire("new", LEASE, 1).expect("acquires")[..] else { panic!("taken") };
    assert!(second > first);
    // The old owner, unaware, writes on: refused, and nothing of it is kept.
    assert_eq!(
        old.commit(&[checkpoint(1, first, "zombie"), create(2, first)]).expect("commits"),
        [Written::Fenced, Written::Fenced]
    );
    assert_eq!(new.commit(&[checkpoint(1, second, "owner")]).expect("commits"), [Written::Committed]);
    assert_eq!(new.outputs(SessionId(1), 0, 10).expect("reads"), [(1, "owner".to_owned())]);
    let (sessions, _) = new.load_shards(&[0]).expect("loads");
    assert_eq!(sessions.iter().map(|s| s.record.id.0).collect::<Vec<_>>(), [1], "the zombie's session is not there");
}

#[test]
fn a_steal_waits_for_a_commit_in_flight_and_then_sees_it() {
    let schema = PgSchema::new("steal_waits");
    let url = schema.url_with("shards=2");
    let store = PgStore::open(&url).expect("opens");
    let leases = store.acquire("old", LEASE, 2).expect("acquires");
    expire_all(&mut raw(&schema));
    // A commit in flight holds shard 0's lease row FOR KEY SHARE (as every group commit does).
    let mut commit = raw(&schema);
    let mut tx = commit.transaction().expect("begins");
    tx.query("SELECT epoch FROM leases WHERE shard = 0 FOR KEY SHARE", &[]).expect("locks");
    // The thief skips the locked shard this time instead of waiting or stealing under it...
    let taken = store.acquire("thief", LEASE, 2).expect("acquires");
    assert_eq!(taken.iter().map(|l| l.shard).collect::<Vec<_>>(), [1]);
    tx.commit().expect("commits");
    // ...and takes it at its next look, once the commit is done.
    let taken = store.acquire("thief", LEASE, 2).expect("acquires");
    assert_eq!(taken.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>(), [(0, leases[0].epoch + 1)]);
}

#[test]
fn a_commit_behind_a_steal_in_flight_waits_and_is_fenced() {
    let schema = PgSchema::new("commit_waits");
    let url = schema.url_with("shards=1");
    let store = PgStore::open(&url).expect("opens");
    let [Lease { epoch, .. }] = store.acquire("old", LEASE, 1).expect("acquires")[..] else { panic!("one shard") };
    store.commit(&[create(1, epoch)]).expect("commits");
    // A steal in flight: the lease row is updated (locked) but not committed yet. It is a plain
    // UPDATE: changing the epoch, a key, locks the row FOR UPDATE however the statement reads.
    let mut thief = raw(&schema);
    let mut steal = thief.transaction().expect("begins");
    steal.execute("UPDATE leases SET owner = 'thief', epoch = epoch + 1 WHERE shard = 0", &[]).expect("steals");
    let store = Arc::new(store);
    let committing = std::thread::spawn({
        let store = store.clone();
        move || store.commit(&[checkpoint(1, epoch, "late")])
    });
    wait_until_blocked(&mut raw(&schema), "ORDER BY shard FOR KEY SHARE");
    steal.commit().expect("the steal commits");
    let written = committing.join().expect("joins").expect("commits");
    assert_eq!(written, [Written::Fenced], "the commit saw the new epoch once the steal was done");
    assert!(store.outputs(SessionId(1), 0, 10).expect("reads").is_empty());
}

/// Back-to-back group commits once held the lease renewals up (`FOR SHARE` against the renewal's
/// row lock): a renewal now never waits for a commit, while a steal and a release still do.
#[test]
fn a_renewal_does_not_wait_for_a_commit_in_flight_and_a_steal_or_release_still_does() {
    let schema = PgSchema::new("renew_free");
    let store = Arc::new(PgStore::open(&schema.url_with("shards=1")).expect("opens"));
    let held = store.acquire("owner", LEASE, 1).expect("acquires");
    store.commit(&[create(1, held[0].epoch)]).expect("commits");
    // The next commit is held inside its transaction, its lease row locked, by a session row
    // another connection holds.
    let mut blocker = raw(&schema);
    let mut hold = blocker.transaction().expect("begins");
    hold.query("SELECT id FROM sessions WHERE id = 1 FOR UPDATE", &[]).expect("locks");
    let committing = std::thread::spawn({
        let store = store.clone();
        let epoch = held[0].epoch;
        move || store.commit(&[checkpoint(1, epoch, "held")])
    });
    wait_until_blocked(&mut raw(&schema), "UPDATE sessions s SET snapshot");
    let (renewed, answer) = std::sync::mpsc::channel();
    std::thread::spawn({
        let (store, held) = (store.clone(), held.clone());
        move || renewed.send(store.renew("owner", LEASE, &held)).expect("the test waits")
    });
    let renewed = answer.recv_timeout(Duration::from_secs(30)).expect("the renewal does not wait for the commit");
    assert_eq!(renewed.expect("renews"), held);
    // A thief finds the lease run out but the row locked by the commit: it skips it.
    expire_all(&mut raw(&schema));
    assert!(store.acquire("thief", LEASE, 1).expect("acquires").is_empty(), "the commit holds the steal off");
    // A graceful release waits for the commit too, so that a standby it wakes finds the row free.
    let releasing = std::thread::spawn({
        let (store, held) = (store.clone(), held.clone());
        move || store.release("owner", &held)
    });
    wait_until_blocked(&mut raw(&schema), "SET owner = NULL");
    hold.rollback().expect("lets go");
    assert_eq!(committing.join().expect("joins").expect("commits"), [Written::Committed]);
    releasing.join().expect("joins").expect("releases");
    let taken = store.acquire("thief", LEASE, 1).expect("acquires");
    assert_eq!(taken.iter().map(|l| (l.shard, l.epoch)).collect::<Vec<_>>(), [(0, held[0].epoch + 1)]);
}

#[test]
fn a_cluster_keeps_its_shard_count_and_bad_urls_are_named() {
    let schema = PgSchema::new("shard_count");
    PgStore::open(&schema.url_with("shards=16")).expect("creates");
    assert_eq!(PgStore::open(&schema.url).expect("opens").shard_count(), 16, "the stored count when none is asked");
    let error = PgStore::open(&schema.url_with("shards=32")).expect_err("refused");
    assert!(matches!(error, StoreError::InvalidUrl { .. }) && error.to_string().contains("16 shards"), "{error}");
    for (bad, says) in [("shards=0", "shards `0`"), ("schema=Robert'); DROP", "schema `Robert');")] {
        let error = PgStore::open(&format!("{}?{bad}", postgres_url())).expect_err("refused");
        assert!(error.to_string().contains(says), "{error}");
    }
    let error = PgStore::drop_schema(&postgres_url()).expect_err("never the public schema");
    assert!(error.to_string().contains("public schema is never dropped"), "{error}");
    let error = PgStore::open("postgres://nobody@127.0.0.1:1/none").expect_err("refused");
    assert!(matches!(error, StoreError::Postgres { .. }), "{error}");
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let schema = PgSchema::new("newer");
    PgStore::open(&schema.url).expect("creates");
    raw(&schema).execute("UPDATE meta SET value = 999 WHERE key = 'schema_version'", &[]).expect("bumps");
    let error = PgStore::open(&schema.url).expect_err("refused");
    assert!(matches!(error, StoreError::NewerSchema { found: 999, .. }), "{error}");
}

#[test]
fn one_host_holds_the_shards_and_a_standby_takes_them_when_it_is_dropped() {
    let schema = PgSchema::new("claim");
    let url = schema.url_with("shards=4");
    let policy = |node: &str, wait: bool| ClaimPolicy { node: node.into(), lease: LEASE, wait, address: None };
    let active = Arc::new(PgStore::open(&url).expect("opens"));
    let advertised = ClaimPolicy { address: Some("http://10.0.0.7:8080".into()), ..policy("active", false) };
    active.claim_all(&advertised, |_| {}, || {}).expect("claims");
    assert!(active.holds_claim());
    let second = Arc::new(PgStore::open(&url).expect("opens"));
    let error = second.claim_all(&policy("second", false), |_| {}, || {}).expect_err("refused");
    assert!(matches!(&error, StoreError::ShardsHeld { holder } if holder == "active"), "{error}");
    // A standby waits, seeing who holds the shards and where it answers (to forward requests
    // there); it holds everything once the active store is dropped.
    let (told, heard) = std::sync::mpsc::channel();
    let standby = std::thread::spawn(move || {
        second
            .claim_all(&policy("second", true), |holder| told.send(holder.clone()).expect("sends"), || {})
            .map(|()| second)
    });
    let holder = heard.recv().expect("told");
    assert_eq!(holder.owner.as_deref(), Some("active"));
    assert_eq!(holder.address.as_deref(), Some("http://10.0.0.7:8080"));
    // Whatever fencing token the host gives, the claim's epoch is what the store writes under.
    assert_eq!(active.commit(&[create(1, 0)]).expect("commits"), [Written::Created]);
    drop(active);
    let standby = standby.join().expect("joins").expect("claims");
    assert!(standby.holds_claim());
    assert_eq!(standby.commit(&[checkpoint(1, 0, "resumed")]).expect("commits"), [Written::Committed]);
    // A third store takes the shards from under it (its leases ran out): the standby, now a
    // zombie, has its writes refused.
    expire_all(&mut raw(&schema));
    let thief = Arc::new(PgStore::open(&url).expect("opens"));
    thief.claim_all(&policy("thief", false), |_| {}, || {}).expect("takes over");
    assert_eq!(standby.commit(&[checkpoint(1, 0, "zombie")]).expect("commits"), [Written::Fenced]);
    // Nor does it take a customer's event the new owner would never see.
    let event =
        Write::Append { session: SessionId(1), tenant: "bank".into(), event: b"late".to_vec(), key: Some("k".into()) };
    assert_eq!(standby.commit(std::slice::from_ref(&event)).expect("commits"), [Written::Fenced]);
    assert!(matches!(thief.commit(&[event]).expect("commits")[..], [Written::Appended(_)]));
    assert_eq!(thief.outputs(SessionId(1), 0, 10).expect("reads"), [(1, "resumed".to_owned())]);
}

#[test]
fn a_store_whose_connections_were_killed_connects_again() {
    let schema = PgSchema::new("reconnect");
    let store = PgStore::open(&schema.url).expect("opens");
    assert_eq!(store.commit(&[create(1, 0)]).expect("commits"), [Written::Created]);
    assert_eq!(store.lease_table().expect("reads the leases").len(), 64, "the lease connection is open");
    assert_eq!(store.outputs(SessionId(1), 0, 10).expect("reads"), [], "a reader is pooled");
    assert!(kill_connections(&schema) >= 1);
    // A group that finds the writer dead before it wrote anything is tried again on a new
    // connection: its callers see nothing of it.
    let written = store.commit(&[checkpoint(1, 0, "after")]).expect("commits at once");
    assert_eq!(written, [Written::Committed]);
    // A read never fails for a pooled connection that died: it runs again on another.
    assert_eq!(store.outputs(SessionId(1), 0, 10).expect("reads at once"), [(1, "after".to_owned())]);
    // So is the lease connection (the one a claim renews on).
    if let Err(error) = store.lease_table() {
        assert!(matches!(error, StoreError::Postgres { .. }), "{error}");
    }
    assert_eq!(store.lease_table().expect("connects again").len(), 64);
}

/// A load (a standby that just took the shards over) whose connection is killed while it reads
/// is read again on a new connection, rather than end the host's start.
#[test]
fn a_load_whose_connection_is_killed_midway_is_read_again() {
    let schema = PgSchema::new("reload");
    let store = Arc::new(PgStore::open(&schema.url).expect("opens"));
    assert_eq!(store.commit(&[create(1, 0)]).expect("commits"), [Written::Created]);
    let name = schema.url.rsplit("schema=").next().expect("named").to_owned();
    // The load waits on a lock held here, so that it is killed in the middle of its reads.
    let mut holder = raw(&schema);
    let mut lock = holder.transaction().expect("begins");
    lock.batch_execute(&format!("LOCK TABLE \"{name}\".tenants IN ACCESS EXCLUSIVE MODE")).expect("locks");
    let loading = std::thread::spawn({
        let store = store.clone();
        move || store.load()
    });
    let mut killer = raw(&schema);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let killed: i64 = killer
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&format!("turnstile {name}")],
            )
            .expect("terminates")
            .get(0);
        if killed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the load never waited on the lock");
        std::thread::yield_now();
    }
    lock.rollback().expect("unlocks");
    let image = loading.join().expect("joins").expect("loaded on a new connection");
    assert_eq!(image.sessions.len(), 1);
}

#[test]
fn two_standbys_never_split_the_shards_between_them() {
    let schema = PgSchema::new("two_standbys");
    let url = schema.url_with("shards=16");
    let policy = |node: &str| ClaimPolicy { node: node.into(), lease: LEASE, wait: true, address: None };
    let active = Arc::new(PgStore::open(&url).expect("opens"));
    active.claim_all(&policy("active"), |_| {}, || {}).expect("claims");
    let (done, finished) = std::sync::mpsc::channel();
    let (told, heard) = std::sync::mpsc::channel();
    for node in ["x", "y"] {
        let (done, told, url) = (done.clone(), told.clone(), url.clone());
        std::thread::spawn(move || {
            let store = Arc::new(PgStore::open(&url).expect("opens"));
            store.claim_all(&policy(node), |_| told.send(()).expect("sends"), || {}).expect("claims");
            done.send((node, store)).expect("sends");
        });
    }
    heard.recv().expect("one waits");
    heard.recv().expect("the other waits");
    drop(active);
    let (first, winner) = finished.recv().expect("one takes over");
    let owners: std::collections::BTreeSet<_> =
        winner.lease_table().expect("reads").into_iter().map(|row| row.owner).collect();
    assert_eq!(owners, [Some(first.to_owned())].into(), "all shards with one standby, none with the other");
    drop(winner);
    let (second, last) = finished.recv().expect("the other takes over after it");
    assert_ne!(first, second);
    assert!(last.holds_claim());
}

/// A store holding every shard of `url` for the node "active", and a store on a thread of its
/// own waiting for them as "standby" (it has looked once when this returns); the receiver gets
/// the standby's claim when it takes over.
fn active_and_waiting_standby(
    url: &str,
    lease: Duration,
) -> (Arc<PgStore>, std::sync::mpsc::Receiver<Result<Arc<PgStore>, StoreError>>) {
    let policy = move |node: &str| ClaimPolicy { node: node.into(), lease, wait: true, address: None };
    let active = Arc::new(PgStore::open(url).expect("opens"));
    active.claim_all(&policy("active"), |_| {}, || {}).expect("claims");
    let (told, heard) = std::sync::mpsc::channel();
    let (done, finished) = std::sync::mpsc::channel();
    let url = url.to_owned();
    std::thread::spawn(move || {
        let store = Arc::new(PgStore::open(&url).expect("opens"));
        // (Told at every look; only the first is waited for.)
        let claimed = store.claim_all(
            &policy("standby"),
            |_| {
                let _ = told.send(());
            },
            || {},
        );
        done.send(claimed.map(|()| store)).expect("sends");
    });
    heard.recv().expect("the standby waits");
    (active, finished)
}

/// Kills every connection of the schema's stores (as a database restart or an operator would);
/// returns how many.
pub(crate) fn kill_connections(schema: &PgSchema) -> i64 {
    let name = schema.url.rsplit("schema=").next().expect("named").to_owned();
    raw(schema)
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("turnstile {name}")],
        )
        .expect("terminates")
        .get(0)
}

/// A graceful stop wakes a waiting standby at once (a notification on release), whatever the
/// lease: here a standby would otherwise look again only after 50 s.
#[test]
fn a_release_wakes_a_waiting_standby_at_once() {
    let schema = PgSchema::new("wake");
    let (active, finished) = active_and_waiting_standby(&schema.url_with("shards=4"), Duration::from_secs(300));
    drop(active);
    let standby = finished.recv_timeout(Duration::from_secs(10)).expect("woken by the release").expect("claims");
    assert!(standby.holds_claim());
}

/// A standby outlives a database that drops its connections (a restart, an operator's
/// `pg_terminate_backend`): it keeps waiting on a new connection instead of exiting, and the
/// acting host, whose idle connection died too, still releases the shards at once when it stops.
#[test]
fn a_standby_whose_connection_was_killed_keeps_waiting_and_takes_over() {
    let schema = PgSchema::new("standby_reconnect");
    // Renewed every 4 s, so the leases outlive a drop by at least 8 s; a standby asks every 2 s.
    let lease = Duration::from_secs(12);
    let (active, finished) = active_and_waiting_standby(&schema.url_with("shards=4"), lease);
    let killed = kill_connections(&schema);
    assert!(killed >= 2, "the active host's and the standby's connections");
    assert!(
        finished.recv_timeout(Duration::from_millis(500)).is_err(),
        "the standby neither fails nor takes shards still held"
    );
    drop(active);
    let standby = finished.recv_timeout(lease / 3).expect("released at once, not after the lease").expect("claims");
    assert!(standby.holds_claim());
}

/// A store holding every shard of `schema` under a 1 s lease, with session 1 created.
fn holding_with_a_short_lease(schema: &PgSchema) -> Arc<PgStore> {
    let store = Arc::new(PgStore::open(&schema.url_with("shards=2")).expect("opens"));
    let policy = ClaimPolicy { node: "slow".into(), lease: Duration::from_secs(1), wait: false, address: None };
    store.claim_all(&policy, |_| {}, || panic!("the claim is not lost")).expect("claims");
    assert_eq!(store.commit(&[create(1, 0)]).expect("commits"), [Written::Created]);
    store
}

/// A host whose renewals were held up (a pause, a slow database) past its self-fencing margin
/// renews on its next commit instead of refusing it: the leases are still its own, and a refused
/// checkpoint would stop the session for nothing.
#[test]
fn an_overdue_claim_is_renewed_by_the_next_commit_not_given_up() {
    let schema = PgSchema::new("overdue");
    let store = holding_with_a_short_lease(&schema);
    // The renewals wait behind a lock on the lease rows for longer than the lease.
    let mut blocker = raw(&schema);
    let mut hold = blocker.transaction().expect("begins");
    hold.query("SELECT shard FROM leases ORDER BY shard FOR UPDATE", &[]).expect("locks");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!store.holds_claim(), "overdue: writes would be refused now");
    hold.rollback().expect("lets go");
    assert_eq!(store.commit(&[checkpoint(1, 0, "kept")]).expect("commits"), [Written::Committed]);
    assert!(store.holds_claim());
}

/// A commit that waited on the lease rows past its claim's self-fencing margin (the renewals
/// waited behind the same lock) still commits: the rows it locked are at its epoch, so no one
/// took the shard. Refused for lateness alone, its session would stop on a node that goes on
/// holding every shard (what the failover test once met on a loaded machine).
#[test]
fn a_commit_held_up_past_the_margin_commits_under_the_epoch_it_locked() {
    let schema = PgSchema::new("heldup");
    let store = holding_with_a_short_lease(&schema);
    let mut blocker = raw(&schema);
    let mut hold = blocker.transaction().expect("begins");
    hold.query("SELECT shard FROM leases ORDER BY shard FOR UPDATE", &[]).expect("locks");
    let committing = {
        let store = store.clone();
        std::thread::spawn(move || store.commit(&[checkpoint(1, 0, "late")]))
    };
    let mut observer = raw(&schema);
    wait_until_blocked(&mut observer, "FOR KEY SHARE");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!store.holds_claim(), "overdue now");
    hold.rollback().expect("lets go");
    let written = committing.join().expect("commits").expect("commits");
    assert_eq!(written, [Written::Committed], "its rows were still at its epoch");
}
