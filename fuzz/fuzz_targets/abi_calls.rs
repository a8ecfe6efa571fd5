//! A guest calling every import of the ABI (turnstile and WASI) with pointers and lengths the
//! fuzzer chooses: every call is answered, refused or ends the action, never a host panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = turnstile_fuzz::run(turnstile_fuzz::abi_caller(), "start", data);
});
