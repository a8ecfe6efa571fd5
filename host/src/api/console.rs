//! The operator's live console: `GET /console` serves one page, its script and its style, all
//! built into the binary (nothing is fetched from elsewhere, and the page's content security
//! policy says so). The page asks for the admin token and then polls the operator routes here:
//! `GET /v1/overview`, the host's figures with each tenant's latency quantiles over the last few
//! seconds, and a tenant's sessions (`GET /v1/tenants/{tenant}/sessions[/{session}]`). Rates,
//! shares and the plots are drawn by the page from successive overviews.

use super::{Admin, Api, ApiError, blocking, session_id, session_json, sessions_page};
use crate::host::TenantInfo;
use crate::metrics::Histogram;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
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
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /console/console.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/console.css`.
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
pub(super) async fn overview(_: Admin, State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let host = api.host.clone();
    let history = api.latency_history.clone();
    let body = blocking(move || {
        let metrics = host.metrics();
        let tenants: HashMap<String, TenantInfo> = host.tenants().into_iter().map(|t| (t.name.clone(), t)).collect();
        let now = Instant::now();
        let latest = metrics.tenants.iter().map(|t| (t.tenant.clone(), t.latency.clone())).collect();
        let from = history.record(now, latest);
        let rows: Vec<Value> = metrics
            .tenants
            .iter()
            .map(|t| {
                let info = tenants.get(&t.tenant);
                let recent = from.get(&t.tenant).map_or_else(|| t.latency.clone(), |earlier| t.latency.since(earlier));
                json!({
                    "name": t.tenant,
                    "weight": t.weight,
                    "suspended": info.is_some_and(|i| i.config.suspended),
                    "open_sessions": info.map_or(0, |i| i.open_sessions),
                    "actions": t.actions,
                    "fuel": t.fuel,
                    "cost": t.cost,
                    "worker_us": t.worker_us,
                    "host_us": t.host_us,
                    "throttled_ms": t.throttled_ms,
                    "failures": t.failures,
                    "queue_depth": t.queue_depth,
                    "in_flight": t.in_flight,
                    "sessions_started": t.sessions_started,
                    "sessions_finished": t.sessions_finished,
                    "recent": {
                        "actions": recent.count(),
                        "p50_us": micros(recent.quantile(500)),
                        "p99_us": micros(recent.quantile(990)),
                    },
                })
            })
            .collect();
        Ok(json!({
            "window_s": WINDOW.as_secs(),
            "host": {
                "sessions": metrics.sessions,
                "waiting": metrics.waiting,
                "queue_depth": metrics.queue_depth,
                "output_streams": metrics.output_streams,
                "store_up": metrics.store_up,
                "quarantined": metrics.quarantined,
            },
            "tenants": rows,
        }))
    })
    .await?;
    Ok(Json(body))
}

/// `GET /v1/tenants/{tenant}/sessions?after=ID&limit=N` (operator): a tenant's sessions.
pub(super) async fn tenant_sessions(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    sessions_page(&api, tenant, query.as_deref()).await
}

/// The most outputs the operator's read of a session shows (its latest).
const RECENT_OUTPUTS: usize = 50;

/// `GET /v1/tenants/{tenant}/sessions/{session}` (operator): one session of a tenant, with its
/// latest outputs.
pub(super) async fn tenant_session(
    _: Admin,
    State(api): State<Api>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = session_id(&id)?;
    let host = api.host.clone();
    let body = blocking(move || {
        let view = host.session(&tenant, id)?;
        let after = view.outputs.saturating_sub(RECENT_OUTPUTS as u64);
        let outputs = host.outputs(&tenant, id, after, RECENT_OUTPUTS)?;
        let mut body = session_json(&view);
        body["recent_outputs"] = outputs
            .iter()
            .map(|o| json!({ "number": o.number, "body": serde_json::from_str::<Value>(&o.body).unwrap_or_else(|_| Value::String(o.body.clone())) }))
            .collect();
        Ok(body)
    })
    .await?;
    Ok(Json(body))
}
