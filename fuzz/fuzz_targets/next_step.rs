//! The next-step document a guest passes to `next`, parsed and checked as the host does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = turnstile_fuzz::run(turnstile_fuzz::next_step_guest(), "start", data);
});
