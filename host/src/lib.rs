//! Turnstile: a multi-tenant WebAssembly host for contact-handling scripts.
//!
//! Tenants upload *script applications*, Wasm modules whose exported `() -> i32` functions are
//! *actions*. A customer interaction is a *session* that walks from action to action and waits
//! for the customer in between. Every action runs in a fresh, fuel-metered, memory- and
//! time-limited instance, so no hostile module can escape or exhaust the host.
//!
//! # The path of one action through a [`Host`]
//! ```text
//!  HTTP (api) ──▶ Host ── event / new session ──▶ commit queue ── one transaction a group ──▶ Store
//!                  ▲                                                                         │
//!                  └──── 202/201 once committed ◀──── lifecycle: the session is ready ◀──────┘
//!  dispatcher (fair share in real cost, action list, buckets) ──▶ worker ──▶ sandbox:
//!      one slice synchronously, or a preemptible task (yields after every slice, parks asleep)
//!      Store + fuel + memory limit + deadline, instance from the pool, export ── ABI ──▶ abi.rs
//!  outcome ──▶ lifecycle: checkpoint ──▶ group commit ──▶ outputs released to watchers (bus),
//!                                                         next action queued or timer armed
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
//! - `host`: [`Host`], a facade over `host/`: tenants, tokens, the sharded session table, the
//!   session lifecycle, the dispatcher, group commit, timers, the event bus, resume, the pool.
//! - `scheduler`: fair share (stride, in real cost), buckets, the action list; `metrics`.
//! - `json`: depth bounds on what guests hand the host.
//! - `human`: durations and sizes in a configuration as people write them (`"250ms"`, `"64MiB"`).
//! - `store`: the [`Store`] trait, [`MemoryStore`], [`SqliteStore`] and [`PgStore`] (with its shard
//!   [`Lease`]s); `snapshot`: portable session snapshots.
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
pub mod config;
mod engine;
mod error;
pub mod examples;
mod failure;
mod host;
mod human;
mod json;
mod limits;
mod local;
mod metrics;
mod runtime;
mod sandbox;
mod scheduler;
mod session;
mod snapshot;
mod store;

pub use abi::{CHARGES, Charge, KvRead, LogLevel, LogLine};
pub use app::{App, DeployError, ERROR_ACTION, Extent, ImportInfo, ModuleInfo, module_hash};
pub use engine::{EngineConfig, MemoryInit};
pub use error::Error;
pub use error::QueueFull;
pub use failure::{Failure, FailureKind};
pub use host::{
    AppInfo, AppVersion, Delivery, Host, HostConfig, Output, SessionEvent, SessionView, Started, StoreOutage,
    StreamSlot, TenantInfo,
};
pub use limits::{DeployLimits, Limits, TenantConfig};
pub use local::{LocalSession, MemoryKv, Step};
pub use metrics::{Histogram, MetricsSnapshot, TenantMetrics};
pub use runtime::{CompileSource, CompileStats, Deployment, Runtime, RuntimeConfig};
pub use sandbox::{ActionOutcome, Effects, Usage};
pub use session::{Counters, MAX_RESULT_DEPTH, MAX_WAIT_MS, Next, Released, Session, SessionId, Status, Wait};
pub use snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Snapshot, SnapshotError, export_session, import_session};
pub use store::postgres::ClaimPolicy;
pub use store::postgres::leases::{Lease, LeaseRow};
pub use store::{
    AppRecord, Appended, Checkpoint, Image, InboxEvent, MemoryStore, PgStore, Quarantined, SessionRecord, SqliteStore,
    StartKey, StorageUsage, Store, StoreError, StoredSession, TenantRecord, TokenRecord, Unapplied, Write, Written,
    open_store,
};
