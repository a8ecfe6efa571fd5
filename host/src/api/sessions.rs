//! A tenant's routes: deploy and read its apps, start, list, read and cancel its sessions, and
//! deliver customer events to them (their outputs stream from `stream.rs`). Every one takes that
//! tenant's token, and another tenant's apps and sessions answer exactly like missing ones.

use super::bodies::{DeliveryBody, ErrorBody, NewSession, Page, SessionBody, SessionPage};
use super::{Api, ApiError, Body, Tenant, blocking, session_id};
use crate::error::Error;
use crate::host::{AppInfo, AppVersion};
use crate::session::SessionId;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};

/// Idempotency keys are at most this long, in visible ASCII.
const KEY_LIMIT: usize = 128;

/// Refuses a body whose content type is not one of `allowed`, saying what to send.
fn require_content_type(headers: &HeaderMap, allowed: &[&str], hint: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if allowed.contains(&given) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", hint))
    }
}

#[utoipa::path(
    put, path = "/v1/apps/{app}", tag = "tenant", security(("tenant" = [])),
    summary = "Deploy a version of an app",
    description = "The module is validated against the host's caps and compiled before anything is stored; new \
                   sessions start on it, open ones stay on their version.",
    params(("app" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "The app's name.")),
    request_body(
        description = "The Wasm module (at most 32 MiB).",
        content(("application/wasm"), ("application/octet-stream")),
    ),
    responses(
        (status = 201, description = "Deployed.", body = AppVersion, links(
            ("read" = (operation_id = "get_app", parameters(("app" = "$response.body#/app")))),
        )),
        (status = 409, description = "`conflict`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`, or the module is over a cap (named).", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: send `Content-Type: application/wasm`.", body = ErrorBody),
        (status = 422, description = "The module is refused: not Wasm, an import or export the ABI has not, over a \
                                      cap, or it did not compile in time (the code says which).", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (apps, versions, module bytes), `deploy_rate`, or \
                                      `upload_in_progress` / `compile_running` (a tenant's uploads and compiles go one \
                                      at a time).", body = ErrorBody),
        (status = 503, description = "`uploads_busy` or `compile_busy` (the host's upload or compile slots are all \
                                      taken: try again shortly), `compile_delayed` (the host is busy with actions, which \
                                      come first: the compile goes on; send the deploy again shortly), `store_unavailable`, \
                                      or `shutting_down`.", body = ErrorBody),
    )
)]
pub(super) async fn deploy(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AppVersion>), ApiError> {
    require_content_type(
        &headers,
        &["application/wasm", "application/octet-stream"],
        "upload the module as `Content-Type: application/wasm`",
    )?;
    let bytes = body?;
    let host = api.host.clone();
    let version = blocking(move || host.deploy(&tenant, &app, &bytes)).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

#[utoipa::path(
    get, path = "/v1/apps", tag = "tenant", security(("tenant" = [])),
    summary = "List the tenant's apps",
    responses((status = 200, description = "Its apps, by name: current version, actions, every version.", body = Vec<AppInfo>))
)]
pub(super) async fn list_apps(Tenant(tenant): Tenant, State(api): State<Api>) -> Result<Json<Vec<AppInfo>>, ApiError> {
    Ok(Json(api.host.tenant(&tenant)?.apps))
}

#[utoipa::path(
    get, path = "/v1/apps/{app}", tag = "tenant", security(("tenant" = [])),
    summary = "Read an app",
    params(("app" = String, Path, description = "The app's name.")),
    responses(
        (status = 200, description = "The app: current version, actions, every version.", body = AppInfo),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn get_app(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(app): Path<String>,
) -> Result<Json<AppInfo>, ApiError> {
    let info = api.host.tenant(&tenant)?;
    let app =
        info.apps.into_iter().find(|a| a.name == app).ok_or_else(|| ApiError::from(Error::not_found("app", &app)))?;
    Ok(Json(app))
}

#[utoipa::path(
    post, path = "/v1/sessions", tag = "tenant", security(("tenant" = [])),
    summary = "Start a session",
    description = "Runs `entry` of the app's current version with `input`; the session is durable when this answers. \
                   Under an `Idempotency-Key`, a retry (after a lost answer, or a failover) starts nothing: it answers \
                   200 with the session the key started, as long as that session is kept.",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$",
         description = "1 to 128 characters of visible ASCII; the tenant's own (kept with the session until it is purged)."),
    ),
    request_body = NewSession,
    responses(
        (status = 200, description = "This key started this session before, for the same app, entry and input: \
                                      nothing was started.", body = SessionBody),
        (status = 201, description = "Started.", body = SessionBody, links(
            ("read" = (operation_id = "get_session", parameters(("session" = "$response.body#/id")))),
            ("deliver" = (operation_id = "deliver", parameters(("session" = "$response.body#/id")))),
            ("outputs" = (operation_id = "outputs", parameters(("session" = "$response.body#/id")))),
            ("cancel" = (operation_id = "cancel_session", parameters(("session" = "$response.body#/id")))),
        )),
        (status = 403, description = "`tenant_suspended`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such app.", body = ErrorBody),
        (status = 400, description = "`bad_idempotency_key`.", body = ErrorBody),
        (status = 422, description = "`unknown_action`, `invalid_body`, or `idempotency_key_reused` (the key started \
                                      a session for another app, entry or input).", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (open sessions), or `queue_full`.", body = ErrorBody),
    )
)]
pub(super) async fn start_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    headers: HeaderMap,
    Body(new): Body<NewSession>,
) -> Result<(StatusCode, Json<SessionBody>), ApiError> {
    let key = idempotency_key(&headers)?;
    let host = api.host.clone();
    let (started, view) = blocking(move || {
        let started = host.start_session_once(&tenant, &new.app, &new.entry, new.input.into_bytes(), key.as_deref())?;
        Ok((started, host.session(&tenant, started.session)?))
    })
    .await?;
    let status = if started.before { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(SessionBody::from(&view))))
}

/// A page of `tenant`'s sessions, in id order, with the cursor of the next page.
pub(super) async fn sessions_page(
    api: &Api,
    tenant: String,
    query: Option<&str>,
) -> Result<Json<SessionPage>, ApiError> {
    let (after, limit) = Page::read(query)?;
    let host = api.host.clone();
    let sessions = blocking(move || host.tenant_sessions(&tenant, SessionId(after), limit)).await?;
    let next_after = (sessions.len() == limit).then(|| sessions.last().map(|s| s.id.0)).flatten();
    Ok(Json(SessionPage { sessions: sessions.iter().map(SessionBody::from).collect(), next_after }))
}

#[utoipa::path(
    get, path = "/v1/sessions", tag = "tenant", security(("tenant" = [])),
    summary = "List the tenant's sessions",
    description = "Open ones, and finished ones not yet purged, in id order, a page at a time.",
    params(Page),
    responses(
        (status = 200, description = "A page.", body = SessionPage),
        (status = 400, description = "`bad_query`: a parameter named, out of range or unknown.", body = ErrorBody),
    )
)]
pub(super) async fn list_sessions(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionPage>, ApiError> {
    sessions_page(&api, tenant, query.as_deref()).await
}

#[utoipa::path(
    get, path = "/v1/sessions/{session}", tag = "tenant", security(("tenant" = [])),
    summary = "Read a session",
    description = "Its status and step, receipts, last failure and output count, as of its last checkpoint.",
    params(("session" = u64, Path, description = "The session's id.")),
    responses(
        (status = 200, description = "The session.", body = SessionBody),
        (status = 404, description = "`not_found` (also once a finished session's retention has passed).", body = ErrorBody),
    )
)]
pub(super) async fn get_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<SessionBody>, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    Ok(Json(SessionBody::from(&blocking(move || host.session(&tenant, id)).await?)))
}

#[utoipa::path(
    delete, path = "/v1/sessions/{session}", tag = "tenant", security(("tenant" = [])),
    summary = "Cancel a session",
    params(("session" = u64, Path, description = "The session's id.")),
    responses(
        (status = 204, description = "Cancelled (durably)."),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`session_state`: it has finished.", body = ErrorBody),
    )
)]
pub(super) async fn cancel_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    blocking(move || host.cancel_session(&tenant, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/v1/sessions/{session}/events", tag = "tenant", security(("tenant" = [])),
    summary = "Deliver a customer event",
    description = "The body is the event; it is the input of the session's next action. Answered once it is durable; \
                   the same `Idempotency-Key` again changes nothing.",
    params(
        ("session" = u64, Path, description = "The session's id."),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$",
         description = "1 to 128 characters of visible ASCII."),
    ),
    request_body(
        description = "The event (at most the tenant's `max_input_bytes`).",
        content(("text/plain"), ("application/json"), ("application/octet-stream")),
    ),
    responses(
        (status = 202, description = "Durable in the session's inbox (or a duplicate).", body = DeliveryBody),
        (status = 400, description = "`bad_idempotency_key`, or `bad_body`.", body = ErrorBody),
        (status = 403, description = "`tenant_suspended`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`session_state`: it has finished.", body = ErrorBody),
        (status = 413, description = "`event_too_large`, or `body_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (idempotency keys kept).", body = ErrorBody),
    )
)]
pub(super) async fn deliver(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeliveryBody>), ApiError> {
    let id = session_id(&id)?;
    require_content_type(
        &headers,
        &["text/plain", "application/json", "application/octet-stream"],
        "send the event as text/plain, application/json or application/octet-stream",
    )?;
    let event = body?.to_vec();
    let key = idempotency_key(&headers)?;
    let delivery = api.host.deliver_async(&tenant, id, event, key.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryBody { delivery })))
}

/// The `Idempotency-Key` header: 1 to 128 characters of visible ASCII, or absent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > KEY_LIMIT || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            format!("an Idempotency-Key is 1 to {KEY_LIMIT} characters of visible ASCII (no spaces)"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}
