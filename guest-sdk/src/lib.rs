//! # turnstile-sdk: write Turnstile scripts in Rust
//!
//! A Turnstile *app* is a WebAssembly module whose exported functions are *actions*. A session
//! (one phone call, one chat) runs one action at a time: the action reads the event that woke it
//! and the session's state, emits output events (say this, gather digits, transfer), and ends by
//! choosing the next step: run another action at once ([`Next::goto`]), wait for the customer
//! ([`Next::wait`]), or finish ([`Next::done`]). This crate hides the raw host ABI behind
//! [`Ctx`], [`Next`] and the [`#[action]`](action) attribute.
//!
//! ## Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use turnstile_sdk::{action, Ctx, Next};
//!
//! /// The session's state: any `Serialize + DeserializeOwned + Default` type.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Call {
//!     timeouts: u32,
//! }
//!
//! #[action]
//! fn menu(ctx: &mut Ctx<Call>) -> Next {
//!     ctx.gather("Press 1 for your balance.", 1);
//!     Next::wait("choice").timeout_ms(5000).on_timeout("menu_timeout")
//! }
//!
//! #[action]
//! fn choice(ctx: &mut Ctx<Call>) -> Next {
//!     match ctx.input_str().trim() {
//!         "1" => {
//!             let balance = ctx.kv_get_str("balance:demo").unwrap_or_else(|| "unknown".into());
//!             ctx.say(format!("Your balance is {balance}."));
//!             Next::done_with(&serde_json::json!({ "outcome": "balance" }))
//!         }
//!         _ => Next::goto("menu"),
//!     }
//! }
//!
//! #[action]
//! fn menu_timeout(ctx: &mut Ctx<Call>) -> Next {
//!     ctx.state_mut().timeouts += 1;
//!     if ctx.state().timeouts <= 2 { Next::goto("menu") } else { Next::done() }
//! }
//!
//! // The same actions run natively against an in-process host (see `testing`):
//! # #[cfg(not(target_arch = "wasm32"))]
//! # {
//! let mut host = turnstile_sdk::testing::TestHost::new();
//! let out = host.run(menu_timeout);
//! assert_eq!(out.next, serde_json::json!({ "goto": "menu" }));
//! assert_eq!(host.state::<serde_json::Value>(), serde_json::json!({ "timeouts": 1 }));
//! # }
//! ```
//!
//! The app's crate is a `cdylib` (add `"rlib"` too to unit-test it natively):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! turnstile-sdk = { path = "../../guest-sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! Build it with `cargo build --target wasm32-unknown-unknown --release` (or
//! `--target wasm32-wasip1`, whose stdout/stderr the host captures into the session log) and run
//! the `.wasm` with `turnstile run target/wasm32-unknown-unknown/release/<crate>.wasm`.
//!
//! ## Actions
//!
//! `#[action] fn name(ctx: &mut Ctx<S>) -> Next` keeps the function as written and exports an
//! `extern "C" fn() -> i32` named `name` that loads the input and state, calls it, writes the
//! state back (when [`Ctx::state_mut`] was called), passes the returned [`Next`] to the host and
//! returns 0. If the stored state does not deserialize as `S`, it logs an error and returns 1
//! (the action fails). A zero-sized state type such as `()` (the default: `&mut Ctx`) makes the
//! action stateless: it neither reads nor writes the session state, so stateless actions can
//! live in an app whose other actions keep typed state. A panic fails the action; its message
//! is logged at [`Level::Error`] first, so the session's failure says why.
//!
//! Names starting with `_` or `turnstile_` are reserved (the host does not treat such exports as
//! actions). Every mistake below is a compile error pointing at the offending code:
//!
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action(name = "other")] // the attribute takes no arguments
//! fn start(ctx: &mut Ctx) -> Next { Next::done() }
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! async fn start(ctx: &mut Ctx) -> Next { Next::done() } // actions are not async
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! fn start<S: Default>(ctx: &mut Ctx) -> Next { Next::done() } // nor generic
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! struct Bot;
//! impl Bot {
//!     #[action]
//!     fn start(&self, ctx: &mut Ctx) -> Next { Next::done() } // nor methods
//! }
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! fn start() -> Next { Next::done() } // exactly one parameter, the context
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! fn start(ctx: &mut Ctx, extra: u32) -> Next { Next::done() }
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! fn start(ctx: &mut Ctx) { ctx.say("hi"); } // must return Next
//! ```
//! ```compile_fail
//! # use turnstile_sdk::{action, Ctx, Next};
//! #[action]
//! fn start(ctx: &mut Ctx) -> u32 { 0 } // ... and Next, not something else
//! ```
//!
//! ## Guest ABI v1 (what the SDK implements)
//!
//! Imports from module `"turnstile"`, integers `i32` unless noted, pointers are offsets into the
//! exported `memory`:
//!
//! | import | meaning |
//! |---|---|
//! | `input_len() -> i32`, `input_read(dst)` | the event that woke the action (empty when none) |
//! | `state_len() -> i32`, `state_read(dst)`, `state_write(src, len)` | the session state blob (JSON of `S` here; empty = `S::default()`) |
//! | `emit(src, len)` | append one output event: one JSON value |
//! | `next(src, len)` | the next step: `{"goto":a}`, `{"wait":{"action":a,"timeout_ms":n,"on_timeout":b}}` or `{"done":v}` |
//! | `kv_get(key, key_len) -> i32`, `kv_read(dst)`, `kv_set(key, key_len, val, val_len)` | the tenant's key-value store (-1 = absent) |
//! | `log(level, src, len)` | a log line, level 0 trace .. 4 error |
//! | `now_ms() -> i64`, `random(dst, len)` | clock and random bytes |
//!
//! Exports: `memory` and one `() -> i32` function per action (0 = ok). An action that returns
//! without calling `next` fails.
//!
//! Output events made by the helpers: [`Ctx::say`] `{"type":"say","text":..}`, [`Ctx::play`]
//! `{"type":"play","url":..}`, [`Ctx::gather`] `{"type":"gather","prompt":..,"max_digits":n}`,
//! [`Ctx::transfer`] `{"type":"transfer","queue":..}`, [`Ctx::hangup`] `{"type":"hangup"}`;
//! [`Ctx::emit`] sends any JSON value as is.
//!
#![doc = include_str!("features.md")]
#![deny(unsafe_code)]

// Lets `#[action]` (which names `::turnstile_sdk`) be used inside this crate's own tests.
extern crate self as turnstile_sdk;

mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::OnceCell;

/// Marks `fn name(ctx: &mut Ctx<S>) -> Next` as an action, exported to the host as `name`.
/// See the [crate documentation](crate#actions).
pub use turnstile_sdk_macros::action;

/// The serde version the SDK uses. To derive through it without depending on serde yourself,
/// add `#[serde(crate = "turnstile_sdk::serde")]` next to the derive.
pub use serde;
/// The serde_json version the SDK uses (handy for `serde_json::json!` in [`Next::done_with`]).
pub use serde_json;

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Level 0: very detailed tracing.
    Trace,
    /// Level 1: debugging detail.
    Debug,
    /// Level 2: normal events.
    Info,
    /// Level 3: something unexpected that the script handled.
    Warn,
    /// Level 4: something failed.
    Error,
}

impl Level {
    /// The level's number in the ABI (0 trace .. 4 error).
    pub fn code(self) -> i32 {
        match self {
            Level::Trace => 0,
            Level::Debug => 1,
            Level::Info => 2,
            Level::Warn => 3,
            Level::Error => 4,
        }
    }

    /// The level for an ABI number (below 0 is trace, above 4 is error, as the host reads them).
    pub fn from_code(code: i32) -> Level {
        match code {
            i32::MIN..=0 => Level::Trace,
            1 => Level::Debug,
            2 => Level::Info,
            3 => Level::Warn,
            _ => Level::Error,
        }
    }
}

/// The output events the helpers emit.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Output<'a> {
    Say { text: &'a str },
    Play { url: &'a str },
    Gather { prompt: &'a str, max_digits: u32 },
    Transfer { queue: &'a str },
    Hangup,
}

/// What an action sees and does: its input, the session's typed state `S`, and the host's
/// services (output events, key-value store, log, clock, randomness).
///
/// `S` is the session state, stored by the host as the JSON of `S` between actions; a session
/// starts with `S::default()`. Use `Ctx` (that is, `Ctx<()>`) for an action that needs none.
pub struct Ctx<S = ()> {
    state: S,
    state_changed: bool,
    input: Vec<u8>,
    input_lossy: OnceCell<String>,
}

impl<S> std::fmt::Debug for Ctx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("input_len", &self.input.len()).finish_non_exhaustive()
    }
}

impl<S> Ctx<S> {
    /// The session state as it was when the action started (plus changes made through
    /// [`state_mut`](Ctx::state_mut)).
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The session state, to change. Once this has been called the state is written back to
    /// the host when the action returns; an action that never calls it leaves the stored state
    /// untouched.
    pub fn state_mut(&mut self) -> &mut S {
        self.state_changed = true;
        &mut self.state
    }

    /// The event that woke this action (a customer's digits or message), as bytes; empty when
    /// there is none (the first action of a session without initial input, a timeout, a goto).
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    /// The input as text. Input that is not valid UTF-8 is converted lossily (invalid sequences
    /// become U+FFFD); use [`input`](Ctx::input) for the exact bytes.
    pub fn input_str(&self) -> &str {
        match std::str::from_utf8(&self.input) {
            Ok(text) => text,
            Err(_) => self.input_lossy.get_or_init(|| String::from_utf8_lossy(&self.input).into_owned()),
        }
    }

    /// The input parsed as JSON. An empty input is an error (EOF), like any other bad JSON.
    ///
    /// # Errors
    /// When the input is not JSON for a `T`.
    pub fn input_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.input)
    }

    /// Emits `{"type":"say","text":text}`: speak (voice) or send (chat) a message.
    pub fn say(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        emit_sized(&Output::Say { text }, text.len());
    }

    /// Emits `{"type":"play","url":url}`: play a recording.
    pub fn play(&self, url: impl AsRef<str>) {
        let url = url.as_ref();
        emit_sized(&Output::Play { url }, url.len());
    }

    /// Emits `{"type":"gather","prompt":prompt,"max_digits":max_digits}`: prompt for DTMF digits.
    pub fn gather(&self, prompt: impl AsRef<str>, max_digits: u32) {
        let prompt = prompt.as_ref();
        emit_sized(&Output::Gather { prompt, max_digits }, prompt.len());
    }

    /// Emits `{"type":"transfer","queue":queue}`: hand the customer to an agent queue.
    pub fn transfer(&self, queue: impl AsRef<str>) {
        let queue = queue.as_ref();
        emit_sized(&Output::Transfer { queue }, queue.len());
    }

    /// Emits `{"type":"hangup"}`: end the call.
    pub fn hangup(&self) {
        emit_sized(&Output::Hangup, 0);
    }

    /// Emits any JSON value as one output event, as is.
    ///
    /// # Panics
    /// If `value` fails to serialize to JSON (e.g. a map with non-string keys): a bug in the
    /// script, which fails the action with the reason logged.
    pub fn emit(&self, value: &impl Serialize) {
        emit_sized(value, 0);
    }

    /// The value stored under `key` in the tenant's key-value store (this action's own
    /// [`kv_set`](Ctx::kv_set) writes included), or `None`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        sys::kv_get(key)
    }

    /// [`kv_get`](Ctx::kv_get) as text (invalid UTF-8 converted lossily).
    pub fn kv_get_str(&self, key: &str) -> Option<String> {
        self.kv_get(key).map(|bytes| match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Stores `value` under `key`. The host commits the writes only if the action succeeds.
    pub fn kv_set(&self, key: &str, value: impl AsRef<[u8]>) {
        sys::kv_set(key, value.as_ref());
    }

    /// Writes a line to the session log.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        sys::log(level.code(), message.as_ref().as_bytes());
    }

    /// The host's clock: milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        sys::now_ms()
    }

    /// Fills `dst` with random bytes from the host (not for secrets).
    pub fn random_bytes(&self, dst: &mut [u8]) {
        sys::random(dst);
    }
}

/// Serializes `value` into a buffer sized for `hint` bytes of payload (so a large message is
/// not copied through repeated growth) and emits it.
fn emit_sized(value: &(impl Serialize + ?Sized), hint: usize) {
    let mut json = Vec::with_capacity(hint.saturating_add(64));
    if let Err(e) = serde_json::to_writer(&mut json, value) {
        panic!("turnstile_sdk: the output does not serialize to JSON: {e}");
    }
    sys::emit(&json);
}

/// The step after an action: [`goto`](Next::goto) another action now,
/// [`wait`](Next::wait) for the customer, or [`done`](Next::done).
///
/// A wait takes an optional timeout, set with the builder methods
/// [`timeout_ms`](Next::timeout_ms) and [`on_timeout`](Next::on_timeout); the host requires
/// both or neither:
///
/// ```
/// # use turnstile_sdk::Next;
/// let next = Next::wait("choice").timeout_ms(5000).on_timeout("menu_timeout");
/// assert_eq!(
///     serde_json::to_value(&next).unwrap(),
///     serde_json::json!({"wait": {"action": "choice", "timeout_ms": 5000, "on_timeout": "menu_timeout"}}),
/// );
/// ```
///
/// `Next` serializes to the ABI's next-step document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
#[must_use = "an action returns its Next"]
pub struct Next(Step);

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Step {
    Goto(String),
    Wait {
        action: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        on_timeout: Option<String>,
    },
    Done(serde_json::Value),
}

impl Next {
    /// Run `action` next, at once, with an empty input (`{"goto":action}`).
    pub fn goto(action: impl Into<String>) -> Next {
        Next(Step::Goto(action.into()))
    }

    /// Wait for the customer's next event, then run `action` with it as input
    /// (`{"wait":{"action":action}}`). Waits for ever unless given a timeout.
    pub fn wait(action: impl Into<String>) -> Next {
        Next(Step::Wait { action: action.into(), timeout_ms: None, on_timeout: None })
    }

    /// Gives a wait a timeout of `ms` milliseconds. Needs [`on_timeout`](Next::on_timeout) too.
    ///
    /// # Panics
    /// If this step is not a [`wait`](Next::wait) (a bug in the script).
    pub fn timeout_ms(mut self, ms: u64) -> Next {
        match &mut self.0 {
            Step::Wait { timeout_ms, .. } => *timeout_ms = Some(ms),
            _ => panic!("turnstile_sdk: Next::timeout_ms applies to Next::wait only"),
        }
        self
    }

    /// Names the action run (with an empty input) when a wait's timeout passes first. Needs
    /// [`timeout_ms`](Next::timeout_ms) too.
    ///
    /// # Panics
    /// If this step is not a [`wait`](Next::wait) (a bug in the script).
    pub fn on_timeout(mut self, action: impl Into<String>) -> Next {
        match &mut self.0 {
            Step::Wait { on_timeout, .. } => *on_timeout = Some(action.into()),
            _ => panic!("turnstile_sdk: Next::on_timeout applies to Next::wait only"),
        }
        self
    }

    /// End the session with no result (`{"done":null}`).
    pub fn done() -> Next {
        Next(Step::Done(serde_json::Value::Null))
    }

    /// End the session with `result` (`{"done":result}`).
    ///
    /// # Panics
    /// If `result` fails to serialize to JSON (a bug in the script).
    pub fn done_with(result: &impl Serialize) -> Next {
        match serde_json::to_value(result) {
            Ok(value) => Next(Step::Done(value)),
            Err(e) => panic!("turnstile_sdk: the done result does not serialize to JSON: {e}"),
        }
    }
}

/// What the `#[action]` attribute expands to calls. Not public API.
#[doc(hidden)]
pub mod __private {
    use super::{Ctx, Level, Next, sys};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::cell::OnceCell;

    /// Runs one action: load, call, store, hand over the next step. Returns the export's status.
    pub fn run<S: Serialize + DeserializeOwned + Default>(name: &str, action: fn(&mut Ctx<S>) -> Next) -> i32 {
        install_panic_hook();
        // A zero-sized state carries nothing: such an action neither reads nor writes the state.
        let stateless = size_of::<S>() == 0;
        let state = if stateless {
            S::default()
        } else {
            match load_state(name) {
                Some(state) => state,
                None => return 1,
            }
        };
        let mut ctx = Ctx { state, state_changed: false, input: sys::input(), input_lossy: OnceCell::new() };
        let next = action(&mut ctx);
        if ctx.state_changed && !stateless {
            match serde_json::to_vec(&ctx.state) {
                Ok(bytes) => sys::state_write(&bytes),
                Err(e) => return fail(&format!("action `{name}`: the state does not serialize to JSON: {e}")),
            }
        }
        match serde_json::to_vec(&next) {
            Ok(bytes) => sys::next(&bytes),
            Err(e) => return fail(&format!("action `{name}`: the next step does not serialize to JSON: {e}")),
        }
        0
    }

    fn load_state<S: DeserializeOwned + Default>(name: &str) -> Option<S> {
        let bytes = sys::state();
        if bytes.is_empty() {
            return Some(S::default());
        }
        match serde_json::from_slice(&bytes) {
            Ok(state) => Some(state),
            Err(e) => {
                fail(&format!(
                    "action `{name}`: the stored state does not deserialize as {}: {e}",
                    std::any::type_name::<S>()
                ));
                None
            }
        }
    }

    fn fail(message: &str) -> i32 {
        sys::log(Level::Error.code(), message.as_bytes());
        1
    }

    /// Logs every panic's message at error level, once per instance, before the default hook (on
    /// native targets; on Wasm there is nowhere better for it to go) runs.
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            #[cfg(not(target_arch = "wasm32"))]
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let message = info.payload_as_str().unwrap_or("(a panic without a message)");
                let line = match info.location() {
                    Some(at) => format!("panicked at {}:{}:{}: {message}", at.file(), at.line(), at.column()),
                    None => format!("panicked: {message}"),
                };
                sys::log(Level::Error.code(), line.as_bytes());
                #[cfg(not(target_arch = "wasm32"))]
                previous(info);
            }));
        });
    }
}
