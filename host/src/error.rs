//! The library's error type: one enum, each variant with the context a person needs, and a stable
//! machine-readable `code()` that the CLI and (later) the HTTP API report.

use crate::app::DeployError;

/// Everything the host library can refuse or fail at. A tenant's action failing is *not* an
/// error of the host: it is a [`crate::Failure`] recorded in the session.
#[derive(Debug, thiserror::Error)]
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
    /// A customer event over the size limit.
    #[error("the event is {size} bytes, over the limit of {limit}")]
    EventTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A tenant, app or session that does not exist (or belongs to another tenant).
    #[error("no such {0}")]
    NotFound(String),
    /// A tenant or app name outside `[a-z0-9_-]{{1,64}}`.
    #[error("invalid {what} name `{name}`: use 1 to 64 of a-z, 0-9, `-` and `_`")]
    InvalidName {
        /// Tenant or app.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Something by that name already exists.
    #[error("{0}")]
    Conflict(String),
    /// The tenant is suspended by the operator.
    #[error("tenant `{0}` is suspended")]
    Suspended(String),
    /// A quota of the tenant would be exceeded.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// A pending queue or inbox is full: try again later. Nothing was queued.
    #[error("queue full: {0}; nothing was queued, try again later")]
    QueueFull(String),
    /// A configuration value that can't work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store failed, or holds data this host cannot use (the message says which).
    #[error("store: {0}")]
    Store(String),
    /// A session snapshot that can't be read or resumed here.
    #[error("session snapshot: {0}")]
    Snapshot(String),
    /// A checkpoint was refused because the session is now owned under a newer fencing token.
    #[error("session {session} is owned by another host now: this host's write was refused")]
    Fenced {
        /// The session.
        session: String,
    },
    /// wasmtime could not be set up as configured.
    #[error("engine: {0}")]
    Engine(String),
    /// A file or thread operation of the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What the host was doing.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// A stable snake_case code for this error, for programs to match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Deploy(e) => e.code(),
            Error::UnknownAction { .. } => "unknown_action",
            Error::SessionState { .. } => "session_state",
            Error::EventTooLarge { .. } => "event_too_large",
            Error::NotFound(_) => "not_found",
            Error::InvalidName { .. } => "invalid_name",
            Error::Conflict(_) => "conflict",
            Error::Quota(_) => "quota_exceeded",
            Error::Suspended(_) => "tenant_suspended",
            Error::QueueFull(_) => "queue_full",
            Error::Config(_) => "invalid_config",
            Error::Store(_) => "store",
            Error::Snapshot(_) => "bad_snapshot",
            Error::Fenced { .. } => "fenced",
            Error::Engine(_) => "engine",
            Error::Io { .. } => "io",
        }
    }
}
