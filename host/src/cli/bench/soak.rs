//! `turnstile bench --soak`: a long run of short sessions through SQLite with a short retention,
//! printing as it goes the database's size (with its write-ahead log), the sessions held in
//! memory and the process's resident memory. Each session greets its customer (an output),
//! takes one event sent with an idempotency key (an inbox row, a key), answers it (another
//! output) and ends; retention purges it behind. The size levels off once purging keeps up,
//! instead of growing with every session.

use super::{Scratch, verdict};
use anyhow::Result;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use turnstile::{Error, Host, HostConfig, TenantConfig};

/// The session: `start` greets and waits for `answer`, which echoes the event and ends.
fn app() -> Result<Vec<u8>> {
    let greeting = format!("\\\"{}\\\"", "hello, thank you for calling ".repeat(6));
    // Each `\"` in the text is one byte.
    let greeting_len = greeting.len() - 2;
    Ok(wat::parse_str(format!(
        r#"(module
        (import "turnstile" "input_len" (func $input_len (result i32)))
        (import "turnstile" "input_read" (func $input_read (param i32)))
        (import "turnstile" "emit" (func $emit (param i32 i32)))
        (import "turnstile" "next" (func $next (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{{\"wait\":{{\"action\":\"answer\"}}}}")
        (data (i32.const 100) "{{\"done\":\"answered\"}}")
        (data (i32.const 200) "{greeting}")
        (func (export "start") (result i32)
          (call $emit (i32.const 200) (i32.const {greeting_len}))
          (call $next (i32.const 0) (i32.const 28)) i32.const 0)
        (func (export "answer") (result i32)
          (call $input_read (i32.const 1000)) (call $emit (i32.const 1000) (call $input_len))
          (call $next (i32.const 100) (i32.const 19)) i32.const 0))"#
    ))?)
}

/// The database file and its write-ahead log, in bytes.
fn database_bytes(scratch: &Scratch) -> u64 {
    ["turnstile.db", "turnstile.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(scratch.dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().strip_suffix("kB"));
    kib.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0) * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Runs `sessions` sessions through a host whose retention is `retention`.
pub(crate) fn soak(sessions: usize, retention: Duration) -> Result<ExitCode> {
    let scratch = Scratch::new("soak")?;
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let host =
        Arc::new(Host::new(HostConfig { workers, store: scratch.store()?, retention, ..HostConfig::default() })?);
    host.create_tenant("soak", TenantConfig { max_sessions: 100_000_000, ..TenantConfig::default() })?;
    host.deploy("soak", "call", &app()?)?;
    println!(
        "Soak: {sessions} sessions (a greeting, one keyed event, an answer) through SQLite, retention {} ms\n",
        retention.as_millis()
    );
    println!("{:>8} {:>10} {:>10} {:>12} {:>12}", "time s", "sessions", "held", "database MiB", "resident MiB");
    let started = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (host, started) = (host.clone(), started.clone());
            std::thread::spawn(move || -> Result<()> {
                while started.fetch_add(1, Ordering::Relaxed) < sessions {
                    let id = loop {
                        match host.start_session("soak", "call", "start", Vec::new()) {
                            Err(Error::QueueFull(_)) => std::thread::yield_now(),
                            other => break other?,
                        }
                    };
                    let key = format!("k{}", id.0);
                    host.deliver("soak", id, br#""yes""#.to_vec(), Some(&key))?;
                }
                Ok(())
            })
        })
        .collect();
    let begun = Instant::now();
    let mut samples = Vec::new();
    let finished = |host: &Host| host.metrics().tenants.iter().map(|t| t.sessions_finished).sum::<u64>();
    let total = u64::try_from(sessions).unwrap_or(u64::MAX);
    let mut drained_at = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let metrics = host.metrics();
        let done = finished(&host);
        let size = database_bytes(&scratch);
        println!(
            "{:>8.0} {done:>10} {:>10} {:>12.1} {:>12.1}",
            begun.elapsed().as_secs_f64(),
            metrics.sessions,
            mib(size),
            mib(resident_bytes())
        );
        samples.push((done, size));
        // Once every session has ended, run on until purging has caught up (or for a minute).
        if done >= total {
            let drained = *drained_at.get_or_insert_with(Instant::now);
            if metrics.sessions == 0 || drained.elapsed() >= retention + Duration::from_secs(60) {
                break;
            }
        }
    }
    for caller in callers {
        caller.join().map_err(|_| anyhow::anyhow!("a caller thread panicked"))??;
    }
    let elapsed = begun.elapsed().as_secs_f64();
    let (_, last) = samples[samples.len() - 1];
    let half = samples.iter().find(|(done, _)| *done >= total / 2).map_or(last, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "\nsoak: {sessions} sessions in {elapsed:.0} s ({:.0}/s); database {:.1} MiB after half of them, {:.1} MiB after all (peak {:.1} MiB), {} held in memory at the end",
        sessions as f64 / elapsed,
        mib(half),
        mib(last),
        mib(peak),
        host.metrics().sessions
    );
    let level = last as f64 <= half as f64 * 1.25;
    println!("the database levels off (last ≤ 1.25 × at half-way){}", verdict(level));
    Ok(if level { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
