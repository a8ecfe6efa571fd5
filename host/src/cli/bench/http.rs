//! `turnstile bench --http`: events delivered over HTTP to a server in this process (loopback,
//! keep-alive connections), each acknowledged once durable in SQLite (or PostgreSQL, with
//! `--store postgres://…`).

use super::{Scratch, host_on};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnstile::TenantConfig;

/// Runs the HTTP ingest benchmark.
pub(crate) fn bench_http(seconds: f64, store: Option<&str>) -> Result<std::process::ExitCode> {
    let window = Duration::from_secs_f64(seconds.clamp(0.2, 60.0));
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let scratch = Scratch::on("http", store)?;
    let host = Arc::new(host_on(workers, scratch.store()?)?);
    let admin = "bench-admin-token-0123456789";
    host.create_tenant("load", TenantConfig::default())?;
    let (_, token) = host.issue_token("load")?;
    // Each event is echoed as an output, and the session waits for the next one.
    let echo = r#"(module
        (import "turnstile" "next" (func $next (param i32 i32)))
        (import "turnstile" "input_len" (func $input_len (result i32)))
        (import "turnstile" "input_read" (func $input_read (param i32)))
        (import "turnstile" "emit" (func $emit (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "{\"wait\":{\"action\":\"echo\"}}")
        (func (export "start") (result i32) (call $next (i32.const 0) (i32.const 26)) i32.const 0)
        (func (export "echo") (result i32)
          (call $input_read (i32.const 100)) (call $emit (i32.const 100) (call $input_len))
          (call $next (i32.const 0) (i32.const 26)) i32.const 0))"#;
    host.deploy("load", "echo", &wat::parse_str(echo)?)?;
    const SESSIONS: usize = 256;
    let sessions: Vec<u64> = (0..SESSIONS)
        .map(|_| host.start_session("load", "echo", "start", Vec::new()).map(|id| id.0))
        .collect::<Result<_, _>>()?;
    host.settle();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let api = turnstile::api::Api::new(host.clone(), admin);
    let (closing, app) = (api.closing(), turnstile::api::router(api));
    let limits = turnstile::api::HttpLimits::default();
    runtime.spawn(async move { turnstile::api::serve(listener, app, &limits, closing, std::future::pending()).await });

    println!(
        "Turnstile bench --http: {workers} cores, {:.1} s each, {SESSIONS} sessions, keep-alive clients on loopback, events durable in {}\n",
        window.as_secs_f64(),
        scratch.kind()
    );
    // Each event waits for a group commit: few clients measure its latency, many the host's
    // throughput (a closed loop of N clients makes at most N ÷ latency events a second).
    for clients in [32, 128] {
        let (rate, p50, p99) = deliver(port, &token, &sessions, clients, window)?;
        println!(
            "{clients:>4} clients: {rate:>6.0} events/s delivered (202), latency p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    drop(runtime);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `clients` keep-alive connections each delivering events to its share of `sessions` for
/// `window`, one at a time: the accepted events per second and their latency p50 and p99.
fn deliver(
    port: u16,
    token: &str,
    sessions: &[u64],
    clients: usize,
    window: Duration,
) -> Result<(f64, Duration, Duration)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let token = token.to_owned();
            let mine: Vec<u64> = sessions.iter().copied().skip(c % sessions.len()).step_by(clients).collect();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
                stream.set_nodelay(true)?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut writer = stream;
                let mut latencies = Vec::new();
                let mut n = 0usize;
                while started.elapsed() < window {
                    let session = mine[n % mine.len()];
                    n += 1;
                    let body = format!("\"c{c}e{n}\"");
                    let sent = Instant::now();
                    let request = format!(
                        "POST /v1/sessions/{session}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    writer.write_all(request.as_bytes())?;
                    let mut status = String::new();
                    reader.read_line(&mut status)?;
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header)?;
                        if header == "\r\n" || header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut discard = vec![0u8; length];
                    reader.read_exact(&mut discard)?;
                    // 429 (the session's inbox is full) is backpressure, not a failure: count only
                    // accepted events.
                    if status.contains(" 202 ") {
                        latencies.push(sent.elapsed());
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for thread in threads {
        latencies.extend(thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    // The per-mille quantile of the sorted latencies.
    let p = |per_mille: usize| {
        let index = (latencies.len() * per_mille / 1000).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or_default()
    };
    Ok((latencies.len() as f64 / elapsed.as_secs_f64(), p(500), p(990)))
}
