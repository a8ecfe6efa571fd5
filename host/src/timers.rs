//! Wait timeouts: one heap of deadlines and one thread for the whole host, not a task per
//! session, so 100 000 waiting sessions cost a heap entry each.
//!
//! A timer is never cancelled in place: each session counts its waits (`wait_seq`), and a timer
//! whose count no longer matches (the customer answered first) is ignored when it comes due.

use crate::error::Error;
use crate::host::Shared;
use crate::scheduler::SessionId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// Pending timeouts, earliest first.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SessionId, u64)>>,
}

impl Timers {
    /// Arms a timeout; true when it is now the earliest (the timer thread must wake sooner).
    pub(crate) fn arm(&mut self, at: Instant, session: SessionId, seq: u64) -> bool {
        let earliest = self.heap.peek().is_none_or(|Reverse((first, _, _))| at < *first);
        self.heap.push(Reverse((at, session, seq)));
        earliest
    }

    fn pop_due(&mut self, now: Instant) -> Option<(SessionId, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse((_, session, seq))| (session, seq)),
            _ => None,
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// Starts the timer thread: it sleeps until the earliest deadline (or until a sooner one is
/// armed), queues the timeout actions that came due, and wakes the workers.
pub(crate) fn spawn(shared: Arc<Shared>) -> Result<JoinHandle<()>, Error> {
    thread::Builder::new()
        .name("turnstile-timers".into())
        .spawn(move || {
            let mut state = shared.lock();
            loop {
                if state.shutting_down {
                    return;
                }
                let now = Instant::now();
                let mut fired = false;
                while let Some((session, seq)) = state.timers.pop_due(now) {
                    fired |= state.fire_timer(session, seq, now);
                }
                if fired {
                    shared.work.notify_all();
                }
                state = match state.timers.next_at() {
                    Some(at) => {
                        let wait = at.saturating_duration_since(now);
                        shared.timer_changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0
                    }
                    None => shared.timer_changed.wait(state).unwrap_or_else(|e| e.into_inner()),
                };
            }
        })
        .map_err(|e| Error::io("starting the timer thread", e))
}
