//! Serving the API over TCP with the limits a public endpoint needs: a cap on open connections
//! (more wait in the listen backlog), a time limit on reading a request's headers, and a shutdown
//! that stops accepting, tells every connection to close after its request in flight, ends the
//! output streams (clients resume with `Last-Event-ID`) and gives up on stragglers after a grace
//! period. Bodies are bounded and timed by the router (`read_body`).
//!
//! Written on hyper directly because `axum::serve` has no header timeout or connection cap.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a request's headers, in seconds.
    pub header_timeout_secs: u64,
    /// Time to send a request's body, in seconds.
    pub body_timeout_secs: u64,
    /// Module uploads read at once (each up to 32 MiB); more wait their turn.
    pub max_uploads: usize,
    /// Time connections get to finish at shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// `/metrics` answers only the operator (admin token): the metrics name every tenant.
    pub protect_metrics: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_uploads: 4,
            shutdown_grace_secs: 10,
            protect_metrics: false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then winds down as described above;
/// `closing` is told first (the API ends its output streams on it).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    closing: Arc<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(limits.header_timeout_secs.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: this connection is lost, not the server.
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection");
                    continue;
                }
            },
        };
        // Replies are small: send them at once rather than wait for more (Nagle).
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let mut closing = closing.subscribe();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closing.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
        // Reap the connections that are done, so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    let _ = closing.send(true);
    drop(listener);
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the grace period: closed");
        connections.abort_all();
    }
    Ok(())
}
