//! A session's outputs as a stream of Server-Sent Events: the stored ones first, a page at a
//! time, then live ones as their checkpoints commit, until the session ends or the server shuts
//! down.

use super::bodies::{ErrorBody, StreamEvent};
use super::{Api, ApiError, Tenant, blocking, session_id};
use crate::host::{Host, SessionEvent, StreamSlot};
use crate::session::{SessionId, Status};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::watch;

/// Outputs read from the store per page of an output stream.
const OUTPUT_PAGE: usize = 256;

/// The session's outputs as Server-Sent Events (`id` = the output's number, from 1), from the one
/// after `Last-Event-ID`: the stored ones first (read a page at a time), then live ones as their
/// checkpoints commit; an `end` event with the final status closes a finished session's stream.
#[utoipa::path(
    get, path = "/v1/sessions/{session}/outputs", tag = "tenant", security(("tenant" = [])),
    summary = "Follow a session's outputs",
    description = "Server-Sent Events: each output as an event whose `id` is its number (from 1), the stored ones \
                   first, then live ones as their checkpoints commit; an `end` event with the final status closes a \
                   finished session's stream. Reconnect with `Last-Event-ID` to resume after the last one seen.",
    params(
        ("session" = u64, Path, description = "The session's id."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this output number (the `id` of \
                                                                 the last event seen)."),
    ),
    responses(
        (status = 200, description = "The stream.", body = StreamEvent, content_type = "text/event-stream"),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the tenant holds its `max_streams` open.", body = ErrorBody),
    )
)]
pub(super) async fn outputs(
    Tenant(tenant): Tenant,
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = session_id(&id)?;
    let slot = api.host.open_stream(&tenant)?;
    let after: u64 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let host = api.host.clone();
    let watched = tenant.clone();
    let (view, events) = blocking(move || host.watch_session(&watched, id)).await?;
    let feed = OutputFeed {
        _slot: slot,
        closing: api.closing.subscribe(),
        host: api.host.clone(),
        tenant,
        session: id,
        events,
        queue: VecDeque::new(),
        sent: after,
        stored: view.outputs,
        end: view.status.is_finished().then_some(view.status),
        ended: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.queue.pop_front() {
                return Some((Ok(event), feed));
            }
            if feed.ended {
                return None;
            }
            if feed.sent < feed.stored {
                if !feed.read_stored().await {
                    return None;
                }
                continue;
            }
            if let Some(status) = feed.end.take() {
                feed.ended = true;
                let end = json!({ "status": status.name(), "step": status });
                feed.queue.push_back(sse(StreamEvent { event: "end", id: None, data: end.to_string() }));
                continue;
            }
            // At shutdown the stream ends without `end`: the client resumes after the restart.
            let event = tokio::select! {
                event = feed.events.recv() => event?,
                _ = feed.closing.wait_for(|closing| *closing) => return None,
            };
            if event.first_output > feed.sent {
                // Outputs this stream never heard of (a session taken back from the store after a
                // commit whose outcome was unknown had landed): all of them are stored, so they
                // are read from there, in order.
                let outputs = u64::try_from(event.outputs.len()).unwrap_or(u64::MAX);
                feed.stored = feed.stored.max(event.first_output.saturating_add(outputs));
            } else {
                feed.push(&event.outputs, event.first_output);
            }
            if event.status.is_finished() {
                feed.end = Some(event.status);
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The event as it goes on the wire.
fn sse(event: StreamEvent) -> Event {
    let framed = match event.id {
        Some(id) => Event::default().id(id),
        None => Event::default(),
    };
    framed.event(event.event).data(event.data)
}

/// What an output stream has yet to send.
struct OutputFeed {
    /// The tenant's stream place, given back when the stream is dropped.
    _slot: StreamSlot,
    closing: watch::Receiver<bool>,
    host: Arc<Host>,
    tenant: String,
    session: SessionId,
    events: tokio::sync::mpsc::Receiver<SessionEvent>,
    queue: VecDeque<Event>,
    /// The number of the last output sent (or skipped by `Last-Event-ID`).
    sent: u64,
    /// Outputs released when the stream started: these are read from the store.
    stored: u64,
    /// The final status, once the session has ended.
    end: Option<Status>,
    ended: bool,
}

impl OutputFeed {
    /// Queues `outputs`, numbered from `first + 1`, past the last one sent.
    fn push(&mut self, outputs: &[String], first: u64) {
        for (number, output) in (first + 1..).zip(outputs) {
            if number > self.sent {
                self.sent = number;
                let event = StreamEvent { event: "output", id: Some(number.to_string()), data: output.clone() };
                self.queue.push_back(sse(event));
            }
        }
    }

    /// Queues the next page of stored outputs; false when the store can't be read (the stream
    /// ends and the client resumes with `Last-Event-ID`).
    async fn read_stored(&mut self) -> bool {
        let (host, tenant, session, after) = (self.host.clone(), self.tenant.clone(), self.session, self.sent);
        match blocking(move || host.outputs(&tenant, session, after, OUTPUT_PAGE)).await {
            Ok(page) if !page.is_empty() => {
                for output in page {
                    self.push(std::slice::from_ref(&output.body), output.number - 1);
                }
                true
            }
            // Fewer stored than counted on a finished session: it is being purged. The stream
            // ends without `end`, so the client never takes the missing outputs for none.
            Ok(_) if self.end.is_some() => false,
            // Fewer stored than counted: the rest comes live.
            Ok(_) => {
                self.stored = self.sent;
                true
            }
            Err(_) => false,
        }
    }
}
