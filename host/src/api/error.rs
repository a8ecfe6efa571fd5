//! Every API error is JSON `{"code": "...", "message": "..."}` with a stable code, and the HTTP
//! status the code implies.

use super::bodies::ErrorBody;
use crate::app::DeployError;
use crate::error::Error;
use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What a client is told when the store is failing (the operator's log has the cause).
const STORE_UNAVAILABLE: &str =
    "the store is unavailable: nothing was written; try again shortly (the host retries by itself)";

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown token: send `Authorization: Bearer <token>`",
        )
    }

    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    /// 503 with `code` (and `Retry-After: 1`, as every 503): this node cannot answer now, but
    /// soon may.
    pub(crate) fn retry_soon(code: &'static str, message: impl Into<String>) -> Response {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let status = match &error {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::AlreadyExists { .. }
            | Error::TenantBusy { .. }
            | Error::SessionState { .. }
            | Error::NotApplied { .. }
            | Error::Fenced { .. } => StatusCode::CONFLICT,
            Error::QueueFull(_)
            | Error::Quota { .. }
            | Error::DeployRate { .. }
            | Error::Deploy(DeployError::CompileRunning) => StatusCode::TOO_MANY_REQUESTS,
            Error::Suspended { .. } => StatusCode::FORBIDDEN,
            Error::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Deploy(DeployError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Store(_)
            | Error::StoreDown(_)
            | Error::ShuttingDown
            | Error::TakingBack { .. }
            | Error::Deploy(DeployError::CompileBusy | DeployError::CompileDelayed) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Engine { .. } | Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        // The host's own failures are logged in full; their text (paths, SQL) stays out of answers.
        let message = match &error {
            Error::StoreDown(_) => STORE_UNAVAILABLE.to_owned(),
            Error::Store(store) if store.is_unavailable() => STORE_UNAVAILABLE.to_owned(),
            Error::Store(_) | Error::Engine { .. } | Error::Io { .. } => {
                tracing::error!(error = %error.chain(), "a request failed in the host");
                "the host could not complete this request; its operator's log has the details".to_owned()
            }
            _ => error.chain(),
        };
        ApiError::new(status, error.code(), message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => body_error(&e),
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        body_error(&rejection)
    }
}

fn body_error(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is over this route's limit")
    } else {
        ApiError::new(rejection.status(), "bad_body", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unavailable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.status, Json(ErrorBody { code: self.code, message: self.message })).into_response();
        // Whatever is unavailable now (the store, a compile slot, a session being taken back)
        // may be soon: a client waits a second rather than guess.
        if unavailable {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
