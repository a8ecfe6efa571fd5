//! A span of an action on a worker thread, and the time it is charged for it.
//!
//! An action is charged for the time it keeps a worker busy, but not for the time the machine
//! took the worker's thread away from it: with more workers than cores, or a noisy neighbour,
//! an action of 10 µs is now and then descheduled for tens of milliseconds (once for seconds in
//! CI), and charging that wall time once put its tenant a thousand actions in debt — the
//! tenant sat out whole seconds. So a span is charged the thread's CPU time, plus the time its
//! host calls measured waiting (store look-ups), never more than its wall time.
//!
//! Reading a thread's CPU clock is a system call (~0.35 µs here, a seventh of a trivial action),
//! so short spans skip it: a span under [`SHORT`] is charged its wall time, which the machine
//! can inflate by [`SHORT`] at most. A longer span reads the clock once, at its end, against a
//! mark taken on the same thread at most [`MARK_AGE`] before it started: the CPU time since the
//! mark over-counts the span's by that much at most, and never under-counts it.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Spans up to this long are charged their wall time.
const SHORT: Duration = Duration::from_micros(200);
/// A span's CPU time is measured from a mark at most this old when it starts.
const MARK_AGE: Duration = Duration::from_micros(100);

thread_local! {
    /// The latest reading of this thread's CPU clock, and when it was taken.
    static MARK: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The CPU time this thread has had.
pub(crate) fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// A span of work on this thread, started by [`Span::start`].
#[derive(Debug)]
pub(crate) struct Span {
    started: Instant,
}

/// What a span took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanTime {
    /// Its wall time.
    pub(crate) elapsed: Duration,
    /// What it is charged: its CPU time plus its measured waits, at most `elapsed`.
    pub(crate) charged: Duration,
}

impl Span {
    /// Starts a span now (marking this thread's CPU clock if the mark is stale).
    pub(crate) fn start() -> Span {
        let started = Instant::now();
        MARK.with(|mark| {
            if mark.get().is_none_or(|(at, _)| started.saturating_duration_since(at) > MARK_AGE) {
                mark.set(Some((started, thread_cpu_time())));
            }
        });
        Span { started }
    }

    /// When it started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Ends the span on the thread that started it; `waited` is the time its host calls measured
    /// waiting off the CPU (or at least partly: it is capped by the wall time all the same).
    pub(crate) fn end(self, waited: Duration) -> SpanTime {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed <= SHORT {
            return SpanTime { elapsed, charged: elapsed };
        }
        let cpu = thread_cpu_time();
        let since_mark = MARK.with(|mark| {
            let before = mark.get().map_or(Duration::ZERO, |(_, cpu)| cpu);
            mark.set(Some((now, cpu)));
            cpu.saturating_sub(before)
        });
        SpanTime { elapsed, charged: elapsed.min(since_mark.saturating_add(waited)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_off_the_cpu_is_not_charged_unless_it_was_a_measured_wait() {
        let span = Span::start();
        std::thread::sleep(Duration::from_millis(20));
        let time = span.end(Duration::ZERO);
        assert!(time.elapsed >= Duration::from_millis(20));
        assert!(time.charged < Duration::from_millis(5), "a thread asleep used no CPU: {time:?}");

        let span = Span::start();
        std::thread::sleep(Duration::from_millis(20));
        let time = span.end(Duration::from_millis(20));
        assert!(time.charged >= Duration::from_millis(20), "a measured wait is charged: {time:?}");
        assert!(time.charged <= time.elapsed);
    }

    #[test]
    fn time_on_the_cpu_is_charged() {
        let span = Span::start();
        let from = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time().saturating_sub(from) < Duration::from_millis(10) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let time = span.end(Duration::ZERO);
        assert!(time.charged >= Duration::from_millis(10), "{time:?}");
        assert!(time.charged <= time.elapsed);
    }

    #[test]
    fn a_short_span_is_charged_its_wall_time() {
        let time = Span::start().end(Duration::ZERO);
        if time.elapsed <= SHORT {
            assert_eq!(time.charged, time.elapsed);
        }
    }
}
