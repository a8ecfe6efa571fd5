//! The `turnstile` command: a thin CLI over the library.
//!
//! - `turnstile inspect APP.wasm` — imports, actions and limits of a module, or why deploy refuses it.
//! - `turnstile run APP.wasm [--entry NAME]` — one local session; customer events are lines of
//!   stdin (`/timeout` fires the pending wait's timeout at once); exits non-zero when it fails.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;
use turnstile::{EngineConfig, LocalSession, LogLevel, MemoryKv, Runtime, RuntimeConfig, Status, Step};

#[derive(Parser)]
#[command(name = "turnstile", version, about = "A multi-tenant WebAssembly host for contact-handling scripts")]
struct Cli {
    /// Where compiled modules are cached [default: $XDG_CACHE_HOME/turnstile or ~/.cache/turnstile].
    #[arg(long, global = true, env = "TURNSTILE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every module afresh, keeping no cache.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a module's imports, actions and memory limits, or why deploy refuses it.
    Inspect {
        /// The module.
        app: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one session of a module locally; customer events are read as lines of stdin.
    Run {
        /// The module.
        app: PathBuf,
        /// The action the session starts at.
        #[arg(long, default_value = "start")]
        entry: String,
        /// The entry action's input.
        #[arg(long, default_value = "")]
        input: String,
        /// Seed the key-value space: KEY=VALUE (repeatable).
        #[arg(long = "kv", value_name = "KEY=VALUE")]
        kv: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<std::process::ExitCode> {
    let cache_dir = if cli.no_cache { None } else { cli.cache_dir.or_else(default_cache_dir) };
    let runtime = Runtime::new(RuntimeConfig {
        engine: EngineConfig { cache_dir, ..EngineConfig::default() },
        ..RuntimeConfig::default()
    })?;
    match cli.command {
        Command::Inspect { app, json } => inspect(&runtime, &app, json),
        Command::Run { app, entry, input, kv } => run(&runtime, &app, &entry, input, &kv),
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("turnstile"))
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn inspect(runtime: &Runtime, path: &Path, json: bool) -> Result<std::process::ExitCode> {
    let info = match runtime.inspect(&read_module(path)?) {
        Ok(info) => info,
        Err(error) => {
            eprintln!("{}: refused [{}]: {error}", path.display(), error.code());
            return Ok(std::process::ExitCode::FAILURE);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("module   {} ({} bytes, {} functions)", path.display(), info.size, info.functions);
    println!("version  {}", info.hash);
    println!(
        "target   {}",
        if info.wasi {
            "wasm32-wasip1 (WASI: no files, env or network; stdout/stderr to the session log)"
        } else {
            "plain core module"
        }
    );
    let pages = |bytes: u64| format!("{} pages ({} KiB)", bytes / 65536, bytes / 1024);
    println!(
        "memory   min {}, max {}",
        pages(info.memory.min),
        info.memory.max.map_or_else(|| "none declared (the tenant's memory limit applies)".into(), pages)
    );
    if let Some(table) = info.table {
        println!(
            "table    min {} elements, max {}",
            table.min,
            table.max.map_or("none declared".into(), |m| m.to_string())
        );
    }
    println!("actions  ({})", info.actions.len());
    for action in &info.actions {
        let note = if action == turnstile::ERROR_ACTION { "   (error action: receives every failure)" } else { "" };
        println!("  {action}{note}");
    }
    println!("imports  ({})", info.imports.len());
    for import in &info.imports {
        println!("  {}::{}  {}", import.module, import.name, import.ty);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn run(runtime: &Runtime, path: &Path, entry: &str, input: String, seeds: &[String]) -> Result<std::process::ExitCode> {
    let kv = Arc::new(MemoryKv::default());
    for seed in seeds {
        let Some((key, value)) = seed.split_once('=') else { bail!("--kv takes KEY=VALUE, got `{seed}`") };
        kv.set(key, value.as_bytes());
    }
    let deployment = runtime.deploy(&read_module(path)?)?;
    eprintln!("deployed {} ({:?}), starting at `{entry}`", &deployment.app.hash()[..12], deployment.source);
    let (mut session, steps) = LocalSession::start(runtime, deployment.app, entry, input.into_bytes(), kv)?;
    print_steps(&steps);
    let lines = stdin_lines();
    loop {
        let steps = match session.status().clone() {
            Status::Waiting { wait, .. } => {
                let timeout = wait.timeout_ms.map(Duration::from_millis);
                println!(
                    "… waiting for the customer → `{}`{}",
                    wait.action,
                    match (&wait.timeout_ms, &wait.on_timeout) {
                        (Some(ms), Some(on)) => format!(" (timeout {ms} ms → `{on}`)"),
                        _ => String::new(),
                    }
                );
                let line = match timeout {
                    Some(timeout) => match lines.recv_timeout(timeout) {
                        Ok(line) => Some(line),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(left_waiting()),
                    },
                    None => match lines.recv() {
                        Ok(line) => Some(line),
                        Err(_) => return Ok(left_waiting()),
                    },
                };
                match line {
                    Some(line) if line.trim() != "/timeout" => {
                        println!("> {line}");
                        session.deliver(line.into_bytes())?
                    }
                    _ => {
                        println!("⏱ timeout");
                        session.time_out()?
                    }
                }
            }
            Status::Done { result } => {
                println!("✓ done: {result}");
                return Ok(std::process::ExitCode::SUCCESS);
            }
            Status::Failed { failure } => {
                eprintln!("✗ session failed [{}] in `{}`: {}", failure.kind, failure.action, failure.message);
                return Ok(std::process::ExitCode::FAILURE);
            }
            Status::Ready { .. } => bail!("the session stopped while ready; this is a bug"),
        };
        print_steps(&steps);
    }
}

fn left_waiting() -> std::process::ExitCode {
    println!("stdin closed: the session is left waiting");
    std::process::ExitCode::SUCCESS
}

/// Lines of stdin, read on their own thread so a wait can time out.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn print_steps(steps: &[Step]) {
    for step in steps {
        println!("→ {}  ({} fuel, {:.2?})", step.action, step.fuel, step.elapsed);
        for line in &step.log {
            let level = match line.level {
                LogLevel::Stdio => "stdout",
                LogLevel::Error => "error",
                LogLevel::Warn => "warn",
                LogLevel::Info => "info",
                LogLevel::Debug => "debug",
                LogLevel::Trace => "trace",
            };
            println!("  [{level}] {}", line.message);
        }
        for output in &step.outputs {
            println!("  {}", describe(output));
        }
        if let Some(failure) = &step.failure {
            println!("  ✗ {}: {}", failure.kind, failure.message);
        }
    }
}

/// One output as a person reads it: the contact-centre ones spelled out, others as JSON.
fn describe(output: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(output).unwrap_or(serde_json::Value::Null);
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    match value.get("type").and_then(serde_json::Value::as_str) {
        Some("say") => format!("🗣 say: {}", field("text")),
        Some("play") => format!("🔊 play: {}", field("url")),
        Some("gather") => format!("⌨ gather: {} (max {} digits)", field("prompt"), value["max_digits"]),
        Some("transfer") => format!("☎ transfer to queue `{}`", field("queue")),
        Some("hangup") => "☎ hang up".to_owned(),
        _ => format!("⇢ {output}"),
    }
}
