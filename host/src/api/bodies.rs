//! What the API's routes take and answer, as types: the handlers build these and nothing else,
//! and the OpenAPI document's schemas are derived from them (`utoipa`), so what a client is told
//! is what it gets.

use super::ApiError;
use crate::failure::Failure;
use crate::host::{Delivery, SessionView, TenantInfo};
use crate::limits::TenantConfig;
use crate::metrics::TenantMetrics;
use crate::session::{Counters, Status};
use crate::store::Unapplied;
use crate::store::postgres::leases::LeaseRow;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every error: a stable code to match on and a message for a person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, snake_case (`not_found`, `unauthorized`, `quota_exceeded`, ...).
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// What happened and what to do, for a person.
    pub message: String,
}

/// `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1 to 64 characters of `a-z`, `0-9`, `-` and `_`.
    #[schema(example = "acme", pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: String,
    /// Its weight, quotas and limits; the server's default tenant configuration when left out.
    pub config: Option<TenantConfig>,
}

/// `GET /v1/tenants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// Every tenant, by name.
    pub tenants: Vec<TenantInfo>,
}

/// `POST /v1/tenants/{tenant}/tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    /// The token's id, to revoke it by.
    pub id: String,
    /// The token (`tst_…`): shown this once, only its hash is kept.
    pub token: String,
    /// A reminder of the above.
    pub note: &'static str,
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// The app to run (its current version).
    #[schema(example = "ivr", min_length = 1)]
    pub app: String,
    /// The action to start with.
    #[serde(default = "start")]
    #[schema(default = "start", min_length = 1)]
    pub entry: String,
    /// The first action's input.
    #[serde(default)]
    pub input: String,
}

fn start() -> String {
    "start".into()
}

/// A session as its tenant reads it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    /// Its id.
    pub id: u64,
    /// The app it runs.
    pub app: String,
    /// The app version it is pinned to.
    pub version: String,
    /// `ready`, `waiting`, `done`, `failed` or `cancelled`.
    #[schema(example = "waiting")]
    pub status: &'static str,
    /// Where it is, in full (as of its last committed checkpoint).
    pub step: Status,
    /// What it has used: its receipts.
    pub counters: Counters,
    /// Its latest failure.
    pub last_failure: Option<Failure>,
    /// How many outputs it has released (numbered from 1).
    pub outputs: u64,
    /// Acknowledged events it ended without taking.
    pub unapplied: Vec<Unapplied>,
}

impl From<&SessionView> for SessionBody {
    fn from(view: &SessionView) -> SessionBody {
        SessionBody {
            id: view.id.0,
            app: view.app.clone(),
            version: view.version.clone(),
            status: view.status.name(),
            step: view.status.clone(),
            counters: view.counters.clone(),
            last_failure: view.last_failure.clone(),
            outputs: view.outputs,
            unapplied: view.unapplied.clone(),
        }
    }
}

/// A page of sessions, in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// The sessions of this page.
    pub sessions: Vec<SessionBody>,
    /// The `after` of the next page; `null` on the last.
    pub next_after: Option<u64>,
}

/// One session as the operator reads it, with its latest outputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorSession {
    /// The session.
    #[serde(flatten)]
    pub session: SessionBody,
    /// Its latest outputs (at most 50), oldest first.
    pub recent_outputs: Vec<RecentOutput>,
}

/// One released output.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentOutput {
    /// Its number (from 1).
    pub number: u64,
    /// The output (JSON, or the text as a string if it does not parse).
    pub body: serde_json::Value,
}

/// `POST /v1/sessions/{session}/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody {
    /// `accepted`: durable in the session's inbox; `duplicate`: an event with the same
    /// idempotency key was acknowledged before, and this one changed nothing.
    pub delivery: Delivery,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterBody {
    /// `postgres`, or `single node (not PostgreSQL)`.
    pub store: &'static str,
    /// This node's claim name, on PostgreSQL.
    pub node: Option<String>,
    /// Whether this node holds every shard (on PostgreSQL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds_all_shards: Option<bool>,
    /// Every shard's lease as the database has it now.
    pub shards: Vec<LeaseRow>,
}

/// `GET /v1/overview`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// The seconds the `recent` figures are read over.
    pub window_s: u64,
    /// The host's own figures.
    pub host: HostFigures,
    /// Each tenant, by name.
    pub tenants: Vec<TenantRow>,
}

/// The host's figures, now.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostFigures {
    /// Sessions the host holds.
    pub sessions: u64,
    /// Sessions waiting for a customer.
    pub waiting: u64,
    /// Actions waiting in the tenants' queues.
    pub queue_depth: u64,
    /// Output streams open.
    pub output_streams: u64,
    /// Whether the store takes writes.
    pub store_up: bool,
    /// Sessions set aside at start because their stored rows did not decode.
    pub quarantined: u64,
}

/// One tenant in the overview: its figures since the host started, and recent latency.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantRow {
    /// Its counters since the host started, queue and actions in flight.
    #[serde(flatten)]
    pub figures: TenantMetrics,
    /// Whether it is suspended.
    pub suspended: bool,
    /// Sessions it has open.
    pub open_sessions: u64,
    /// Its actions over the last `window_s` seconds.
    pub recent: Recent,
}

/// Actions over the overview's window.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recent {
    /// Actions finished in the window.
    pub actions: u64,
    /// Their median latency, in microseconds.
    pub p50_us: u64,
    /// Their 99th percentile latency, in microseconds.
    pub p99_us: u64,
}

/// One event of a session's output stream (`text/event-stream`).
#[derive(Debug, ToSchema)]
pub struct StreamEvent {
    /// `output`: one output, `data` is its JSON; `end`: the session finished, `data` is
    /// `{"status", "step"}` and the stream closes.
    #[schema(pattern = "^(output|end)$")]
    pub event: &'static str,
    /// The output's number, on `output` events: reconnect with it as `Last-Event-ID` to resume
    /// after it.
    pub id: Option<String>,
    /// The event's JSON.
    pub data: String,
}

/// The most sessions one page lists.
const SESSION_PAGE: usize = 1000;

/// The paging of a session list, `?after=ID&limit=N`: how the query is read, and documented.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct Page {
    /// List the sessions after this id (`next_after` of the page before; default 0). Session
    /// ids are stored as signed 64-bit integers: none is larger.
    #[param(maximum = 9223372036854775807_i64)]
    after: Option<u64>,
    /// Sessions in the page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

impl Page {
    /// Reads a query string (percent-decoded as clients encode it): `(after, limit)`.
    pub(super) fn read(query: Option<&str>) -> Result<(u64, usize), ApiError> {
        let bad = |what: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", what);
        let page: Page = serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| bad(e.to_string()))?;
        let after = page.after.unwrap_or(0);
        if i64::try_from(after).is_err() {
            return Err(bad("`after`: a session id (0 to 9223372036854775807)".into()));
        }
        let limit = page.limit.unwrap_or(100);
        if !(1..=SESSION_PAGE).contains(&limit) {
            return Err(bad("`limit`: 1 to 1000".into()));
        }
        Ok((after, limit))
    }
}
