//! `turnstile demo`: the multi-tenant show. Four tenants share one pool: a bank and a utility
//! running the IVR menu, a pizza shop running the order bot, and a hostile tenant whose every
//! session tries something nasty. Thousands of simulated customers press digits, chat, hesitate
//! and time out; a live table shows each tenant's progress, and a summary ends the run.

use anyhow::Result;
use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use turnstile::examples::{PLAIN, example_wasm};
use turnstile::{
    EngineConfig, Error, FailureKind, Host, HostConfig, MetricsSnapshot, RuntimeConfig, SessionId, Status, TenantConfig,
};

/// A tenant of the demo.
struct Cast {
    tenant: &'static str,
    weight: u32,
    app: &'static str,
    example: &'static str,
    /// Its part of the sessions, in percent.
    percent: usize,
}

const CAST: [Cast; 4] = [
    Cast { tenant: "first-bank", weight: 3, app: "ivr", example: "ivr_menu", percent: 40 },
    Cast { tenant: "city-power", weight: 1, app: "ivr", example: "ivr_menu", percent: 20 },
    Cast { tenant: "pizza-shop", weight: 2, app: "orders", example: "order_bot", percent: 30 },
    Cast { tenant: "mallory", weight: 1, app: "hostile", example: "hostile", percent: 10 },
];

/// Customers arrive evenly over this many milliseconds.
const ARRIVALS_MS: usize = 4000;

fn elapsed_ms(since: Instant) -> usize {
    usize::try_from(since.elapsed().as_millis()).unwrap_or(usize::MAX)
}

const HOSTILE_ENTRIES: [&str; 13] = [
    "spin",
    "memory_bomb",
    "deep_recursion",
    "huge_output",
    "trap",
    "bad_pointer",
    "bad_next",
    "host_burner",
    "state_reader",
    "kv_reader",
    "log_flood",
    "sleeper",
    "napper",
];

/// The hostile tenant deploys its module under several app names, to try to multiply its share
/// of the pool (each app has its own place in the action list).
const HOSTILE_APPS: [&str; 6] = ["hostile", "hostile-2", "hostile-3", "hostile-4", "hostile-5", "hostile-6"];

/// The names a cast member's app is deployed under.
fn app_names(cast: &Cast) -> Vec<&'static str> {
    if cast.example == "hostile" { HOSTILE_APPS.to_vec() } else { vec![cast.app] }
}

/// One simulated customer: where the session starts, and what the customer answers to each
/// wait (`None`: stays silent until the wait times out).
struct Customer {
    tenant: &'static str,
    app: &'static str,
    entry: &'static str,
    input: Vec<u8>,
    replies: VecDeque<Option<&'static str>>,
}

fn customer(cast: &Cast, n: usize) -> Customer {
    let (entry, input, replies): (&str, Vec<u8>, &[Option<&str>]) = match cast.example {
        "ivr_menu" => {
            let account = format!(r#"{{"account":"{}"}}"#, 1000 + n % 100).into_bytes();
            let replies: &[Option<&str>] = match n % 20 {
                0 => &[None, None, None],
                1 | 2 => &[None, Some("2")],
                3..=8 => &[Some("1"), Some("9")],
                9..=12 => &[Some("2")],
                13..=15 => &[Some("5"), Some("1"), Some("9")],
                _ => &[Some("9")],
            };
            ("start", account, replies)
        }
        "order_bot" => {
            let replies: &[Option<&str>] = match n % 3 {
                0 => &[Some("pizza"), Some("2"), Some("yes")],
                1 => &[Some("tea"), Some("lots"), Some("3"), Some("no"), Some("cake"), Some("1"), Some("yes")],
                _ => &[Some("salad"), Some("1"), Some("yes")],
            };
            ("start", Vec::new(), replies)
        }
        _ => (HOSTILE_ENTRIES[n % HOSTILE_ENTRIES.len()], Vec::new(), &[]),
    };
    let names = app_names(cast);
    let app = names[n % names.len()];
    Customer { tenant: cast.tenant, app, entry, input, replies: replies.iter().copied().collect() }
}

pub(crate) fn demo(engine: EngineConfig, sessions: usize, workers: Option<usize>) -> Result<ExitCode> {
    println!("Building the example apps (once)…");
    let mut config =
        HostConfig { runtime: RuntimeConfig { engine, ..RuntimeConfig::default() }, ..HostConfig::default() };
    if let Some(workers) = workers {
        config.workers = workers;
    }
    let workers = config.workers;
    let host = Host::new(config)?;
    for cast in &CAST {
        host.create_tenant(cast.tenant, TenantConfig { weight: cast.weight, ..TenantConfig::default() })?;
        let module = example_wasm(cast.example, PLAIN)?;
        let names = app_names(cast);
        for app in &names {
            host.deploy(cast.tenant, app, &module)?;
        }
        println!(
            "  {:<11} weight {}  deployed `{}`{} {}",
            cast.tenant,
            cast.weight,
            cast.app,
            if names.len() > 1 { format!(" under {} app names", names.len()) } else { String::new() },
            &turnstile::module_hash(&module)[..12],
        );
    }
    for bank in ["first-bank", "city-power"] {
        host.kv_put(
            bank,
            (1000..1100).map(|a| (format!("balance:{a}"), format!("{}.{:02} EUR", a * 7 % 5000, a % 100).into_bytes())),
        )?;
    }

    let mut waiting_to_start: VecDeque<Customer> = VecDeque::new();
    for cast in &CAST {
        for n in 0..sessions * cast.percent / 100 {
            waiting_to_start.push_back(customer(cast, n));
        }
    }
    // Interleave the tenants' customers so they arrive together.
    let mut order: Vec<Customer> = waiting_to_start.drain(..).collect();
    order.sort_by_key(|c| c.replies.len() * 7 + c.entry.len());
    let total = order.len();
    let mut arrivals: VecDeque<Customer> = order.into();
    println!("\n{total} customers are calling on {workers} workers (IVR timeouts are 5 s: silent callers take 15 s)\n");

    let events = host.subscribe();
    let mut on_the_line: HashMap<SessionId, Customer> = HashMap::new();
    let mut replies_to_retry: VecDeque<(SessionId, &'static str)> = VecDeque::new();
    let mut finished = 0usize;
    let started_at = Instant::now();
    let mut table = Table::new();
    let mut next_draw = Instant::now();
    while finished < total {
        // Customers call at a steady rate over the first seconds; a full queue means "call back".
        let due = (total * elapsed_ms(started_at) / ARRIVALS_MS).min(total);
        while total - arrivals.len() < due {
            let Some(caller) = arrivals.pop_front() else { break };
            match host.start_session(caller.tenant, caller.app, caller.entry, caller.input.clone()) {
                Ok(id) => {
                    on_the_line.insert(id, caller);
                }
                Err(Error::QueueFull(_)) => {
                    arrivals.push_front(caller);
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        for _ in 0..replies_to_retry.len() {
            let Some((id, reply)) = replies_to_retry.pop_front() else { break };
            if let Some(caller) = on_the_line.get(&id)
                && let Err(Error::QueueFull(_)) = host.deliver(caller.tenant, id, reply.as_bytes().to_vec(), None)
            {
                replies_to_retry.push_back((id, reply));
            }
        }
        while let Ok(event) = events.recv_timeout(Duration::from_millis(5)) {
            match event.status {
                Status::Waiting { .. } => {
                    let Some(caller) = on_the_line.get_mut(&event.session) else { continue };
                    if let Some(Some(reply)) = caller.replies.pop_front() {
                        match host.deliver(caller.tenant, event.session, reply.as_bytes().to_vec(), None) {
                            Err(Error::QueueFull(_)) => replies_to_retry.push_back((event.session, reply)),
                            other => drop(other?),
                        }
                    }
                }
                Status::Done { .. } | Status::Failed { .. } | Status::Cancelled => {
                    on_the_line.remove(&event.session);
                    finished += 1;
                }
                Status::Ready { .. } => {}
            }
            if Instant::now() >= next_draw {
                break;
            }
        }
        if Instant::now() >= next_draw {
            table.draw(&host.metrics(), finished, total, started_at.elapsed())?;
            next_draw = Instant::now() + Duration::from_millis(500);
        }
    }
    let metrics = host.metrics();
    table.draw(&metrics, finished, total, started_at.elapsed())?;
    summary(&metrics, started_at.elapsed());
    Ok(ExitCode::SUCCESS)
}

/// The live per-tenant table, redrawn in place on a terminal.
struct Table {
    lines_drawn: usize,
    in_place: bool,
}

impl Table {
    fn new() -> Table {
        Table { lines_drawn: 0, in_place: std::io::stdout().is_terminal() }
    }

    fn draw(&mut self, metrics: &MetricsSnapshot, finished: usize, total: usize, elapsed: Duration) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.in_place && self.lines_drawn > 0 {
            write!(out, "\x1b[{}A", self.lines_drawn)?;
        }
        let cost: u64 = metrics.tenants.iter().map(|t| t.cost).sum::<u64>().max(1);
        let mut lines = vec![
            format!(
                "{:>5.1}s  sessions {finished}/{total}   queued {}   waiting for customers {}\x1b[K",
                elapsed.as_secs_f64(),
                metrics.queue_depth,
                metrics.waiting
            ),
            format!(
                "  {:<11} {:>6} {:>15} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9}\x1b[K",
                "tenant", "weight", "sessions done", "actions", "cost %", "throttled", "failures", "p50 µs", "p99 µs"
            ),
        ];
        for t in &metrics.tenants {
            lines.push(format!(
                "  {:<11} {:>6} {:>7}/{:<7} {:>8} {:>6.1}% {:>8}ms {:>9} {:>9} {:>9}\x1b[K",
                t.tenant,
                t.weight,
                t.sessions_finished,
                t.sessions_started,
                t.actions,
                100.0 * t.cost as f64 / cost as f64,
                t.throttled_ms,
                t.failures.values().sum::<u64>(),
                t.latency_p50_us,
                t.latency_p99_us
            ));
        }
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        if !self.in_place {
            writeln!(out)?;
        }
        self.lines_drawn = lines.len();
        Ok(())
    }
}

fn summary(metrics: &MetricsSnapshot, elapsed: Duration) {
    let actions: u64 = metrics.tenants.iter().map(|t| t.actions).sum();
    let finished: u64 = metrics.tenants.iter().map(|t| t.sessions_finished).sum();
    println!("\nSummary");
    println!("  sessions completed   {finished} in {:.1} s", elapsed.as_secs_f64());
    println!(
        "  actions              {actions} ({:.0}/s over the whole run, timeouts included)",
        actions as f64 / elapsed.as_secs_f64()
    );
    let weights: u32 = metrics.tenants.iter().map(|t| t.weight).sum();
    let cost: u64 = metrics.tenants.iter().map(|t| t.cost).sum::<u64>().max(1);
    println!("  share of real cost (fuel, or wall time when that is more) vs weight share (a tenant gets");
    println!("  at least its weight's share when it wants it; what a tenant leaves unused goes to the others):");
    for t in &metrics.tenants {
        println!(
            "    {:<11} {:>5.1}% of cost, weight share {:>5.1}%",
            t.tenant,
            100.0 * t.cost as f64 / cost as f64,
            100.0 * f64::from(t.weight) / f64::from(weights.max(1))
        );
    }
    if let Some(mallory) = metrics.tenant("mallory") {
        println!("  the hostile tenant's failures, each contained to its own session:");
        for kind in FailureKind::ALL {
            if let Some(count) = mallory.failures.get(&kind) {
                println!("    {:<15} {count}", kind.as_str());
            }
        }
    }
    println!("  well-behaved tenants' action latency (ready → completed):");
    for t in metrics.tenants.iter().filter(|t| t.tenant != "mallory") {
        let failures: u64 = t.failures.values().sum();
        println!(
            "    {:<11} p50 {:>6} µs   p99 {:>6} µs   failures {failures}",
            t.tenant, t.latency_p50_us, t.latency_p99_us
        );
    }
}
