//! The example apps walked end to end: every branch of the IVR menu (both timeouts included), the
//! order bot's typed state over several turns, and the same bot built for `wasm32-wasip1`.

use crate::fixtures::{deploy_example, example_for, outputs, runtime, said};
use serde_json::json;
use std::sync::Arc;
use turnstile::{LocalSession, LogLevel, MemoryKv, Status, Step};

fn ivr(account: &str) -> (LocalSession<'static>, Vec<Step>) {
    let kv = Arc::new(MemoryKv::default());
    kv.set("balance:1234", "1,250.00 EUR");
    let input = json!({ "account": account }).to_string().into_bytes();
    LocalSession::start(runtime(), deploy_example("ivr_menu"), "start", input, kv).expect("starts")
}

fn assert_waiting_for_choice(session: &LocalSession<'_>) {
    match session.status() {
        Status::Waiting { wait, .. } => {
            assert_eq!(wait.action, "choice");
            assert_eq!(wait.timeout_ms, Some(5000));
            assert_eq!(wait.on_timeout.as_deref(), Some("menu_timeout"));
        }
        other => panic!("expected to wait for a choice, got {other:?}"),
    }
}

fn gathers(steps: &[Step]) -> usize {
    outputs(steps).iter().filter(|o| o["type"] == "gather" && o["max_digits"] == 1).count()
}

#[test]
fn ivr_balance_invalid_input_and_two_reprompts_then_goodbye() {
    let (mut call, steps) = ivr("1234");
    assert_eq!(steps.iter().map(|s| s.action.as_str()).collect::<Vec<_>>(), ["start", "menu"]);
    assert!(!said(&steps).is_empty(), "a greeting");
    assert_eq!(gathers(&steps), 1);
    assert_waiting_for_choice(&call);

    let steps = call.deliver(b"1".to_vec()).expect("delivered");
    assert!(said(&steps).contains(&"Your balance is 1,250.00 EUR.".to_owned()), "{:?}", said(&steps));
    assert_eq!(gathers(&steps), 1, "back to the menu");
    assert_waiting_for_choice(&call);

    let steps = call.deliver(b" 7 ".to_vec()).expect("delivered");
    assert_eq!(said(&steps)[0], "Sorry, that is not a valid option.");
    assert_waiting_for_choice(&call);

    for _ in 0..2 {
        let steps = call.time_out().expect("timed out");
        assert_eq!(said(&steps), ["Sorry, I didn't hear anything."]);
        assert_eq!(gathers(&steps), 1, "re-prompted");
        assert_waiting_for_choice(&call);
    }
    let steps = call.time_out().expect("timed out");
    assert_eq!(said(&steps), ["Goodbye."]);
    assert!(outputs(&steps).iter().any(|o| o["type"] == "hangup"));
    assert_eq!(call.status(), &Status::Done { result: json!({ "outcome": "timeout" }) });

    let state: serde_json::Value = serde_json::from_slice(&call.session().state).expect("state is JSON");
    assert_eq!(state["timeouts"], 3);
    assert_eq!(state["invalid"], 1);
    assert_eq!(state["account"], "1234");
}

#[test]
fn ivr_transfer_to_an_agent() {
    let (mut call, _) = ivr("1234");
    let steps = call.deliver(b"2".to_vec()).expect("delivered");
    assert!(outputs(&steps).iter().any(|o| o == &json!({ "type": "transfer", "queue": "agents" })));
    assert_eq!(call.status(), &Status::Done { result: json!({ "outcome": "transferred" }) });
}

#[test]
fn ivr_hang_up_and_unknown_account() {
    let (mut call, _) = ivr("9999");
    let steps = call.deliver(b"1".to_vec()).expect("delivered");
    assert!(said(&steps).contains(&"We have no balance on file for this account.".to_owned()));
    let steps = call.deliver(b"9".to_vec()).expect("delivered");
    assert_eq!(said(&steps), ["Goodbye."]);
    assert!(outputs(&steps).iter().any(|o| o["type"] == "hangup"));
    assert_eq!(call.status(), &Status::Done { result: json!({ "outcome": "hangup" }) });
    // A finished session takes no more events.
    let error = call.deliver(b"1".to_vec()).expect_err("finished");
    assert_eq!(error.code(), "session_state");
}

fn order(bot: &str, target: &str) -> (LocalSession<'static>, Vec<Step>) {
    let app = runtime().deploy(&example_for(bot, target)).expect("deploys").app;
    let mut all = Vec::new();
    let (mut chat, steps) =
        LocalSession::start(runtime(), app, "start", Vec::new(), Arc::new(MemoryKv::default())).expect("starts");
    assert_eq!(said(&steps), ["Hi! What would you like to order?"]);
    all.extend(steps);
    let turns: [(&str, &str); 7] = [
        ("pizza", "How many?"),
        ("abc", "Please send a number from 1 to 99."),
        ("2", "Confirm 2 x pizza? (yes/no)"),
        ("no", "Let's start again. What would you like to order?"),
        ("tea", "How many?"),
        ("3", "Confirm 3 x tea? (yes/no)"),
        ("yes", "Order placed."),
    ];
    for (event, reply) in turns {
        let steps = chat.deliver(event.as_bytes().to_vec()).expect("delivered");
        assert!(said(&steps).contains(&reply.to_owned()), "after `{event}`: {:?}", said(&steps));
        all.extend(steps);
    }
    (chat, all)
}

#[test]
fn order_bot_keeps_typed_state_across_turns() {
    let (chat, steps) = order("order_bot", "wasm32-unknown-unknown");
    assert!(outputs(&steps).contains(&json!({ "type": "order", "item": "tea", "quantity": 3 })));
    let actions = chat.session().counters.actions;
    assert_eq!(actions, 8);
    assert_eq!(chat.status(), &Status::Done { result: json!({ "item": "tea", "quantity": 3, "turns": actions }) });
}

#[test]
fn a_wasip1_build_gets_wasi_and_its_stdout_lands_in_the_log() {
    let bytes = example_for("order_bot", "wasm32-wasip1");
    let info = runtime().inspect(&bytes).expect("valid");
    assert!(info.wasi);
    let (chat, steps) = order("order_bot", "wasm32-wasip1");
    assert!(matches!(chat.status(), Status::Done { .. }));
    let printed: Vec<&str> =
        steps.iter().flat_map(|s| &s.log).filter(|l| l.level == LogLevel::Stdio).map(|l| l.message.as_str()).collect();
    assert!(printed.iter().any(|line| line.starts_with("order-bot:")), "{printed:?}");
}
