//! Who hears what happens to sessions: subscribers of every session (the demo's simulated
//! customers, tools) and watchers of one session (the API's output streams). Senders are cloned
//! under the lock and sent to after it is released: no lock is ever held across a send.

use crate::session::{SessionId, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};

/// Something that happened to a session.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    /// The session.
    pub session: SessionId,
    /// Its tenant.
    pub tenant: String,
    /// Its status now (the last committed one).
    pub status: Status,
    /// Outputs released by the checkpoint that was just committed.
    pub outputs: Vec<String>,
    /// How many outputs the session had released before these (the first of these is number
    /// `first_output + 1`).
    pub first_output: u64,
}

/// A watcher of one session: an async channel, so a stream needs no thread of its own.
pub(crate) type Watcher = tokio::sync::mpsc::UnboundedSender<SessionEvent>;

#[derive(Default)]
struct Listeners {
    /// Subscribers, each with a number to find it by.
    subscribers: Vec<(u64, mpsc::Sender<SessionEvent>)>,
    next_subscriber: u64,
    watchers: HashMap<SessionId, Vec<Watcher>>,
}

/// The host's event bus.
#[derive(Default)]
pub(crate) struct Bus {
    listeners: Mutex<Listeners>,
    /// Subscribers plus watched sessions: zero means publishing can be skipped without a lock.
    interested: AtomicUsize,
}

impl Bus {
    fn lock(&self) -> MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recount(&self, listeners: &Listeners) {
        self.interested.store(listeners.subscribers.len() + listeners.watchers.len(), Ordering::Release);
    }

    /// Whether anyone might want to hear about `session` (cheap: no lock when no one listens).
    pub(crate) fn wants(&self, session: SessionId) -> bool {
        self.interested.load(Ordering::Acquire) > 0 && {
            let listeners = self.lock();
            !listeners.subscribers.is_empty() || listeners.watchers.contains_key(&session)
        }
    }

    /// Events of every session from now on.
    pub(crate) fn subscribe(&self) -> mpsc::Receiver<SessionEvent> {
        let (send, receive) = mpsc::channel();
        let mut listeners = self.lock();
        listeners.next_subscriber += 1;
        let number = listeners.next_subscriber;
        listeners.subscribers.push((number, send));
        self.recount(&listeners);
        receive
    }

    /// Events of one session from now on.
    pub(crate) fn watch(&self, session: SessionId, watcher: Watcher) {
        let mut listeners = self.lock();
        listeners.watchers.entry(session).or_default().push(watcher);
        self.recount(&listeners);
    }

    /// Tells the session's watchers and every subscriber; the watchers of a finished session are
    /// dropped after it (their streams end).
    pub(crate) fn publish(&self, event: SessionEvent) {
        let finished = event.status.is_finished();
        let (subscribers, watchers) = {
            let mut listeners = self.lock();
            let watchers = if finished {
                listeners.watchers.remove(&event.session).unwrap_or_default()
            } else {
                listeners.watchers.get(&event.session).cloned().unwrap_or_default()
            };
            let subscribers = listeners.subscribers.clone();
            self.recount(&listeners);
            (subscribers, watchers)
        };
        let gone_watchers = watchers.iter().any(|w| w.send(event.clone()).is_err());
        let gone: Vec<u64> =
            subscribers.iter().filter(|(_, s)| s.send(event.clone()).is_err()).map(|(number, _)| *number).collect();
        if gone_watchers || !gone.is_empty() {
            let mut listeners = self.lock();
            listeners.subscribers.retain(|(number, _)| !gone.contains(number));
            if let Some(watchers) = listeners.watchers.get_mut(&event.session) {
                watchers.retain(|w| !w.is_closed());
            }
            listeners.watchers.retain(|_, w| !w.is_empty());
            self.recount(&listeners);
        }
    }

    /// Ends every watcher's stream (the host is shutting down: clients resume after it).
    pub(crate) fn close_watchers(&self) {
        let mut listeners = self.lock();
        listeners.watchers.clear();
        self.recount(&listeners);
    }
}
