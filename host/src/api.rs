//! The HTTP API over a [`Host`]: operator routes behind the admin token, tenant routes behind
//! that tenant's token, `/metrics`, `/healthz`, `/readyz` and `/openapi.json`.
//!
//! - A tenant's token only ever reaches that tenant's apps and sessions: another tenant's are
//!   answered exactly like ones that don't exist (404), so their existence can't be probed.
//! - Every error is JSON `{"code","message"}` with a stable code (`api/error.rs`).
//! - No blocking lock is taken on the async threads: token and tenant look-ups take no lock,
//!   and every other host call (sessions, commits, compiles, metrics) runs on the blocking pool.
//!
//! Here: what the handlers share, the router, the token extractors and the probes. The routes
//! are in `tenants.rs` (operator), `sessions.rs` (tenant), `stream.rs` (a session's outputs as
//! Server-Sent Events) and `console.rs` (the operator's console and its data); what they take and
//! answer in `bodies.rs`; the OpenAPI document, derived from their annotations, in `openapi.rs`;
//! body limits in `body.rs`; the accept loop in `server.rs`.

mod bodies;
mod body;
mod console;
mod error;
mod openapi;
mod server;
mod sessions;
mod standby;
mod starting;
mod stream;
mod tenants;

pub use error::ApiError;
pub use server::{HttpLimits, serve};
pub use standby::Standby;
pub use starting::starting_router;

use crate::error::Error;
use crate::host::Host;
use crate::limits::TenantConfig;
use crate::session::SessionId;
use crate::store::PgStore;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bodies::ErrorBody;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Bodies of JSON routes are at most this big.
const JSON_LIMIT: usize = 64 << 10;

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
    /// The last `/metrics` text and when it was rendered.
    scraped: Arc<std::sync::Mutex<Option<Scrape>>>,
}

/// A rendered `/metrics` text and when it was rendered.
type Scrape = (Instant, Arc<str>);

/// How long a rendered `/metrics` text is served again: a render walks every session and takes
/// the dispatcher's lock, so a client scraping in a loop (the route is open by default) would
/// otherwise slow every tenant down (measured: 8 clients scraping a host of 40 000 sessions
/// raised another tenant's p99 from 4.8 to 51 ms). Prometheus scrapes every few seconds.
const SCRAPE_REUSE: Duration = Duration::from_secs(1);

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
            scraped: Arc::default(),
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

/// Every route, with its part of the OpenAPI document: the handlers' annotations give both.
fn routes() -> OpenApiRouter<Api> {
    let json_routes = OpenApiRouter::new()
        .routes(routes!(tenants::create_tenant, tenants::list_tenants))
        .routes(routes!(tenants::get_tenant, tenants::update_tenant, tenants::delete_tenant))
        .routes(routes!(tenants::suspend_tenant))
        .routes(routes!(tenants::resume_tenant))
        .routes(routes!(tenants::issue_token))
        .routes(routes!(tenants::revoke_token))
        .routes(routes!(console::tenant_sessions))
        .routes(routes!(console::tenant_session))
        .routes(routes!(console::overview))
        .routes(routes!(tenants::cluster))
        .routes(routes!(sessions::list_apps))
        .routes(routes!(sessions::get_app))
        .routes(routes!(sessions::start_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::cancel_session))
        .routes(routes!(sessions::deliver))
        .routes(routes!(stream::outputs))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    let upload =
        OpenApiRouter::new().routes(routes!(sessions::deploy)).layer(DefaultBodyLimit::max(body::MODULE_LIMIT));
    OpenApiRouter::with_openapi(openapi::Frame::openapi())
        .merge(json_routes)
        .merge(upload)
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(console::page))
        .routes(routes!(console::script))
        .routes(routes!(console::style))
}

/// The OpenAPI 3.1 document of every route.
pub fn openapi_document() -> Value {
    let (_, document) = routes().split_for_parts();
    openapi::finish(document)
}

/// The router of the whole API.
pub fn router(api: Api) -> Router {
    let (router, _) = routes().split_for_parts();
    router
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

#[utoipa::path(
    get, path = "/metrics", tag = "probes",
    summary = "Prometheus metrics",
    description = "OpenMetrics text, per-tenant labels, rendered at most once a second (a scrape within a second of the last gets the same text). Takes the admin token when the server's `protect_metrics` is set.",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "`unauthorized` (only with `protect_metrics`).", body = ErrorBody),
    )
)]
async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    let operator = bearer(&headers).is_some_and(|token| constant_time_eq(token.as_bytes(), api.admin_token.as_bytes()));
    if api.protect_metrics && !operator {
        return Err(ApiError::unauthorized());
    }
    let (host, cluster, scraped) = (api.host.clone(), api.cluster.clone(), api.scraped.clone());
    let text = blocking(move || {
        // One render at a time; scrapes meanwhile wait for it and share it.
        let mut last = scraped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < SCRAPE_REUSE
        {
            return Ok(text.clone());
        }
        let mut metrics = host.metrics();
        metrics.cluster = cluster.map(|store| {
            let (held, taken_over) = store.shards_held();
            crate::metrics::ClusterMetrics { shards: store.shard_count(), held, taken_over }
        });
        let text: Arc<str> = metrics.prometheus().into();
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text.to_string()).into_response())
}

#[utoipa::path(
    get, path = "/healthz", tag = "probes",
    summary = "Liveness",
    responses((status = 200, description = "The process answers.", body = String, content_type = "text/plain", example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get, path = "/openapi.json", tag = "probes",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
async fn openapi_json() -> Response {
    // Built once: anyone may ask for it, so asking must not cost the host a build each time.
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| openapi_document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str()).into_response()
}

#[utoipa::path(
    get, path = "/readyz", tag = "probes",
    summary = "Readiness",
    responses(
        (status = 200, description = "Ready for work.", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "`shutting_down`, or `store_unavailable` (with how long it has been failing).", body = ErrorBody),
    )
)]
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
