//! What a standby answers while another node acts for the database (cluster mode): `/healthz`
//! (alive), `/readyz` (503 `standby`, naming the acting node), and every other request forwarded
//! to the acting node's advertised address, its body and its answer streamed through (output
//! streams too), so that a client or a load balancer may send any request to any node. A request
//! that was forwarded once already is refused (`standby`) instead of forwarded again: two nodes
//! with an old view of the holder never bounce a request between them, and one the holder's
//! build would misread (an older build, during a rolling upgrade: see `leases::PROTOCOL`) is
//! refused (`holder_outdated`) instead of forwarded.

use super::ApiError;
use crate::LeaseRow;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Marks a request a standby forwarded (its value: that node's name).
const FORWARDED_BY: HeaderName = HeaderName::from_static("turnstile-forwarded-by");

/// Headers that belong to one connection, not to the request (RFC 9110, 7.6.1), and `host`,
/// which the client sets for the acting node.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A standby's view of the acting node, and the client it forwards with.
pub struct Standby {
    node: String,
    /// Where this node itself answers: a holder seen there is a previous run of this node.
    address: Option<String>,
    /// The acting node as last seen; told to every request in flight when it changes.
    view: watch::Sender<View>,
    client: Client<HttpConnector, Body>,
}

/// Who acts for the database, as a standby last saw it.
#[derive(Clone, Default, PartialEq)]
struct View {
    holder: Option<Holder>,
    /// This node took the shards over: nothing more is forwarded.
    took_over: bool,
}

#[derive(Clone, PartialEq)]
struct Holder {
    node: String,
    address: Option<String>,
    /// What its build understands of a forwarded request (`leases::PROTOCOL`).
    protocol: u32,
}

impl Standby {
    /// A standby for the node named `node`, which answers at `address`.
    pub fn new(node: &str, address: Option<&str>) -> Arc<Standby> {
        let mut connector = HttpConnector::new();
        // A dead or paused holder is given up on quickly; the client tries again.
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Arc::new(Standby {
            node: node.to_owned(),
            address: address.map(str::to_owned),
            view: watch::Sender::new(View::default()),
            client,
        })
    }

    /// Notes who holds the shards now (from the lease table, each time the standby looks).
    /// Requests in flight to a holder that is no longer the one are answered `standby` at once
    /// (the client tries again) rather than left waiting on a node that may be paused or gone.
    pub fn saw(&self, row: &LeaseRow) {
        let holder =
            row.owner.clone().map(|node| Holder { node, address: row.address.clone(), protocol: row.protocol });
        self.view.send_if_modified(|view| {
            let changed = view.holder != holder;
            view.holder = holder;
            changed
        });
    }

    /// This node holds the shards now: requests still in flight to the previous holder are
    /// answered `standby` (the client tries again, and reaches this node's own API).
    pub fn took_over(&self) {
        self.view.send_modify(|view| view.took_over = true);
    }

    /// The standby's routes: the probes, and everything else forwarded.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .fallback(forward)
            .with_state(self)
    }

    fn holder(&self) -> Option<Holder> {
        self.view.borrow().holder.clone()
    }
}

async fn readyz(State(standby): State<Arc<Standby>>) -> Response {
    let holder = standby.holder().map_or_else(|| "another node".to_owned(), |h| h.node);
    refusal(&format!(
        "this node is a standby: {holder} acts for the database, and requests sent here are forwarded to it"
    ))
}

fn refusal(message: &str) -> Response {
    ApiError::retry_soon("standby", message)
}

/// Sends `request` on to the acting node and streams its answer back.
async fn forward(State(standby): State<Arc<Standby>>, mut request: Request) -> Response {
    if request.headers().contains_key(&FORWARDED_BY) {
        return refusal("this node is a standby too: its view of the acting node is out of date; try again");
    }
    let mut view = standby.view.subscribe();
    let seen = view.borrow_and_update().clone();
    if seen.took_over {
        return refusal("this node has just taken over from the acting node; try again");
    }
    let Some(Holder { node, address: Some(address), protocol }) = seen.holder else {
        return refusal("this node is a standby and knows of no node acting for the database yet; try again");
    };
    let needed = protocol_needed(&request);
    if protocol < needed {
        return ApiError::retry_soon(
            "holder_outdated",
            format!(
                "{node} acts for the database with an older Turnstile (cluster protocol {protocol}), which would \
                 not understand this request as sent (it needs {needed}: a session start's Idempotency-Key would \
                 be ignored, and a retry could start a second session); try again once {node} is upgraded"
            ),
        );
    }
    if standby.address.as_ref() == Some(&address) {
        // A run of this node before a restart: it is gone, and its leases run out soon.
        return refusal(&format!(
            "this node is a standby, and {node}, which held the shards at this same address, has stopped: \
             a standby takes over when its leases run out; try again"
        ));
    }
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{address}{target}").parse::<Uri>() else {
        return refusal(&format!("the acting node {node} advertises an address that is not a URL: {address}"));
    };
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    // The headers the client's `Connection` names are that connection's too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain([&header::HOST]).chain(&named) {
        headers.remove(name);
    }
    // Without the mark, two standbys could bounce the request between them for ever.
    let Ok(mark) = standby.node.parse() else {
        return refusal("this node's name cannot be sent in an HTTP header, so it does not forward requests");
    };
    headers.insert(FORWARDED_BY, mark);
    let answer = tokio::select! {
        answer = standby.client.request(request) => answer,
        _ = view.changed() => {
            return refusal(&format!("{node} stopped acting for the database while this request waited for it; try again"));
        }
    };
    match answer {
        // An output stream still flowing from the holder when it stops acting ends: its client
        // resumes from the node acting now (`Last-Event-ID`) rather than wait on one paused or
        // gone. Other answers are passed whole (a cut one would look like a failure although
        // the holder did the work).
        Ok(answer) if is_stream(answer.headers()) => answer.map(|body| {
            let stopped = async move {
                let _ = view.changed().await;
            };
            Body::from_stream(Body::new(body).into_data_stream().take_until(stopped))
        }),
        Ok(answer) => answer.map(Body::new),
        Err(error) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "forward_failed",
            format!("this node is a standby and could not reach the acting node {node} at {address}: {error}"),
        )
        .into_response(),
    }
}

/// The protocol (`leases::PROTOCOL`) a holder must speak to be given `request`: 2 for a session
/// start under an `Idempotency-Key`, which a holder of 1 ignores; 1 for everything else.
fn protocol_needed(request: &Request) -> u32 {
    let keyed_start = request.method() == axum::http::Method::POST
        && request.uri().path() == "/v1/sessions"
        && request.headers().contains_key("idempotency-key");
    if keyed_start { 2 } else { 1 }
}

/// Whether an answer is an output stream (Server-Sent Events).
fn is_stream(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"))
}
