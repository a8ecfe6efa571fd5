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
            Error::Engine(_) => "engine",
            Error::Io { .. } => "io",
        }
    }
}
