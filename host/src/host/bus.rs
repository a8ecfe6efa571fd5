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
pub(crate) type Watcher = tokio::sync::mpsc::Sender<SessionEvent>;

/// Events a watcher may leave unread. One that falls further behind (a client that stopped
/// reading) is dropped: its stream ends and the client resumes from the stored outputs with
/// `Last-Event-ID`, so host memory never holds more than this per stream.
pub(crate) const WATCH_BUFFER: usize = 64;

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

    /// Events of one session from now on. Watchers whose streams have ended are dropped here
    /// too, so streams opened and closed on a session that never publishes leave nothing behind.
    pub(crate) fn watch(&self, session: SessionId, watcher: Watcher) {
        let mut listeners = self.lock();
        listeners.watchers.retain(|_, watchers| {
            watchers.retain(|w| !w.is_closed());
            !watchers.is_empty()
        });
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
        // A watcher that is gone or too far behind is dropped (its stream ends; see WATCH_BUFFER).
        let dropped: Vec<Watcher> = watchers.into_iter().filter(|w| w.try_send(event.clone()).is_err()).collect();
        let gone: Vec<u64> =
            subscribers.iter().filter(|(_, s)| s.send(event.clone()).is_err()).map(|(number, _)| *number).collect();
        if !dropped.is_empty() || !gone.is_empty() {
            let mut listeners = self.lock();
            listeners.subscribers.retain(|(number, _)| !gone.contains(number));
            if let Some(watchers) = listeners.watchers.get_mut(&event.session) {
                watchers.retain(|w| !dropped.iter().any(|d| d.same_channel(w)));
            }
            listeners.watchers.retain(|_, w| !w.is_empty());
            self.recount(&listeners);
        }
    }

    /// Watchers registered (streams that ended are counted until the next `watch` or publish).
    pub(crate) fn watcher_count(&self) -> u64 {
        let count: usize = self.lock().watchers.values().map(Vec::len).sum();
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Ends every watcher's stream (the host is shutting down: clients resume after it).
    pub(crate) fn close_watchers(&self) {
        let mut listeners = self.lock();
        listeners.watchers.clear();
        self.recount(&listeners);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(session: SessionId) -> SessionEvent {
        SessionEvent {
            session,
            tenant: "t".into(),
            status: Status::Ready { action: "a".into(), input: Vec::new() },
            outputs: vec!["x".into()],
            first_output: 0,
        }
    }

    #[test]
    fn a_watcher_that_stops_reading_is_dropped_once_its_buffer_is_full() {
        let bus = Bus::default();
        let (send, mut receive) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        bus.watch(SessionId(1), send);
        for _ in 0..=WATCH_BUFFER {
            bus.publish(event(SessionId(1)));
        }
        assert_eq!(bus.watcher_count(), 0);
        let mut read = 0;
        while receive.try_recv().is_ok() {
            read += 1;
        }
        assert_eq!(read, WATCH_BUFFER, "what was buffered is still read, then the stream ends");
        assert!(receive.is_closed() || receive.try_recv().is_err());
    }

    #[test]
    fn streams_closed_on_a_quiet_session_leave_nothing_behind() {
        let bus = Bus::default();
        for _ in 0..100 {
            let (send, receive) = tokio::sync::mpsc::channel(WATCH_BUFFER);
            bus.watch(SessionId(7), send);
            drop(receive);
        }
        let (send, _receive) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        bus.watch(SessionId(8), send);
        assert_eq!(bus.watcher_count(), 1);
    }
}
