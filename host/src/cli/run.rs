//! The tenant developer's commands: `inspect` a module, `run` one session of it locally.

use anyhow::{Context, Result, bail};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::Duration;
use turnstile::{LocalSession, LogLevel, MemoryKv, Runtime, Status, Step};

pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("turnstile"))
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub(crate) fn inspect(runtime: &Runtime, path: &Path, json: bool) -> Result<ExitCode> {
    let info = match runtime.inspect(&read_module(path)?) {
        Ok(info) => info,
        Err(error) => {
            eprintln!("{}: refused [{}]: {error}", path.display(), error.code());
            return Ok(ExitCode::FAILURE);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run(runtime: &Runtime, path: &Path, entry: &str, input: String, seeds: &[String]) -> Result<ExitCode> {
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
                return Ok(ExitCode::SUCCESS);
            }
            Status::Failed { failure } => {
                eprintln!("✗ session failed [{}] in `{}`: {}", failure.kind, failure.action, failure.message);
                return Ok(ExitCode::FAILURE);
            }
            Status::Ready { .. } | Status::Cancelled => {
                bail!("a local session stopped {}; this is a bug", session.status().name())
            }
        };
        print_steps(&steps);
    }
}

fn left_waiting() -> ExitCode {
    println!("stdin closed: the session is left waiting");
    ExitCode::SUCCESS
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
