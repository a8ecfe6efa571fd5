//! Grouped ingest for async callers (the HTTP API): customer events are handed to one ingest
//! thread through a channel, without a lock or a blocking call on the caller's (async) thread.
//! The thread takes every event that has arrived, queues their appends, and commits them as one
//! group (one transaction, one fsync); each caller is answered through its own channel once its
//! event is durable. One thread hop per group, not per event.

use super::kernel::Kernel;
use super::views::Delivery;
use crate::error::Error;
use crate::session::SessionId;
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use tokio::sync::oneshot;

/// An event for a session, and where to answer.
pub(crate) struct Request {
    pub(crate) tenant: String,
    pub(crate) session: SessionId,
    pub(crate) event: Vec<u8>,
    pub(crate) key: Option<String>,
    pub(crate) reply: oneshot::Sender<Result<Delivery, Error>>,
}

/// Events taken in one group, at most.
const GROUP: usize = 4096;

/// Starts the ingest thread; it ends when every sender is dropped.
pub(crate) fn spawn(kernel: Arc<Kernel>) -> Result<(mpsc::Sender<Request>, JoinHandle<()>), Error> {
    let (send, receive) = mpsc::channel::<Request>();
    let thread = thread::Builder::new()
        .name("turnstile-ingest".into())
        .spawn(move || {
            while let Ok(first) = receive.recv() {
                let mut group = vec![first];
                while group.len() < GROUP
                    && let Ok(next) = receive.try_recv()
                {
                    group.push(next);
                }
                let submitted: Vec<_> = group
                    .into_iter()
                    .filter_map(|r| match kernel.submit_event(&r.tenant, r.session, r.event, r.key) {
                        Ok(ticket) => Some((r.session, ticket, r.reply)),
                        Err(error) => {
                            let _ = r.reply.send(Err(error));
                            None
                        }
                    })
                    .collect();
                // The first wait commits the whole group; the others find their answers ready.
                for (session, ticket, reply) in submitted {
                    let _ = reply.send(kernel.delivery(session, &ticket));
                }
            }
        })
        .map_err(|e| Error::io("starting the ingest thread", e))?;
    Ok((send, thread))
}
