//! (g): (b) again with every checkpoint committed to a durable store — SQLite by default, or
//! PostgreSQL with `--store postgres://…` — the bytes written per action, the group commits'
//! size and latency, and the time a new host takes to resume 10 000 waiting sessions.

use super::{Scratch, TICK, host_on, measured, populate, total_actions, verdict};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use turnstile::{
    AppRecord, Image, SessionId, StorageUsage, Store, StoreError, StoredSession, TenantConfig, TenantRecord,
    TokenRecord, Write, Written,
};

/// A store that times its group commits on the way through.
struct Timed {
    inner: Arc<dyn Store>,
    /// (latency, writes) of each commit.
    commits: Mutex<Vec<(Duration, usize)>>,
}

impl Store for Timed {
    fn load(&self) -> Result<Image, StoreError> {
        self.inner.load()
    }
    fn session(&self, id: SessionId) -> Result<Option<StoredSession>, StoreError> {
        self.inner.session(id)
    }
    fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.inner.put_tenant(tenant)
    }
    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete_tenant(name)
    }
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.inner.put_token(token)
    }
    fn delete_token(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_token(tenant, id)
    }
    fn put_app(&self, app: &AppRecord, module: &[u8]) -> Result<(), StoreError> {
        self.inner.put_app(app, module)
    }
    fn commit(&self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let started = Instant::now();
        let written = self.inner.commit(batch);
        self.commits.lock().unwrap_or_else(PoisonError::into_inner).push((started.elapsed(), batch.len()));
        written
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
        self.inner.purge(sessions)
    }
    fn kv_put(&self, tenant: &str, writes: BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        self.inner.kv_put(tenant, writes)
    }
    fn usage(&self) -> Result<BTreeMap<String, StorageUsage>, StoreError> {
        self.inner.usage()
    }
}

/// Bytes this process has passed to `write` so far (SQLite).
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Bytes of write-ahead log the PostgreSQL server has written so far.
fn wal_written(url: &str) -> Result<u64> {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let mut client = postgres::Client::connect(base, postgres::NoTls)?;
    let bytes: i64 = client.query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", &[])?.get(0);
    Ok(u64::try_from(bytes)?)
}

/// (g)
pub(super) fn durable(window: Duration, workers: usize, url: Option<&str>, through: Option<f64>) -> Result<()> {
    let scratch = Scratch::on("durable", url)?;
    let timed = Arc::new(Timed { inner: scratch.store()?, commits: Mutex::new(Vec::new()) });
    let written = |scratch: &Scratch| match scratch.postgres() {
        Some(url) => wal_written(url),
        None => Ok(bytes_written()),
    };
    let (actions_per_second, bytes_per_action) = {
        let host = host_on(workers, timed.clone())?;
        let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
        populate(&host, &tenants, 10, 10, &wat::parse_str(TICK)?)?;
        let start = Arc::new(Mutex::new(0));
        let (before, after, elapsed) = measured(&host, window, |host| {
            let mut start = start.lock().unwrap_or_else(PoisonError::into_inner);
            *start = timed.commits.lock().unwrap_or_else(PoisonError::into_inner).len();
            (total_actions(host), written(&scratch).unwrap_or(0), *start)
        });
        let actions = (after.0 - before.0) as f64;
        let mut commits = timed.commits.lock().unwrap_or_else(PoisonError::into_inner);
        commits.drain(..before.2);
        commits.truncate(after.2 - before.2);
        (actions / elapsed.as_secs_f64(), (after.1 - before.1) as f64 / actions.max(1.0))
    };
    let of_b = through.map_or(String::new(), |b: f64| {
        let ratio = actions_per_second / b;
        format!(", {ratio:.2} of in-memory (b) (target ≥ 0.3){}", verdict(ratio >= 0.3))
    });
    let kind = scratch.kind();
    println!("(g) durable: {actions_per_second:.0} actions/s with every checkpoint in {kind} (group commit){of_b}");
    if scratch.postgres().is_some() {
        println!("    (target on PostgreSQL ≥ 20 000 actions/s){}", verdict(actions_per_second >= 20_000.0));
        println!("    {bytes_per_action:.0} bytes of write-ahead log per action (the server's)");
    } else {
        println!("    {bytes_per_action:.0} bytes written per action (database, WAL and its checkpoints)");
    }
    let mut commits = timed.commits.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if !commits.is_empty() {
        let writes: usize = commits.iter().map(|c| c.1).sum();
        commits.sort_unstable();
        let at = |percent: usize| commits[(commits.len() - 1) * percent / 100].0.as_secs_f64() * 1000.0;
        println!(
            "    {} group commits, {:.0} writes each on average; latency p50 {:.1} ms, p99 {:.1} ms",
            commits.len(),
            writes as f64 / commits.len() as f64,
            at(50),
            at(99)
        );
    }
    drop(scratch);

    // 10 000 sessions waiting for their customers, then a new host on the same database.
    let scratch = Scratch::on("recovery", url)?;
    const SESSIONS: usize = 10_000;
    let waiting = r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{\"wait\":{\"action\":\"tick\"}}")
        (func (export "tick") (result i32) (call $next (i32.const 0) (i32.const 26)) i32.const 0))"#;
    {
        let host = host_on(workers, scratch.store()?)?;
        let tenants: Vec<_> = (0..10).map(|t| (format!("tenant{t}"), TenantConfig::default())).collect();
        populate(&host, &tenants, 10, SESSIONS / 100, &wat::parse_str(waiting)?)?;
        host.settle();
    }
    let started = Instant::now();
    let host = host_on(workers, scratch.store()?)?;
    let recovery = started.elapsed();
    println!(
        "    recovery: a new host resumed {} sessions from {kind} in {:.0} ms",
        host.metrics().waiting,
        recovery.as_secs_f64() * 1000.0
    );
    Ok(())
}
