//! A stored checkpoint (a session as JSON) decoded as a store loads it: refused or decoded,
//! never a panic, and what decodes encodes back to the same session.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(session) = serde_json::from_slice::<turnstile::Session>(data) else { return };
    let text = serde_json::to_string(&session).expect("a decoded session encodes");
    let again: turnstile::Session = serde_json::from_str(&text).expect("an encoded session decodes");
    assert_eq!(session, again);
});
