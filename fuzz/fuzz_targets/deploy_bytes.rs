//! Deploy validation and compiling on raw bytes: any input is refused with a reason or
//! deployed, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let runtime = turnstile_fuzz::runtime();
    if runtime.inspect(data).is_ok() {
        let _ = runtime.deploy(data);
    }
});
