//! The operator's live console: `GET /console` serves one page, its script and its style, all
//! built into the binary (nothing is fetched from elsewhere, and the page's content security
//! policy says so). The page asks for the admin token and then polls the operator routes here:
//! `GET /v1/overview`, the host's figures with each tenant's latency quantiles over the last few
//! seconds, and a tenant's sessions (`GET /v1/tenants/{tenant}/sessions[/{session}]`). Rates,
//! shares and the plots are drawn by the page from successive overviews.

use super::bodies::{
    ErrorBody, HostFigures, OperatorSession, Overview, Page, Recent, RecentOutput, SessionBody, SessionPage, TenantRow,
};
use super::sessions::sessions_page;
use super::{Admin, Api, ApiError, blocking, session_id};
use crate::host::TenantInfo;
use crate::metrics::Histogram;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// What the page may load and talk to: this server, nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Latency quantiles are read over about this much of the recent past.
const WINDOW: Duration = Duration::from_secs(10);

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /console`.
#[utoipa::path(
    get, path = "/console", tag = "console",
    summary = "The live operator console",
    description = "One page; it asks for the admin token and polls the operator routes.",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html"))
)]
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /console/console.js`.
#[utoipa::path(
    get, path = "/console/console.js", tag = "console",
    summary = "The console's script",
    responses((status = 200, description = "The script.", body = String, content_type = "text/javascript"))
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/console.css`.
#[utoipa::path(
    get, path = "/console/console.css", tag = "console",
    summary = "The console's style",
    responses((status = 200, description = "The style sheet.", body = String, content_type = "text/css"))
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Each tenant's latency histogram as it stood at a few recent instants, to read the quantiles
/// of the last [`WINDOW`] from (a reading a second at most; kept for two windows).
#[derive(Default)]
pub(super) struct LatencyHistory {
    readings: Mutex<VecDeque<(Instant, HashMap<String, Histogram>)>>,
}

impl LatencyHistory {
    /// Keeps this reading, and gives the one to measure the window from (per tenant).
    fn record(&self, now: Instant, latest: HashMap<String, Histogram>) -> HashMap<String, Histogram> {
        let mut readings = self.readings.lock().unwrap_or_else(PoisonError::into_inner);
        while readings.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > 2 * WINDOW) {
            readings.pop_front();
        }
        // The newest reading at least a window old, or else the oldest there is.
        let from = readings
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= WINDOW)
            .or(readings.front())
            .map(|(_, histograms)| histograms.clone())
            .unwrap_or_default();
        if readings.back().is_none_or(|(at, _)| now.saturating_duration_since(*at) >= Duration::from_secs(1)) {
            readings.push_back((now, latest));
        }
        from
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// `GET /v1/overview` (operator): the host and each tenant, counters since the host started
/// and latency over the last seconds.
#[utoipa::path(
    get, path = "/v1/overview", tag = "operator", security(("admin" = [])),
    summary = "The host and each tenant, now",
    description = "Counters since the host started, queues and actions in flight, and each tenant's latency p50/p99 \
                   over the last seconds (`window_s`). The console draws rates and shares from successive overviews.",
    responses((status = 200, description = "The overview.", body = Overview))
)]
pub(super) async fn overview(_: Admin, State(api): State<Api>) -> Result<Json<Overview>, ApiError> {
    let host = api.host.clone();
    let history = api.latency_history.clone();
    let overview = blocking(move || {
        let metrics = host.metrics();
        let tenants: HashMap<String, TenantInfo> = host.tenants().into_iter().map(|t| (t.name.clone(), t)).collect();
        let now = Instant::now();
        let latest = metrics.tenants.iter().map(|t| (t.tenant.clone(), t.latency.clone())).collect();
        let from = history.record(now, latest);
        let rows = metrics
            .tenants
            .iter()
            .map(|t| {
                let info = tenants.get(&t.tenant);
                let recent = from.get(&t.tenant).map_or_else(|| t.latency.clone(), |earlier| t.latency.since(earlier));
                TenantRow {
                    figures: t.clone(),
                    suspended: info.is_some_and(|i| i.config.suspended),
                    open_sessions: info.map_or(0, |i| i.open_sessions),
                    recent: Recent {
                        actions: recent.count(),
                        p50_us: micros(recent.quantile(500)),
                        p99_us: micros(recent.quantile(990)),
                    },
                }
            })
            .collect();
        Ok(Overview {
            window_s: WINDOW.as_secs(),
            host: HostFigures {
                sessions: metrics.sessions,
                waiting: metrics.waiting,
                queue_depth: metrics.queue_depth,
                output_streams: metrics.output_streams,
                store_up: metrics.store_up,
                quarantined: metrics.quarantined,
            },
            tenants: rows,
        })
    })
    .await?;
    Ok(Json(overview))
}

/// `GET /v1/tenants/{tenant}/sessions?after=ID&limit=N` (operator): a tenant's sessions.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/sessions", tag = "operator", security(("admin" = [])),
    summary = "A tenant's sessions",
    description = "As the tenant would list them: in id order, a page at a time.",
    params(
        ("tenant" = String, Path, description = "The tenant's name."),
        Page,
    ),
    responses(
        (status = 200, description = "A page.", body = SessionPage),
        (status = 400, description = "`bad_query`: a parameter named, out of range or unknown.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such tenant.", body = ErrorBody),
    )
)]
pub(super) async fn tenant_sessions(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionPage>, ApiError> {
    sessions_page(&api, tenant, query.as_deref()).await
}

/// The most outputs the operator's read of a session shows (its latest).
const RECENT_OUTPUTS: usize = 50;

/// `GET /v1/tenants/{tenant}/sessions/{session}` (operator): one session of a tenant, with its
/// latest outputs.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/sessions/{session}", tag = "operator", security(("admin" = [])),
    summary = "One session of a tenant",
    description = "As the tenant reads it, with its latest 50 outputs.",
    params(
        ("tenant" = String, Path, description = "The tenant's name."),
        ("session" = u64, Path, description = "The session's id."),
    ),
    responses(
        (status = 200, description = "The session.", body = OperatorSession),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn tenant_session(
    _: Admin,
    State(api): State<Api>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<OperatorSession>, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    let body = blocking(move || {
        let view = host.session(&tenant, id)?;
        let after = view.outputs.saturating_sub(RECENT_OUTPUTS as u64);
        let outputs = host.outputs(&tenant, id, after, RECENT_OUTPUTS)?;
        let recent_outputs = outputs
            .iter()
            .map(|o| RecentOutput {
                number: o.number,
                body: serde_json::from_str::<Value>(&o.body).unwrap_or_else(|_| Value::String(o.body.clone())),
            })
            .collect();
        Ok(OperatorSession { session: SessionBody::from(&view), recent_outputs })
    })
    .await?;
    Ok(Json(body))
}
