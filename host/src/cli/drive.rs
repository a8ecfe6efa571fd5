//! `turnstile drive`: a host on a data directory (SQLite store and compile cache), driven by
//! JSON commands on stdin, one reply line per command on stdout. A reply is written only once
//! the command's effect is durable, so a driver that saw a reply may rely on it after a crash.
//!
//! Commands (one JSON object a line):
//! - `{"op":"tenant","name":"acme","weight":2}` — create a tenant (or leave an existing one be).
//! - `{"op":"deploy","tenant":"acme","app":"bot","path":"bot.wasm"}`
//! - `{"op":"start","tenant":"acme","app":"bot","entry":"start","input":"…"}` → `{"ok":true,"session":7}`
//! - `{"op":"deliver","tenant":"acme","session":7,"event":"yes","key":"e-1"}` → `{"ok":true,"delivery":"accepted"}`
//! - `{"op":"settle"}` — reply once no session is ready, running or being committed.
//! - `{"op":"dump"}` — every session: id, tenant, status, state (base64) and released outputs.
//!
//! Errors are `{"ok":false,"code":"…","message":"…"}`.
//!
//! Also here: `turnstile session export|import`, which work on a data directory's store.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use turnstile::{
    Delivery, EngineConfig, Error, Host, HostConfig, RuntimeConfig, SessionId, Snapshot, SqliteStore, TenantConfig,
    export_session, import_session,
};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Tenant {
        name: String,
        #[serde(default = "one")]
        weight: u32,
    },
    Deploy {
        tenant: String,
        app: String,
        path: PathBuf,
    },
    Start {
        tenant: String,
        app: String,
        entry: String,
        #[serde(default)]
        input: String,
    },
    Deliver {
        tenant: String,
        session: u64,
        event: String,
        key: Option<String>,
    },
    Settle,
    Dump,
}

fn one() -> u32 {
    1
}

/// The store of a data directory.
fn open_store(data_dir: &Path) -> Result<SqliteStore> {
    Ok(SqliteStore::open(&data_dir.join("turnstile.db"))?)
}

/// The host of a data directory: its SQLite database and its compile cache.
pub(crate) fn open_host(data_dir: &Path, workers: Option<usize>) -> Result<Host> {
    let store = open_store(data_dir)?;
    let engine = EngineConfig { cache_dir: Some(data_dir.join("modules")), ..EngineConfig::default() };
    let mut config = HostConfig {
        store: Arc::new(store),
        runtime: RuntimeConfig { engine, ..RuntimeConfig::default() },
        ..HostConfig::default()
    };
    if let Some(workers) = workers {
        config.workers = workers;
    }
    Host::new(config).with_context(|| format!("opening the host in {}", data_dir.display()))
}

pub(crate) fn drive(data_dir: &Path) -> Result<ExitCode> {
    let host = open_host(data_dir, None)?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(command) => match execute(&host, command) {
                Ok(reply) => reply,
                Err(error) => json!({ "ok": false, "code": error.code(), "message": error.to_string() }),
            },
            Err(error) => json!({ "ok": false, "code": "bad_command", "message": error.to_string() }),
        };
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn execute(host: &Host, command: Command) -> Result<Value, Error> {
    Ok(match command {
        Command::Tenant { name, weight } => {
            match host.create_tenant(&name, TenantConfig { weight, ..TenantConfig::default() }) {
                Ok(()) | Err(Error::AlreadyExists { .. }) => json!({ "ok": true }),
                Err(error) => return Err(error),
            }
        }
        Command::Deploy { tenant, app, path } => {
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
            let version = host.deploy(&tenant, &app, &bytes)?;
            json!({ "ok": true, "version": version.version, "source": version.source })
        }
        Command::Start { tenant, app, entry, input } => {
            let id = host.start_session(&tenant, &app, &entry, input.into_bytes())?;
            json!({ "ok": true, "session": id.0 })
        }
        Command::Deliver { tenant, session, event, key } => {
            let delivery = host.deliver(&tenant, SessionId(session), event.into_bytes(), key.as_deref())?;
            let delivery = if delivery == Delivery::Accepted { "accepted" } else { "duplicate" };
            json!({ "ok": true, "delivery": delivery })
        }
        Command::Settle => {
            host.settle();
            json!({ "ok": true })
        }
        Command::Dump => {
            let mut sessions = Vec::new();
            for (tenant, view) in host.sessions() {
                let outputs: Vec<String> =
                    host.outputs(&tenant, view.id, 0, usize::MAX)?.into_iter().map(|o| o.body).collect();
                sessions.push(json!({
                    "session": view.id.0,
                    "tenant": tenant,
                    "status": view.status,
                    "outputs": outputs,
                    "counters": view.counters,
                    "state": view.state,
                    "unapplied": view.unapplied,
                }));
            }
            json!({ "ok": true, "sessions": sessions })
        }
    })
}

pub(crate) fn export(data_dir: &Path, session: u64, out: Option<&Path>) -> Result<ExitCode> {
    let snapshot = export_session(&open_store(data_dir)?, SessionId(session))?;
    let text = serde_json::to_string_pretty(&snapshot)?;
    match out {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn import(data_dir: &Path, file: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let snapshot = Snapshot::parse(&text).with_context(|| format!("{}", file.display()))?;
    let id = import_session(&open_store(data_dir)?, &snapshot)?;
    println!("imported session {} of `{}`/`{}` as session {}", snapshot.session, snapshot.tenant, snapshot.app, id.0);
    Ok(ExitCode::SUCCESS)
}
