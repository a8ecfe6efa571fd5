//! The only code that talks to the host: safe wrappers over the `turnstile` imports of guest
//! ABI v1, and (on non-Wasm targets) a thread-local in-process mock host with the same functions,
//! so that the SDK, and tenants' scripts, compile and unit-test natively.
//!
//! Every wrapper hands the host a pointer to memory this module owns for the duration of the
//! call, and a length no larger than that memory. Lengths cross the boundary as `i32`: a length
//! over `i32::MAX` is passed as `i32::MAX` (shorter than the buffer, so still in bounds; the
//! host's own limits are far below it), and a negative length from the host reads as "nothing".

#![cfg_attr(
    target_arch = "wasm32",
    expect(unsafe_code, reason = "calling the host's imports means passing it raw pointers into our memory")
)]

/// A length as the ABI's `i32`, saturating (see the module docs for why that is sound).
#[cfg(target_arch = "wasm32")]
fn abi_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// Largest `random` request the host serves in one call.
#[cfg(target_arch = "wasm32")]
const MAX_RANDOM_CHUNK: usize = 64 << 10;

#[cfg(target_arch = "wasm32")]
mod imports {
    // On wasm32 a pointer is an i32 in the ABI, so pointers are declared as pointers: no casts.
    #[link(wasm_import_module = "turnstile")]
    unsafe extern "C" {
        pub(super) safe fn input_len() -> i32;
        pub(super) fn input_read(dst: *mut u8);
        pub(super) safe fn state_len() -> i32;
        pub(super) fn state_read(dst: *mut u8);
        pub(super) fn state_write(src: *const u8, len: i32);
        pub(super) fn emit(src: *const u8, len: i32);
        pub(super) fn next(src: *const u8, len: i32);
        pub(super) fn kv_get(key: *const u8, key_len: i32) -> i32;
        pub(super) fn kv_read(dst: *mut u8);
        pub(super) fn kv_set(key: *const u8, key_len: i32, val: *const u8, val_len: i32);
        pub(super) fn log(level: i32, src: *const u8, len: i32);
        pub(super) safe fn now_ms() -> i64;
        pub(super) fn random(dst: *mut u8, len: i32);
    }
}

/// The event that woke this action (empty when none).
#[cfg(target_arch = "wasm32")]
pub(crate) fn input() -> Vec<u8> {
    let len = usize::try_from(imports::input_len()).unwrap_or(0);
    let mut buf = vec![0u8; len];
    if len > 0 {
        // SAFETY: `buf` is `len` initialised, writable bytes, and the host copies exactly
        // `input_len()` bytes (unchanged during the action) to the pointer.
        unsafe { imports::input_read(buf.as_mut_ptr()) }
    }
    buf
}

/// The session's state blob.
#[cfg(target_arch = "wasm32")]
pub(crate) fn state() -> Vec<u8> {
    let len = usize::try_from(imports::state_len()).unwrap_or(0);
    let mut buf = vec![0u8; len];
    if len > 0 {
        // SAFETY: `buf` is `len` writable bytes; the host copies exactly `state_len()` bytes, and
        // nothing writes the state between the two calls.
        unsafe { imports::state_read(buf.as_mut_ptr()) }
    }
    buf
}

/// Replaces the session's state blob.
#[cfg(target_arch = "wasm32")]
pub(crate) fn state_write(bytes: &[u8]) {
    // SAFETY: the host reads at most `bytes.len()` bytes from a live, borrowed slice.
    unsafe { imports::state_write(bytes.as_ptr(), abi_len(bytes.len())) }
}

/// Appends one output event (one JSON value).
#[cfg(target_arch = "wasm32")]
pub(crate) fn emit(json: &[u8]) {
    // SAFETY: the host reads at most `json.len()` bytes from a live, borrowed slice.
    unsafe { imports::emit(json.as_ptr(), abi_len(json.len())) }
}

/// Sets the next step (its JSON document).
#[cfg(target_arch = "wasm32")]
pub(crate) fn next(json: &[u8]) {
    // SAFETY: the host reads at most `json.len()` bytes from a live, borrowed slice.
    unsafe { imports::next(json.as_ptr(), abi_len(json.len())) }
}

/// The value under `key`, if any.
#[cfg(target_arch = "wasm32")]
pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
    // SAFETY: the host reads at most `key.len()` bytes from a live, borrowed str.
    let found = unsafe { imports::kv_get(key.as_ptr(), abi_len(key.len())) };
    // -1 (absent), or any other negative answer, is "no value".
    let len = usize::try_from(found).ok()?;
    let mut buf = vec![0u8; len];
    if len > 0 {
        // SAFETY: `buf` is `len` writable bytes and the host copies exactly the `len` bytes of the
        // value found by the `kv_get` just above.
        unsafe { imports::kv_read(buf.as_mut_ptr()) }
    }
    Some(buf)
}

/// Writes `value` under `key`.
#[cfg(target_arch = "wasm32")]
pub(crate) fn kv_set(key: &str, value: &[u8]) {
    // SAFETY: the host reads at most `key.len()` and `value.len()` bytes from two live, borrowed
    // slices.
    unsafe { imports::kv_set(key.as_ptr(), abi_len(key.len()), value.as_ptr(), abi_len(value.len())) }
}

/// Logs one line at `level` (0 trace .. 4 error).
#[cfg(target_arch = "wasm32")]
pub(crate) fn log(level: i32, message: &[u8]) {
    // SAFETY: the host reads at most `message.len()` bytes from a live, borrowed slice.
    unsafe { imports::log(level, message.as_ptr(), abi_len(message.len())) }
}

/// Milliseconds since the Unix epoch, by the host's clock.
#[cfg(target_arch = "wasm32")]
pub(crate) fn now_ms() -> i64 {
    imports::now_ms()
}

/// Fills `dst` with the host's random bytes.
#[cfg(target_arch = "wasm32")]
pub(crate) fn random(dst: &mut [u8]) {
    for chunk in dst.chunks_mut(MAX_RANDOM_CHUNK) {
        // SAFETY: the host writes exactly `chunk.len()` (at most 64 KiB, so the length is exact)
        // bytes to a live, mutably borrowed slice.
        unsafe { imports::random(chunk.as_mut_ptr(), abi_len(chunk.len())) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use mock::{emit, input, kv_get, kv_set, log, next, now_ms, random, state, state_write};

/// The in-process stand-in for the host on native targets: one per thread, driven by
/// [`crate::testing`]. It mirrors the host's semantics where a test could tell (a `kv_get` sees
/// this action's own pending writes; state is only replaced by `state_write`).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod mock {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Everything the mock host holds for one action.
    #[derive(Debug, Default)]
    pub(crate) struct Host {
        pub(crate) input: Vec<u8>,
        pub(crate) state: Vec<u8>,
        pub(crate) state_written: bool,
        pub(crate) outputs: Vec<Vec<u8>>,
        pub(crate) next: Option<Vec<u8>>,
        pub(crate) kv: BTreeMap<String, Vec<u8>>,
        pub(crate) kv_writes: BTreeMap<String, Vec<u8>>,
        pub(crate) log: Vec<(i32, String)>,
        pub(crate) now_ms: i64,
        pub(crate) rng: u64,
    }

    thread_local! {
        static HOST: RefCell<Host> = RefCell::new(Host::default());
    }

    /// Replaces this thread's mock host, returning the old one.
    pub(crate) fn swap(host: Host) -> Host {
        HOST.with(|h| h.replace(host))
    }

    fn with<T>(f: impl FnOnce(&mut Host) -> T) -> T {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }

    pub(crate) fn input() -> Vec<u8> {
        with(|h| h.input.clone())
    }

    pub(crate) fn state() -> Vec<u8> {
        with(|h| h.state.clone())
    }

    pub(crate) fn state_write(bytes: &[u8]) {
        with(|h| {
            h.state = bytes.to_vec();
            h.state_written = true;
        });
    }

    pub(crate) fn emit(json: &[u8]) {
        with(|h| h.outputs.push(json.to_vec()));
    }

    pub(crate) fn next(json: &[u8]) {
        with(|h| h.next = Some(json.to_vec()));
    }

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        with(|h| h.kv_writes.get(key).or_else(|| h.kv.get(key)).cloned())
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) {
        with(|h| h.kv_writes.insert(key.to_owned(), value.to_vec()));
    }

    pub(crate) fn log(level: i32, message: &[u8]) {
        let line = (level, String::from_utf8_lossy(message).into_owned());
        // `try_borrow_mut`: the panic hook logs, and a panic may come from inside a mock call.
        HOST.with(|h| {
            if let Ok(mut h) = h.try_borrow_mut() {
                h.log.push(line);
            }
        });
    }

    pub(crate) fn now_ms() -> i64 {
        with(|h| h.now_ms)
    }

    pub(crate) fn random(dst: &mut [u8]) {
        with(|h| {
            for chunk in dst.chunks_mut(8) {
                // splitmix64, seeded by the test: deterministic.
                h.rng = h.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = h.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let word = (z ^ (z >> 31)).to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        });
    }
}
