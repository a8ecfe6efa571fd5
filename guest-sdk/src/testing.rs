//! Unit-test actions natively, without a Wasm host (non-Wasm targets only).
//!
//! A [`TestHost`] plays the host for one session on the current thread: set the input (and,
//! if you like, the stored state, key-value entries, the clock), run an action function through
//! the same runner its export uses, and inspect the [`Outcome`]: outputs as JSON values, the next
//! step, log lines, key-value writes. Like the real host, it keeps the state and commits the
//! key-value writes of each successful action, so several runs make a session:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use turnstile_sdk::testing::TestHost;
//! use turnstile_sdk::{action, Ctx, Next};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Order { item: String }
//!
//! #[action]
//! fn item(ctx: &mut Ctx<Order>) -> Next {
//!     ctx.state_mut().item = ctx.input_str().trim().to_owned();
//!     Next::wait("confirm")
//! }
//!
//! #[action]
//! fn confirm(ctx: &mut Ctx<Order>) -> Next {
//!     ctx.say(format!("One {}, coming up.", ctx.state().item));
//!     Next::done()
//! }
//!
//! let mut host = TestHost::new();
//! host.set_input(" tea ");
//! host.run(item);
//! let out = host.run(confirm);
//! assert_eq!(out.said(), ["One tea, coming up."]);
//! assert_eq!(out.next, serde_json::json!({ "done": null }));
//! ```

use crate::{Ctx, Level, Next, sys};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// An in-process host for one session, for unit tests.
#[derive(Debug, Default)]
pub struct TestHost {
    input: Vec<u8>,
    state: Vec<u8>,
    kv: BTreeMap<String, Vec<u8>>,
    now_ms: i64,
    seed: u64,
}

/// What one action did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The export's return value: 0 ok, non-zero failed (then nothing below was committed).
    pub status: i32,
    /// Output events in order, parsed as JSON.
    pub outputs: Vec<serde_json::Value>,
    /// The next-step document (`Value::Null` if the action did not set one).
    pub next: serde_json::Value,
    /// The state blob after the action (unchanged unless the action wrote it).
    pub state: Vec<u8>,
    /// Whether the action wrote the state.
    pub state_written: bool,
    /// Key-value writes of this action.
    pub kv_writes: BTreeMap<String, Vec<u8>>,
    /// Log lines.
    pub log: Vec<(Level, String)>,
}

impl Outcome {
    /// The texts of the `say` outputs, in order.
    pub fn said(&self) -> Vec<String> {
        self.outputs_of("say").filter_map(|o| o.get("text")?.as_str().map(str::to_owned)).collect()
    }

    /// The outputs whose `"type"` is `kind`.
    pub fn outputs_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        self.outputs.iter().filter(move |o| o.get("type").and_then(serde_json::Value::as_str) == Some(kind))
    }

    /// The state after the action, deserialized.
    ///
    /// # Panics
    /// If the state is not JSON for an `S` (an empty state gives `S::default()`).
    pub fn state_as<S: DeserializeOwned + Default>(&self) -> S {
        decode_state(&self.state)
    }
}

fn decode_state<S: DeserializeOwned + Default>(bytes: &[u8]) -> S {
    if bytes.is_empty() {
        return S::default();
    }
    match serde_json::from_slice(bytes) {
        Ok(state) => state,
        Err(e) => panic!("the state {:?} is not JSON for this type: {e}", String::from_utf8_lossy(bytes)),
    }
}

impl TestHost {
    /// A session with no input, an empty state and an empty key-value store.
    pub fn new() -> TestHost {
        TestHost::default()
    }

    /// Sets the input of the next [`run`](TestHost::run) (consumed by it).
    pub fn set_input(&mut self, input: impl Into<Vec<u8>>) -> &mut TestHost {
        self.input = input.into();
        self
    }

    /// Sets the input of the next run to the JSON of `value`.
    ///
    /// # Panics
    /// If `value` does not serialize to JSON.
    pub fn set_input_json(&mut self, value: &impl Serialize) -> &mut TestHost {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.set_input(bytes),
            Err(e) => panic!("the input does not serialize to JSON: {e}"),
        }
    }

    /// Replaces the stored state blob.
    pub fn set_state_bytes(&mut self, state: impl Into<Vec<u8>>) -> &mut TestHost {
        self.state = state.into();
        self
    }

    /// Replaces the stored state with the JSON of `state`.
    ///
    /// # Panics
    /// If `state` does not serialize to JSON.
    pub fn set_state(&mut self, state: &impl Serialize) -> &mut TestHost {
        match serde_json::to_vec(state) {
            Ok(bytes) => self.set_state_bytes(bytes),
            Err(e) => panic!("the state does not serialize to JSON: {e}"),
        }
    }

    /// Stores `value` under `key` in the key-value store.
    pub fn set_kv(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut TestHost {
        self.kv.insert(key.into(), value.into());
        self
    }

    /// Sets what `now_ms` answers.
    pub fn set_now_ms(&mut self, now_ms: i64) -> &mut TestHost {
        self.now_ms = now_ms;
        self
    }

    /// Seeds `random_bytes` (deterministic for a given seed).
    pub fn set_seed(&mut self, seed: u64) -> &mut TestHost {
        self.seed = seed;
        self
    }

    /// The stored state blob.
    pub fn state_bytes(&self) -> &[u8] {
        &self.state
    }

    /// The stored state, deserialized.
    ///
    /// # Panics
    /// If the state is not JSON for an `S` (an empty state gives `S::default()`).
    pub fn state<S: DeserializeOwned + Default>(&self) -> S {
        decode_state(&self.state)
    }

    /// The key-value store.
    pub fn kv(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.kv
    }

    /// Runs `action` (an `#[action]` function, or any function of that shape) through the
    /// runner its export uses. On success (status 0) the new state and the key-value writes are
    /// kept for the next run, as the host would; the input is consumed either way. A panic in
    /// the action propagates to the test.
    pub fn run<S>(&mut self, action: fn(&mut Ctx<S>) -> Next) -> Outcome
    where
        S: Serialize + DeserializeOwned + Default,
    {
        self.seed = self.seed.wrapping_add(1);
        let previous = sys::mock::swap(sys::mock::Host {
            input: std::mem::take(&mut self.input),
            state: self.state.clone(),
            kv: self.kv.clone(),
            now_ms: self.now_ms,
            rng: self.seed,
            ..sys::mock::Host::default()
        });
        // Put the previous host back even if the action panics, so one test cannot leak into the
        // next on a reused thread.
        struct Restore(Option<sys::mock::Host>);
        impl Drop for Restore {
            fn drop(&mut self) {
                if let Some(host) = self.0.take() {
                    sys::mock::swap(host);
                }
            }
        }
        let mut restore = Restore(Some(previous));
        let status = crate::__private::run("test", action);
        let host = sys::mock::swap(restore.0.take().unwrap_or_default());
        let outcome = Outcome {
            status,
            outputs: host.outputs.iter().map(|o| parse("output", o)).collect(),
            next: host.next.as_deref().map_or(serde_json::Value::Null, |n| parse("next step", n)),
            state: host.state,
            state_written: host.state_written,
            kv_writes: host.kv_writes,
            log: host.log.into_iter().map(|(level, line)| (Level::from_code(level), line)).collect(),
        };
        if status == 0 {
            self.state.clone_from(&outcome.state);
            self.kv.extend(outcome.kv_writes.clone());
        }
        outcome
    }
}

fn parse(what: &str, bytes: &[u8]) -> serde_json::Value {
    match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => panic!("the {what} {:?} is not one JSON value: {e}", String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Counter {
        visits: u32,
        name: String,
    }

    #[action]
    fn greet(ctx: &mut Ctx<Counter>) -> Next {
        let name = ctx.input_str().trim().to_owned();
        let state = ctx.state_mut();
        state.visits += 1;
        state.name = name;
        ctx.gather("Pick one", 1);
        Next::wait("again").timeout_ms(1000).on_timeout("greet")
    }

    #[action]
    fn again(ctx: &mut Ctx<Counter>) -> Next {
        let Counter { visits, name } = ctx.state();
        ctx.say(format!("Hello again {name}, visit {visits}"));
        ctx.kv_set("last", name.as_bytes());
        Next::done_with(&json!({ "visits": visits }))
    }

    #[action]
    fn stateless(ctx: &mut Ctx) -> Next {
        let seen = ctx.kv_get_str("last");
        ctx.log(Level::Info, format!("last = {seen:?}"));
        ctx.hangup();
        Next::goto("greet")
    }

    #[test]
    fn typed_state_round_trips_between_actions() {
        let mut host = TestHost::new();
        host.set_input("  Ada ");
        let first = host.run(greet);
        assert_eq!(first.status, 0);
        assert!(first.state_written);
        assert_eq!(first.outputs, [json!({"type": "gather", "prompt": "Pick one", "max_digits": 1})]);
        assert_eq!(first.next, json!({"wait": {"action": "again", "timeout_ms": 1000, "on_timeout": "greet"}}));
        assert_eq!(first.state_as::<Counter>(), Counter { visits: 1, name: "Ada".into() });

        let second = host.run(again);
        assert_eq!(second.status, 0);
        assert!(!second.state_written, "reading the state does not write it");
        assert_eq!(second.said(), ["Hello again Ada, visit 1"]);
        assert_eq!(second.next, json!({"done": {"visits": 1}}));
        assert_eq!(second.kv_writes.get("last").map(Vec::as_slice), Some(&b"Ada"[..]));
        assert_eq!(host.state::<Counter>(), Counter { visits: 1, name: "Ada".into() });
    }

    #[test]
    fn stateless_actions_leave_typed_state_alone() {
        let mut host = TestHost::new();
        host.set_state(&Counter { visits: 7, name: "Bo".into() }).set_kv("last", "Bo");
        let out = host.run(stateless);
        assert_eq!(out.status, 0);
        assert!(!out.state_written);
        assert_eq!(out.outputs, [json!({"type": "hangup"})]);
        assert_eq!(out.next, json!({"goto": "greet"}));
        assert_eq!(out.log, [(Level::Info, "last = Some(\"Bo\")".to_owned())]);
        assert_eq!(host.state::<Counter>().visits, 7);
    }

    #[test]
    fn undecodable_state_fails_the_action_with_a_reason() {
        let mut host = TestHost::new();
        host.set_state_bytes(r#"{"visits":"many"}"#);
        let out = host.run(again);
        assert_eq!(out.status, 1);
        assert_eq!(out.next, serde_json::Value::Null);
        assert!(out.outputs.is_empty());
        let (level, line) = &out.log[0];
        assert_eq!(*level, Level::Error);
        assert!(line.contains("stored state does not deserialize"), "{line}");
        assert_eq!(host.state_bytes(), br#"{"visits":"many"}"#, "a failed action changes nothing");
    }

    #[test]
    fn helpers_emit_the_documented_shapes() {
        let mut host = TestHost::new();
        host.set_input(vec![b'h', 0xFF, b'i']).set_now_ms(42);
        fn all(ctx: &mut Ctx) -> Next {
            ctx.say("s");
            ctx.play("https://example.com/a.wav");
            ctx.transfer("agents");
            ctx.emit(&json!({"type": "custom", "n": 1}));
            assert_eq!(ctx.input_str(), "h\u{FFFD}i");
            assert!(ctx.input_json::<serde_json::Value>().is_err());
            assert_eq!(ctx.now_ms(), 42);
            let mut bytes = [0u8; 20];
            ctx.random_bytes(&mut bytes);
            assert_ne!(bytes, [0u8; 20]);
            assert_eq!(ctx.kv_get("nothing"), None);
            Next::done()
        }
        let out = host.run(all);
        assert_eq!(
            out.outputs,
            [
                json!({"type": "say", "text": "s"}),
                json!({"type": "play", "url": "https://example.com/a.wav"}),
                json!({"type": "transfer", "queue": "agents"}),
                json!({"type": "custom", "n": 1}),
            ]
        );
        assert_eq!(out.next, json!({"done": null}));
    }

    #[test]
    fn panics_are_logged_at_error_level() {
        fn boom(_ctx: &mut Ctx) -> Next {
            panic!("boom {}", 42)
        }
        let previous = sys::mock::swap(sys::mock::Host::default());
        let result = std::panic::catch_unwind(|| crate::__private::run("boom", boom));
        let host = sys::mock::swap(previous);
        assert!(result.is_err());
        let (level, line) = host.log.last().cloned().unwrap_or_default();
        assert_eq!(level, Level::Error.code());
        assert!(line.starts_with("panicked at ") && line.ends_with(": boom 42"), "{line}");
    }

    #[test]
    #[should_panic(expected = "applies to Next::wait only")]
    fn timeout_on_a_goto_is_a_bug() {
        let _ = Next::goto("a").timeout_ms(1);
    }
}
