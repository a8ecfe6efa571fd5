//! The library's error type: one enum whose variants carry the context a person needs and keep
//! their sources, with a stable machine-readable `code()` that the CLI and the HTTP API report
//! (the API chooses its status by variant, never by the text).

use crate::app::DeployError;
use crate::session::SessionId;
use crate::snapshot::SnapshotError;
use crate::store::StoreError;

/// Everything the host library can refuse or fail at. A tenant's action failing is *not* an
/// error of the host: it is a [`crate::Failure`] recorded in the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module was refused at deploy.
    #[error("deploy refused: {0}")]
    Deploy(#[from] DeployError),
    /// An action name that the app does not export.
    #[error("the app has no action `{name}` (its actions: {available})")]
    UnknownAction {
        /// The name asked for.
        name: String,
        /// The app's actions, comma-separated.
        available: String,
    },
    /// The session is not in a state that allows the request.
    #[error("the session is {status}: it cannot {request}")]
    SessionState {
        /// The session's status.
        status: &'static str,
        /// What was asked.
        request: &'static str,
    },
    /// An event that was acknowledged, but the session ended before it took it.
    #[error("session {session} ended before it took this event: it was not applied")]
    NotApplied {
        /// The session.
        session: SessionId,
    },
    /// An idempotency key that started a session for a different request (another app, entry
    /// action or input).
    #[error(
        "the Idempotency-Key `{key}` started session {session} with another app, entry or input: use a new key for a new session"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The session it started.
        session: SessionId,
    },
    /// A customer event over the size limit.
    #[error("the event is {size} bytes, over the limit of {limit}")]
    EventTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A tenant, app, token or session that does not exist (or belongs to another tenant, or,
    /// for a session, finished and was purged once its retention had passed).
    #[error("no such {what} `{name}`{}", purged_hint(.what))]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// A tenant or app name outside `[a-z0-9_-]{{1,64}}`.
    #[error("invalid {what} name `{name}`: use 1 to 64 of a-z, 0-9, `-` and `_`")]
    InvalidName {
        /// Tenant or app.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Something by that name already exists.
    #[error("{what} `{name}` already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A tenant that still has open sessions cannot be deleted.
    #[error("tenant `{tenant}` has {open} open sessions: cancel them (or let them finish) first")]
    TenantBusy {
        /// The tenant.
        tenant: String,
        /// Its open sessions.
        open: u64,
    },
    /// The tenant is suspended by the operator.
    #[error("tenant `{tenant}` is suspended")]
    Suspended {
        /// The tenant.
        tenant: String,
    },
    /// A quota of the tenant would be exceeded.
    #[error("quota exceeded: {owner} already has {count} {what}, its limit")]
    Quota {
        /// The tenant or app whose quota it is.
        owner: String,
        /// What is counted.
        what: &'static str,
        /// How many it has (the limit).
        count: u64,
    },
    /// The tenant deployed as many modules in the last minute as it may.
    #[error("tenant `{tenant}` may deploy {per_minute} modules a minute: try again in {retry_after_secs} s")]
    DeployRate {
        /// The tenant.
        tenant: String,
        /// Its limit (`deploys_per_minute`).
        per_minute: u32,
        /// Seconds until it may deploy again.
        retry_after_secs: u64,
    },
    /// A pending queue or inbox is full: try again later. Nothing was queued.
    #[error("queue full: {0}; nothing was queued, try again later")]
    QueueFull(QueueFull),
    /// A configuration value that can't work.
    #[error("invalid configuration: `{field}`: {problem}")]
    InvalidConfig {
        /// The field (dotted path).
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// The store failed, or holds data this host cannot use (shared: one failed commit answers
    /// every caller whose write was in it).
    #[error("store: {0}")]
    Store(#[source] std::sync::Arc<StoreError>),
    /// New work refused, nothing written: the store is failing (or a commit's outcome is still
    /// unknown), and the host takes new work again once a commit goes through.
    #[error("the store is unavailable: nothing was written")]
    StoreDown(#[source] std::sync::Arc<StoreError>),
    /// A session snapshot that can't be read or resumed here.
    #[error("session snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A checkpoint was refused because the session is now owned under a newer fencing token.
    #[error("session {session} is owned by another host now: this host's write was refused")]
    Fenced {
        /// The session.
        session: SessionId,
    },
    /// A checkpoint of the session could not be committed: the host is taking it back from its
    /// last committed checkpoint, and it takes requests again in a moment.
    #[error("session {session} is being taken back from its last committed checkpoint: try again in a moment")]
    TakingBack {
        /// The session.
        session: SessionId,
    },
    /// The host is shutting down and takes no new work.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// wasmtime could not be set up as configured.
    #[error("engine: {context}")]
    Engine {
        /// What the host was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file or thread operation of the host failed.
    #[error("{context}")]
    Io {
        /// What the host was doing.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a missing session may be: one that expired (the same words whatever the id, so that
/// they tell nothing of another tenant's sessions).
fn purged_hint(what: &str) -> &'static str {
    if what == "session" { " (finished sessions are purged once their retention has passed)" } else { "" }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Error {
        Error::Store(std::sync::Arc::new(error))
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    pub(crate) fn engine(context: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Engine { context, source: source.into() }
    }

    pub(crate) fn not_found(what: &'static str, name: impl std::fmt::Display) -> Error {
        Error::NotFound { what, name: name.to_string() }
    }

    /// A stable snake_case code for this error, for programs to match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Deploy(e) => e.code(),
            Error::UnknownAction { .. } => "unknown_action",
            Error::SessionState { .. } => "session_state",
            Error::NotApplied { .. } => "not_applied",
            Error::KeyReused { .. } => "idempotency_key_reused",
            Error::EventTooLarge { .. } => "event_too_large",
            Error::NotFound { .. } => "not_found",
            Error::InvalidName { .. } => "invalid_name",
            Error::AlreadyExists { .. } | Error::TenantBusy { .. } => "conflict",
            Error::Quota { .. } => "quota_exceeded",
            Error::Suspended { .. } => "tenant_suspended",
            Error::QueueFull(_) => "queue_full",
            Error::DeployRate { .. } => "deploy_rate",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::Store(error) if error.is_unavailable() => "store_unavailable",
            Error::StoreDown(_) => "store_unavailable",
            Error::Store(_) => "store",
            Error::Snapshot(_) => "bad_snapshot",
            Error::Fenced { .. } => "fenced",
            Error::TakingBack { .. } => "session_recovering",
            Error::ShuttingDown => "shutting_down",
            Error::Engine { .. } => "engine",
            Error::Io { .. } => "io",
        }
    }

    /// The message with every cause after it: what a person reads.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let said = cause.to_string();
            // A variant that shows its cause already (`store: …`) is not repeated.
            if !text.ends_with(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            source = cause.source();
        }
        text
    }
}

/// Why an action could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// The app's pending queue is at its bound.
    App(usize),
    /// All pending queues together are at the host's bound.
    Total(usize),
    /// The session's inbox of events not yet taken is at its bound.
    Inbox(usize),
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueFull::App(limit) => write!(f, "the app already has {limit} actions pending"),
            QueueFull::Total(limit) => write!(f, "the host already has {limit} actions pending"),
            QueueFull::Inbox(limit) => write!(f, "the session already holds {limit} events it has not taken"),
        }
    }
}
