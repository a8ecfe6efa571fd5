//! The `turnstile` command: a thin CLI over the library.
//!
//! - `turnstile inspect APP.wasm` — imports, actions and limits of a module, or why deploy refuses it.
//! - `turnstile run APP.wasm [--entry NAME]` — one local session; customer events are lines of
//!   stdin (`/timeout` fires the pending wait's timeout at once); exits non-zero when it fails.
//! - `turnstile demo` — several tenants, one of them hostile, thousands of simulated customers.
//! - `turnstile bench` — throughput, fairness and isolation figures against raw wasmtime.
//! - `turnstile new NAME` — a script project to start from.
//! - `turnstile deploy|apps|start|send|status|tail|tenants|token|suspend|resume` — a client of
//!   `turnstile serve` (`--server`/`TURNSTILE_URL`, `--token`/`TURNSTILE_TOKEN`).

mod cli {
    pub(crate) mod bench;
    pub(crate) mod client;
    pub(crate) mod demo;
    pub(crate) mod drive;
    pub(crate) mod new;
    pub(crate) mod run;
    pub(crate) mod serve;
}

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use turnstile::{EngineConfig, Runtime, RuntimeConfig};

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

/// Where the server is and who asks, for the client commands.
#[derive(clap::Args)]
struct Remote {
    /// The server's address.
    #[arg(long, env = "TURNSTILE_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A tenant's token (or the admin token, for operator commands).
    #[arg(long, env = "TURNSTILE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    fn client(self) -> Result<cli::client::Client> {
        cli::client::Client::new(&self.server, self.token)
    }
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
    /// The multi-tenant show: several tenants (one hostile) and thousands of simulated customers
    /// on one shared pool, with a live per-tenant table and a summary.
    Demo {
        /// Simulated customer sessions in all.
        #[arg(long, default_value_t = 3000)]
        sessions: usize,
        /// Worker threads of the pool [default: one per core].
        #[arg(long)]
        workers: Option<usize>,
    },
    /// The HTTP API for operators and tenants, on a data directory.
    Serve {
        /// A TOML configuration file (see turnstile.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The data directory (overrides the file).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The store's URL (overrides the file): `sqlite://PATH`, or `postgres://USER@HOST/DB`
        /// for a cluster of hosts sharing one database.
        #[arg(long, env = "TURNSTILE_STORE")]
        store: Option<String>,
    },
    /// A host on a data directory driven by JSON commands on stdin (one reply line each, written
    /// once the command's effect is durable): for scripts and the crash test.
    Drive {
        /// The data directory (SQLite database and compile cache).
        #[arg(long, default_value = "turnstile-data")]
        data_dir: PathBuf,
    },
    /// Deploy a module as a version of an app (tenant).
    Deploy {
        /// The app's name.
        app: String,
        /// The module.
        module: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tenant's apps and their versions (tenant).
    Apps {
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a session; prints its id (tenant).
    Start {
        /// The app.
        app: String,
        /// The entry action.
        #[arg(long, default_value = "start")]
        entry: String,
        /// The entry action's input.
        #[arg(long, default_value = "")]
        input: String,
        /// An idempotency key: a retry with the same key starts one session.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send a customer event to a session (tenant).
    Send {
        /// The session's id.
        session: u64,
        /// The event.
        event: String,
        /// An idempotency key: a retry with the same key is applied once.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tenant's sessions, one line each: id, app, status, outputs (tenant).
    Sessions {
        /// Only sessions with ids after this one (the previous page's last).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// A session's status, step, counters and last failure (tenant).
    Status {
        /// The session's id.
        session: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a session's outputs until it ends; exits 0 if it ended done (tenant).
    Tail {
        /// The session's id.
        session: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tenants, or create one with --create NAME (operator).
    Tenants {
        /// Create this tenant (with the server's default quota).
        #[arg(long)]
        create: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Issue a token for a tenant; prints it, shown this once (operator).
    Token {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Suspend a tenant: its new sessions and events are refused (operator).
    Suspend {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resume a suspended tenant (operator).
    Resume {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create a script project to start from: the SDK, a phone-line skeleton, a test, a README.
    New {
        /// The project's name (a-z, 0-9, `-`, `_`).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Copy a data directory's database while a host uses it, consistent as of one moment.
    Backup {
        /// The data directory.
        #[arg(long, default_value = "turnstile-data")]
        data_dir: PathBuf,
        /// Where to write the copy (must not exist yet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Move a session between hosts: export its snapshot, import it elsewhere.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The hosts sharing a PostgreSQL store (operator).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure throughput against raw wasmtime, fairness and isolation, all in one run.
    Bench {
        /// Seconds each measurement runs.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Measure event delivery over HTTP instead (events/s and p99 latency).
        #[arg(long, conflicts_with = "imports")]
        http: bool,
        /// Measure what a unit of fuel costs in each host call, beside plain wasm, instead.
        #[arg(long)]
        imports: bool,
        /// Run many short sessions through SQLite with a short retention instead, printing the
        /// database's size as it goes (it levels off once purging keeps up).
        #[arg(long, conflicts_with_all = ["http", "imports"])]
        soak: bool,
        /// Sessions the soak runs.
        #[arg(long, default_value_t = 200_000, requires = "soak")]
        sessions: usize,
        /// Retention of the soak's finished sessions, in seconds.
        #[arg(long, default_value_t = 2.0, requires = "soak")]
        retention_secs: f64,
        /// Only these figures, by letter (e.g. `abf`).
        #[arg(long, default_value = "")]
        only: String,
        /// Run the (a)/(b) pair this many times and print the distribution of b/a.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// The durable store (g) and `--http` measure: SQLite by default, or a `postgres://` URL
        /// (a scratch schema is made in that database and dropped afterwards).
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Which node holds which shard, under which epoch, for how much longer.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Write a session's snapshot (app version, state, next step, inbox, counters) as JSON.
    Export {
        /// The data directory of the host that has it.
        #[arg(long, default_value = "turnstile-data")]
        data_dir: PathBuf,
        /// The session's id.
        #[arg(long)]
        session: u64,
        /// Where to write it [default: stdout].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Resume a snapshot in a data directory, as a new session (the host picks it up when it starts).
    Import {
        /// The data directory of the host to resume it on.
        #[arg(long, default_value = "turnstile-data")]
        data_dir: PathBuf,
        /// The snapshot file.
        snapshot: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<ExitCode> {
    let cache_dir = if cli.no_cache { None } else { cli.cache_dir.or_else(cli::run::default_cache_dir) };
    let engine = EngineConfig { cache_dir, ..EngineConfig::default() };
    let runtime = || Runtime::new(RuntimeConfig { engine: engine.clone(), ..RuntimeConfig::default() });
    match cli.command {
        Command::Inspect { app, json } => cli::run::inspect(&runtime()?, &app, json),
        Command::Run { app, entry, input, kv } => cli::run::run(&runtime()?, &app, &entry, input, &kv),
        Command::Demo { sessions, workers } => cli::demo::demo(engine, sessions, workers),
        Command::Drive { data_dir } => cli::drive::drive(&data_dir),
        Command::Deploy { app, module, remote } => cli::client::deploy(&remote.client()?, &app, &module),
        Command::Apps { remote } => cli::client::apps(&remote.client()?),
        Command::Start { app, entry, input, key, remote } => {
            cli::client::start(&remote.client()?, &app, &entry, &input, key.as_deref())
        }
        Command::Send { session, event, key, remote } => {
            cli::client::send(&remote.client()?, session, &event, key.as_deref())
        }
        Command::Status { session, remote } => cli::client::session(&remote.client()?, session),
        Command::Sessions { after, limit, remote } => cli::client::sessions(&remote.client()?, after, limit),
        Command::Tail { session, remote } => cli::client::tail(&remote.client()?, session),
        Command::Cluster(ClusterCommand::Status { remote }) => cli::client::cluster_status(&remote.client()?),
        Command::Tenants { create, remote } => cli::client::tenants(&remote.client()?, create.as_deref()),
        Command::Token { tenant, remote } => cli::client::token(&remote.client()?, &tenant),
        Command::Suspend { tenant, remote } => cli::client::suspend(&remote.client()?, &tenant, true),
        Command::Resume { tenant, remote } => cli::client::suspend(&remote.client()?, &tenant, false),
        Command::New { name, dir } => cli::new::new(&dir, &name).map(|()| ExitCode::SUCCESS),
        Command::Backup { data_dir, out } => {
            turnstile::SqliteStore::backup(&data_dir.join("turnstile.db"), &out)
                .with_context(|| format!("backing up {}", data_dir.display()))?;
            eprintln!("backed up to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, listen, data_dir, store } => {
            cli::serve::serve(turnstile::config::ServeConfig::load(config.as_deref(), listen, data_dir, store)?)
        }
        Command::Session(SessionCommand::Export { data_dir, session, out }) => {
            cli::drive::export(&data_dir, session, out.as_deref())
        }
        Command::Session(SessionCommand::Import { data_dir, snapshot }) => cli::drive::import(&data_dir, &snapshot),
        Command::Bench { seconds, http: true, store, .. } => cli::bench::bench_http(seconds, store.as_deref()),
        Command::Bench { soak: true, sessions, retention_secs, .. } => {
            cli::bench::soak(sessions, std::time::Duration::from_secs_f64(retention_secs.clamp(0.1, 3600.0)))
        }
        Command::Bench { imports: true, .. } => {
            Ok(if cli::bench::imports()? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Bench { seconds, only, repeat, store, .. } => {
            let window = std::time::Duration::from_secs_f64(seconds.clamp(0.2, 60.0));
            cli::bench::bench(&cli::bench::BenchPlan { window, only, repeat, store })
        }
    }
}
