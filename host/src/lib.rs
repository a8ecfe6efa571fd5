//! Turnstile: a multi-tenant WebAssembly host for contact-handling scripts.
//!
//! Tenants upload *script applications*, Wasm modules whose exported `() -> i32` functions are
//! *actions*. A customer interaction is a *session* that walks from action to action and waits
//! for the customer in between. Every action runs in a fresh, fuel-metered, memory- and
//! time-limited instance, so no hostile module can escape or exhaust the host.
//!
//! # The flow of one action
//! ```text
//!  Session (plain data)       Runtime (one per host)                 sandbox (per action)
//!  status: Ready{action} ──▶  run_action(app, action, input, state) ──▶ Store + fuel + deadline
//!                             app.pre (InstancePre, compiled once)     instantiate (pooling)
//!                                                                      call export ── ABI ──▶ abi.rs
//!  apply(outcome) ◀────────── ActionOutcome { Effects | Failure } ◀──── classify trap / violation
//!  ⇒ Ready / Waiting / Done / Failed, and what it releases (outputs, kv writes)
//! ```
//!
//! # Modules
//! - `engine`: the only place that configures wasmtime (pool, fuel, epochs, cache).
//! - `abi`: the host side of guest ABI v1, the only code that touches guest memory.
//! - `app`: deploy (validate, discover actions, compile through the cache).
//! - `sandbox`: one action in a fresh instance, its outcome classified.
//! - `session`: the session state machine, as plain data.
//! - `runtime`: engine + linker + deployed apps, shared by all sessions.
//! - `local`: one session driven in-process (for `turnstile run` and tests).
//! - `host`: [`Host`], tenants, apps, sessions; `scheduler` (DRR, buckets, action list),
//!   `pool` (workers), `timers` (wait timeouts), `checkpoint` (group commit), `metrics`.
//! - `store`: the [`Store`] trait, [`MemoryStore`] and [`SqliteStore`]; `snapshot`: portable
//!   session snapshots.
//! - [`api`]: the HTTP API (axum) over a [`Host`]; [`config`]: `turnstile serve`'s configuration.
//! - [`examples`]: the repository's example apps, built on demand (demo, bench, tests).
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use turnstile::{LocalSession, MemoryKv, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let bytes = std::fs::read("ivr_menu.wasm")?;
//! let app = runtime.deploy(&bytes)?.app;
//! let (mut call, steps) = LocalSession::start(&runtime, app, "start", Vec::new(), Arc::new(MemoryKv::default()))?;
//! for step in &steps {
//!     println!("{}: {:?}", step.action, step.outputs);
//! }
//! let steps = call.deliver(b"1".to_vec())?; // the customer pressed 1
//! # let _ = steps;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod abi;
pub mod api;
mod app;
mod checkpoint;
pub mod config;
mod engine;
mod error;
pub mod examples;
mod failure;
mod host;
mod limits;
mod local;
mod metrics;
mod pool;
mod runtime;
mod sandbox;
mod scheduler;
mod session;
mod snapshot;
mod store;
mod timers;

pub use abi::{CHARGES, Charge, KvRead, LogLevel, LogLine};
pub use app::{App, DeployError, ERROR_ACTION, Extent, ImportInfo, ModuleInfo, module_hash};
pub use engine::EngineConfig;
pub use error::Error;
pub use failure::{Failure, FailureKind};
pub use host::{AppInfo, AppVersion, Delivery, Host, HostConfig, SessionEvent, SessionView, TenantConfig, TenantInfo};
pub use limits::{DeployLimits, Limits};
pub use local::{LocalSession, MemoryKv, Step};
pub use metrics::{MetricsSnapshot, TenantMetrics};
pub use runtime::{CompileSource, CompileStats, Deployment, Runtime, RuntimeConfig};
pub use sandbox::{ActionOutcome, Effects, Usage};
pub use scheduler::SessionId;
pub use session::{Counters, Next, Released, Session, Status, Wait};
pub use snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Snapshot, export_session, import_session};
pub use store::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, MemoryStore, SessionRecord, SqliteStore, Store, StoredSession,
    TenantRecord, TokenRecord, open_store,
};
