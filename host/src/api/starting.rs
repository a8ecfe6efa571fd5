//! What a node answers while it starts (its store opened and checked, its sessions loaded, its
//! modules compiled): `/healthz` 200, so that nothing restarts a node that is only loading;
//! `/readyz` 503 `starting`; every other request is held until the API is up and then answered
//! by it, or, after [`HOLD`], refused 503 `starting` with `Retry-After: 1` — never left
//! unanswered in the socket's backlog for as long as a long recovery takes.

use super::ApiError;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use std::time::Duration;
use tower::ServiceExt;

/// How long a request sent to a starting node waits for its API.
const HOLD: Duration = Duration::from_secs(10);

/// The routes of a starting node; `api` carries the API's routes once they are up.
pub fn starting_router(api: tokio::sync::watch::Receiver<Option<Router>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { starting() }))
        .fallback(held)
        .with_state(api)
}

async fn held(State(mut api): State<tokio::sync::watch::Receiver<Option<Router>>>, request: Request) -> Response {
    let up = match tokio::time::timeout(HOLD, api.wait_for(Option::is_some)).await {
        Ok(Ok(routes)) => routes.clone(),
        _ => None,
    };
    let Some(router) = up else { return starting() };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn starting() -> Response {
    let message = "this node is starting (loading its store and sessions): try again shortly";
    ApiError::retry_soon("starting", message)
}
