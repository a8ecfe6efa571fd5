//! The HTTP API over a [`Host`]: operator routes behind the admin token, tenant routes behind
//! that tenant's token, `/metrics`, `/healthz`, `/readyz` and `/openapi.json`.
//!
//! - A tenant's token only ever reaches that tenant's apps and sessions: another tenant's are
//!   answered exactly like ones that don't exist (404), so their existence can't be probed.
//! - Every error is JSON `{"code","message"}` with a stable code (`api/error.rs`).
//! - No blocking lock is taken on the async threads: token and tenant look-ups take no lock,
//!   and every other host call (sessions, commits, compiles, metrics) runs on the blocking pool.

mod body;
mod console;
mod error;
mod openapi;
mod server;
mod stream;

pub use error::ApiError;
pub use openapi::{Auth, ROUTES, openapi_document};
pub use server::{HttpLimits, serve};

use crate::error::Error;
use crate::host::{Delivery, Host, SessionView, TenantInfo};
use crate::limits::TenantConfig;
use crate::session::SessionId;
use crate::store::PgStore;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Bodies of JSON routes are at most this big.
const JSON_LIMIT: usize = 64 << 10;
/// Idempotency keys are at most this long, in visible ASCII.
const KEY_LIMIT: usize = 128;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    host: Arc<Host>,
    admin_token: Arc<str>,
    ready: Arc<AtomicBool>,
    default_tenant: Arc<TenantConfig>,
    /// Set when the server shuts down: output streams end (clients resume after the restart).
    closing: Arc<watch::Sender<bool>>,
    uploads: Arc<Semaphore>,
    /// Tenants with an upload under way (one each).
    uploading: Arc<std::sync::Mutex<HashSet<String>>>,
    body_timeout: Duration,
    protect_metrics: bool,
    /// The shared store, when the host runs on PostgreSQL (`GET /v1/cluster` reads its leases).
    cluster: Option<Arc<PgStore>>,
    /// Recent readings of the tenants' latencies, for the console's overview.
    latency_history: Arc<console::LatencyHistory>,
}

impl Api {
    /// An API over `host`, with `admin_token` for the operator routes.
    pub fn new(host: Arc<Host>, admin_token: &str) -> Api {
        Api {
            host,
            admin_token: admin_token.into(),
            ready: Arc::new(AtomicBool::new(true)),
            default_tenant: Arc::new(TenantConfig::default()),
            closing: Arc::new(watch::Sender::new(false)),
            uploads: Arc::new(Semaphore::new(HttpLimits::default().max_uploads)),
            uploading: Arc::default(),
            protect_metrics: false,
            body_timeout: Duration::from_secs(HttpLimits::default().body_timeout_secs),
            cluster: None,
            latency_history: Arc::default(),
        }
    }

    /// The host runs on this PostgreSQL store: `GET /v1/cluster` shows its shard leases.
    pub fn with_cluster(mut self, store: Arc<PgStore>) -> Api {
        self.cluster = Some(store);
        self
    }

    /// Applies the server's limits on uploads and body reads.
    pub fn with_limits(mut self, limits: &HttpLimits) -> Api {
        self.uploads = Arc::new(Semaphore::new(limits.max_uploads.max(1)));
        self.body_timeout = Duration::from_secs(limits.body_timeout_secs.max(1));
        self.protect_metrics = limits.protect_metrics;
        self
    }

    /// What tells the API's output streams that the server is shutting down.
    pub fn closing(&self) -> Arc<watch::Sender<bool>> {
        self.closing.clone()
    }

    /// The quota of tenants created without one.
    pub fn with_default_tenant(mut self, config: TenantConfig) -> Api {
        self.default_tenant = Arc::new(config);
        self
    }

    /// Marks the server as going down: `/readyz` answers 503 from now on.
    pub fn set_unready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// The router of the whole API.
pub fn router(api: Api) -> Router {
    let json_routes = Router::new()
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/tenants/{tenant}", get(get_tenant).put(update_tenant).delete(delete_tenant))
        .route("/v1/tenants/{tenant}/suspend", post(suspend_tenant))
        .route("/v1/tenants/{tenant}/resume", post(resume_tenant))
        .route("/v1/tenants/{tenant}/tokens", post(issue_token))
        .route("/v1/tenants/{tenant}/tokens/{token}", axum::routing::delete(revoke_token))
        .route("/v1/tenants/{tenant}/sessions", get(console::tenant_sessions))
        .route("/v1/tenants/{tenant}/sessions/{session}", get(console::tenant_session))
        .route("/v1/overview", get(console::overview))
        .route("/v1/cluster", get(cluster))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(get_app))
        .route("/v1/sessions", post(start_session).get(list_sessions))
        .route("/v1/sessions/{session}", get(get_session).delete(cancel_session))
        .route("/v1/sessions/{session}/events", post(deliver))
        .route("/v1/sessions/{session}/outputs", get(stream::outputs))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    let upload = Router::new().route("/v1/apps/{app}", put(deploy)).layer(DefaultBodyLimit::max(body::MODULE_LIMIT));
    Router::new()
        .merge(json_routes)
        .merge(upload)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { Json(openapi_document()) }))
        .route("/console", get(console::page))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(middleware::from_fn_with_state(api.clone(), body::read_body))
        .layer(middleware::from_fn(request_id))
        .with_state(api)
}

/// Gives each request an id (the caller's `x-request-id`, or a new one), logs it with the
/// outcome, and returns it in the response.
async fn request_id(request: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64)
        .map_or_else(|| format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed)), str::to_owned);
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    tracing::info!(request_id = %id, %method, %path, status = response.status().as_u16(), micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX), "request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// The operator.
struct Admin;

impl FromRequestParts<Api> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Admin, ApiError> {
        match bearer(&parts.headers) {
            Some(token) if constant_time_eq(token.as_bytes(), api.admin_token.as_bytes()) => Ok(Admin),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// A tenant, by its token.
struct Tenant(String);

impl FromRequestParts<Api> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Tenant, ApiError> {
        bearer(&parts.headers)
            .and_then(|token| api.host.authenticate(token))
            .map(Tenant)
            .ok_or_else(ApiError::unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body, with the API's own errors for a bad one.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body<T>, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Body(value))
    }
}

/// Runs a host call on the blocking pool.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request's task failed")),
    }
}

fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse().map(SessionId).map_err(|_| ApiError::from(Error::not_found("session", raw)))
}

fn tenant_json(tenant: &TenantInfo) -> Value {
    json!({
        "name": tenant.name,
        "config": tenant.config,
        "open_sessions": tenant.open_sessions,
        "finished_sessions": tenant.finished_sessions,
        "storage": tenant.storage,
        "apps": tenant.apps.iter().map(|a| json!({ "name": a.name, "version": a.version, "actions": a.actions, "versions": a.versions })).collect::<Vec<_>>(),
    })
}

fn session_json(view: &SessionView) -> Value {
    json!({
        "id": view.id.0,
        "app": view.app,
        "version": view.version,
        "status": view.status.name(),
        "step": view.status,
        "counters": view.counters,
        "last_failure": view.last_failure,
        "outputs": view.outputs,
        "unapplied": view.unapplied,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    config: Option<TenantConfig>,
}

async fn create_tenant(_: Admin, State(api): State<Api>, Body(new): Body<NewTenant>) -> Result<Response, ApiError> {
    let host = api.host.clone();
    let config = new.config.unwrap_or_else(|| TenantConfig::clone(&api.default_tenant));
    let info = blocking(move || {
        host.create_tenant(&new.name, config)?;
        host.tenant(&new.name)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(tenant_json(&info))).into_response())
}

async fn list_tenants(_: Admin, State(api): State<Api>) -> Json<Value> {
    Json(json!({ "tenants": api.host.tenants().iter().map(tenant_json).collect::<Vec<_>>() }))
}

/// The shard leases of a PostgreSQL store as the database has them now (operator).
async fn cluster(_: Admin, State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let Some(store) = api.cluster.clone() else {
        return Ok(Json(json!({ "store": "single node (not PostgreSQL)", "node": null, "shards": [] })));
    };
    let (node, holds) = (store.claim_node(), store.holds_claim());
    let shards = blocking(move || store.lease_table().map_err(Error::from)).await?;
    Ok(Json(json!({ "store": "postgres", "node": node, "holds_all_shards": holds, "shards": shards })))
}

async fn get_tenant(_: Admin, State(api): State<Api>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(tenant_json(&api.host.tenant(&tenant)?)))
}

async fn update_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
    Body(config): Body<TenantConfig>,
) -> Result<Json<Value>, ApiError> {
    let host = api.host.clone();
    let info = blocking(move || {
        // Suspension has routes of its own: an update keeps it as it is.
        let suspended = host.tenant(&tenant)?.config.suspended;
        host.update_tenant(&tenant, TenantConfig { suspended, ..config })?;
        host.tenant(&tenant)
    })
    .await?;
    Ok(Json(tenant_json(&info)))
}

async fn set_suspended(api: Api, tenant: String, suspended: bool) -> Result<Json<Value>, ApiError> {
    let host = api.host.clone();
    let info = blocking(move || {
        host.suspend_tenant(&tenant, suspended)?;
        host.tenant(&tenant)
    })
    .await?;
    Ok(Json(tenant_json(&info)))
}

async fn suspend_tenant(_: Admin, State(api): State<Api>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    set_suspended(api, tenant, true).await
}

async fn resume_tenant(_: Admin, State(api): State<Api>, Path(tenant): Path<String>) -> Result<Json<Value>, ApiError> {
    set_suspended(api, tenant, false).await
}

async fn delete_tenant(_: Admin, State(api): State<Api>, Path(tenant): Path<String>) -> Result<StatusCode, ApiError> {
    let host = api.host.clone();
    blocking(move || host.delete_tenant(&tenant)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn issue_token(_: Admin, State(api): State<Api>, Path(tenant): Path<String>) -> Result<Response, ApiError> {
    let host = api.host.clone();
    let (id, token) = blocking(move || host.issue_token(&tenant)).await?;
    let body = json!({ "id": id, "token": token, "note": "the token is shown this once; only its hash is kept" });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_token(
    _: Admin,
    State(api): State<Api>,
    Path((tenant, token)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let host = api.host.clone();
    blocking(move || host.revoke_token(&tenant, &token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

async fn deploy(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    require_content_type(
        &headers,
        &["application/wasm", "application/octet-stream"],
        "upload the module as `Content-Type: application/wasm`",
    )?;
    let bytes = body?;
    let host = api.host.clone();
    let version = blocking(move || host.deploy(&tenant, &app, &bytes)).await?;
    let body = json!({ "app": version.app, "version": version.version, "actions": version.actions, "compiled": version.source });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_apps(Tenant(tenant): Tenant, State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    Ok(Json(tenant_json(&api.host.tenant(&tenant)?)["apps"].clone()))
}

async fn get_app(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = api.host.tenant(&tenant)?;
    let app = info.apps.iter().find(|a| a.name == app).ok_or_else(|| ApiError::from(Error::not_found("app", &app)))?;
    Ok(Json(json!({ "name": app.name, "version": app.version, "actions": app.actions, "versions": app.versions })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    app: String,
    #[serde(default = "start")]
    entry: String,
    #[serde(default)]
    input: String,
}

fn start() -> String {
    "start".into()
}

async fn start_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Body(new): Body<NewSession>,
) -> Result<Response, ApiError> {
    let host = api.host.clone();
    let view = blocking(move || {
        let id = host.start_session(&tenant, &new.app, &new.entry, new.input.into_bytes())?;
        host.session(&tenant, id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(session_json(&view))).into_response())
}

/// The most sessions one page lists.
const SESSION_PAGE: usize = 1000;

/// The paging of a session list: `?after=ID&limit=N` (defaults 0 and 100).
fn page_query(query: Option<&str>) -> Result<(u64, usize), ApiError> {
    let (mut after, mut limit) = (0u64, 100usize);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", format!("`{name}`: {what}"));
        match name {
            "after" => after = value.parse().map_err(|_| bad("a session id"))?,
            "limit" => {
                limit =
                    value.parse().ok().filter(|n| (1..=SESSION_PAGE).contains(n)).ok_or_else(|| bad("1 to 1000"))?;
            }
            _ => return Err(bad("unknown parameter (`after`, `limit`)")),
        }
    }
    Ok((after, limit))
}

/// A page of `tenant`'s sessions, in id order, with the cursor of the next page.
async fn sessions_page(api: &Api, tenant: String, query: Option<&str>) -> Result<Json<Value>, ApiError> {
    let (after, limit) = page_query(query)?;
    let host = api.host.clone();
    let sessions = blocking(move || host.tenant_sessions(&tenant, SessionId(after), limit)).await?;
    let next = (sessions.len() == limit).then(|| sessions.last().map(|s| s.id.0)).flatten();
    Ok(Json(json!({ "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(), "next_after": next })))
}

/// `GET /v1/sessions?after=ID&limit=N`: the tenant's sessions, in id order, a page at a time.
async fn list_sessions(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    sessions_page(&api, tenant, query.as_deref()).await
}

async fn get_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    Ok(Json(session_json(&blocking(move || host.session(&tenant, id)).await?)))
}

async fn cancel_session(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    blocking(move || host.cancel_session(&tenant, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deliver(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    require_content_type(
        &headers,
        &["text/plain", "application/json", "application/octet-stream"],
        "send the event as text/plain, application/json or application/octet-stream",
    )?;
    let event = body?.to_vec();
    let key = idempotency_key(&headers)?;
    let delivery = api.host.deliver_async(&tenant, id, event, key.as_deref()).await?;
    let body = json!({ "delivery": if delivery == Delivery::Accepted { "accepted" } else { "duplicate" } });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
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

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    let operator = bearer(&headers).is_some_and(|token| constant_time_eq(token.as_bytes(), api.admin_token.as_bytes()));
    if api.protect_metrics && !operator {
        return Err(ApiError::unauthorized());
    }
    let host = api.host.clone();
    let cluster = api.cluster.clone();
    let text = blocking(move || {
        let mut metrics = host.metrics();
        metrics.cluster = cluster.map(|store| {
            let (held, taken_over) = store.shards_held();
            crate::metrics::ClusterMetrics { shards: store.shard_count(), held, taken_over }
        });
        Ok(metrics.prometheus())
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn readyz(State(api): State<Api>) -> Response {
    if !api.ready.load(Ordering::SeqCst) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
            .into_response();
    }
    match api.host.store_outage() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(outage) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!(
                "the store has been failing for {} ms: new work is refused and checkpoints are retried until it is back",
                outage.failing_for.as_millis()
            ),
        )
        .into_response(),
    }
}
