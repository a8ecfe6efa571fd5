//! Request bodies, read whole before a request is routed: within the route's size limit and the
//! body timeout (a body that never arrives does not hold its connection), module uploads a few at
//! a time and one per tenant, request targets at most 8 KiB.

use super::{Api, ApiError, JSON_LIMIT, bearer};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashSet;
use std::error::Error as _;
use std::sync::Arc;

/// Uploaded modules are at most this big (the deploy limit then applies).
pub(super) const MODULE_LIMIT: usize = 32 << 20;
/// Longer request targets are refused (`uri_too_long`).
const URI_LIMIT: usize = 8 << 10;

/// Reads a request's whole body before it is routed, within the route's size limit and the body
/// timeout (a body that never arrives does not hold its connection), uploads a few at a time
/// (each may be 32 MiB); refuses a request target over 8 KiB.
pub(super) async fn read_body(State(api): State<Api>, request: Request, next: Next) -> Result<Response, ApiError> {
    if request.uri().to_string().len() > URI_LIMIT {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request targets are at most {URI_LIMIT} bytes"),
        ));
    }
    // Only a tenant's upload to the deploy route is read with the large limit and takes an upload
    // turn: anyone else's PUT is answered before its body is read.
    let upload = request.method() == axum::http::Method::PUT && request.uri().path().starts_with("/v1/apps/");
    let uploader = if upload {
        Some(
            bearer(request.headers())
                .and_then(|token| api.host.authenticate(token))
                .ok_or_else(ApiError::unauthorized)?,
        )
    } else {
        None
    };
    let limit = if upload { MODULE_LIMIT } else { JSON_LIMIT };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("this route takes at most {limit} bytes"),
        )
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let _turn = match uploader {
        Some(tenant) => Some(UploadTurn::take(&api, tenant).await?),
        None => None,
    };
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) if error.source().is_some_and(|e| e.is::<http_body_util::LengthLimitError>()) => {
            return Err(too_large());
        }
        Ok(Err(error)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {error}"),
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {} s", api.body_timeout.as_secs()),
            ));
        }
    };
    Ok(next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await)
}

/// An upload's turn: one of the server's `max_uploads`, and its tenant's only one (a tenant that
/// stalls its uploads holds one turn, not all of them).
struct UploadTurn {
    _place: Uploading,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A tenant marked as uploading; unmarked when dropped.
struct Uploading {
    tenant: String,
    uploading: Arc<std::sync::Mutex<HashSet<String>>>,
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.uploading.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.tenant);
    }
}

impl UploadTurn {
    /// Waits for a turn (at most the body timeout), unless the tenant is uploading already.
    async fn take(api: &Api, tenant: String) -> Result<UploadTurn, ApiError> {
        let uploading = api.uploading.clone();
        if !uploading.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(tenant.clone()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "upload_in_progress",
                "this tenant is already uploading a module: its uploads go one at a time",
            ));
        }
        let place = Uploading { tenant, uploading };
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "uploads_busy",
                "too many uploads at once: try again shortly",
            )
        };
        let permit = tokio::time::timeout(api.body_timeout, api.uploads.clone().acquire_owned()).await;
        Ok(UploadTurn { _place: place, _permit: permit.map_err(|_| busy())?.map_err(|_| busy())? })
    }
}
