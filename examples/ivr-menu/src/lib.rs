//! # ivr-menu: a bank's phone line
//!
//! Shows a voice IVR on Turnstile: greeting, a DTMF menu (`gather` then a `wait` with a
//! timeout), typed session state (the caller's account, how often the menu timed out, how many
//! invalid keys were pressed), a key-value lookup (`balance:<account>`), and the three ways a
//! call ends (transfer to an agent queue, hang-up, give up after repeated silence).
//!
//! Actions: `start` (optional input `{"account":"1234"}`, default account `demo`) → `menu` →
//! `choice` (input: the digits) or `menu_timeout`.
//!
//! Build and run:
//!
//! ```sh
//! cargo build -p ivr-menu --target wasm32-unknown-unknown --release
//! cargo run -p turnstile -- run target/wasm32-unknown-unknown/release/ivr_menu.wasm
//! ```

use serde::{Deserialize, Serialize};
use turnstile_sdk::{Ctx, Level, Next, action};

/// The menu's prompt.
pub const MENU_PROMPT: &str = "Press 1 for your balance, 2 for an agent, 9 to hang up.";

/// How long the menu waits for a key, in milliseconds.
pub const MENU_TIMEOUT_MS: u64 = 5000;

/// How many silent menus are re-prompted before the call is ended.
pub const MAX_TIMEOUTS: u32 = 2;

/// The call's state, kept by the host between actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Call {
    /// The caller's account number.
    pub account: String,
    /// How many times the menu timed out.
    pub timeouts: u32,
    /// How many invalid keys were pressed.
    pub invalid: u32,
}

impl Default for Call {
    fn default() -> Call {
        Call { account: "demo".to_owned(), timeouts: 0, invalid: 0 }
    }
}

/// The optional initial input of `start`.
#[derive(Deserialize)]
struct Start {
    account: String,
}

/// Greets the caller, remembers their account, and goes to the menu.
#[action]
pub fn start(ctx: &mut Ctx<Call>) -> Next {
    if !ctx.input().is_empty() {
        match ctx.input_json::<Start>() {
            Ok(Start { account }) => ctx.state_mut().account = account,
            Err(e) => ctx.log(Level::Warn, format!("ignoring initial input that is not {{\"account\":..}}: {e}")),
        }
    }
    let account = ctx.state().account.clone();
    ctx.log(Level::Info, format!("call started for account {account}"));
    ctx.say("Welcome to Turnstile Bank.");
    // Written even when unchanged, so every later action finds the account in the state.
    ctx.state_mut();
    Next::goto("menu")
}

/// Prompts for one digit and waits for it.
#[action]
pub fn menu(ctx: &mut Ctx<Call>) -> Next {
    ctx.gather(MENU_PROMPT, 1);
    Next::wait("choice").timeout_ms(MENU_TIMEOUT_MS).on_timeout("menu_timeout")
}

/// Acts on the digit pressed.
#[action]
pub fn choice(ctx: &mut Ctx<Call>) -> Next {
    let digits = ctx.input_str().trim().to_owned();
    match digits.as_str() {
        "1" => {
            let key = format!("balance:{}", ctx.state().account);
            match ctx.kv_get_str(&key) {
                Some(balance) => ctx.say(format!("Your balance is {}.", balance.trim())),
                None => ctx.say("We have no balance on file for this account."),
            }
            Next::goto("menu")
        }
        "2" => {
            ctx.say("Transferring you to an agent.");
            ctx.transfer("agents");
            Next::done_with(&serde_json::json!({ "outcome": "transferred" }))
        }
        "9" => {
            ctx.say("Goodbye.");
            ctx.hangup();
            Next::done_with(&serde_json::json!({ "outcome": "hangup" }))
        }
        _ => {
            ctx.log(Level::Debug, format!("invalid menu choice {digits:?}"));
            ctx.say("Sorry, that is not a valid option.");
            ctx.state_mut().invalid += 1;
            Next::goto("menu")
        }
    }
}

/// No key was pressed in time: re-prompt, or give up after [`MAX_TIMEOUTS`] re-prompts.
#[action]
pub fn menu_timeout(ctx: &mut Ctx<Call>) -> Next {
    let state = ctx.state_mut();
    state.timeouts += 1;
    if state.timeouts <= MAX_TIMEOUTS {
        ctx.say("Sorry, I didn't hear anything.");
        Next::goto("menu")
    } else {
        ctx.say("Goodbye.");
        ctx.hangup();
        Next::done_with(&serde_json::json!({ "outcome": "timeout" }))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use serde_json::json;
    use turnstile_sdk::testing::TestHost;

    #[test]
    fn balance_then_hangup() {
        let mut host = TestHost::new();
        host.set_kv("balance:1234", "42.00 EUR");
        host.set_input(r#"{"account":"1234"}"#);
        assert_eq!(host.run(start).next, json!({"goto": "menu"}));
        let out = host.run(menu);
        assert_eq!(out.outputs, [json!({"type": "gather", "prompt": MENU_PROMPT, "max_digits": 1})]);
        assert_eq!(out.next, json!({"wait": {"action": "choice", "timeout_ms": 5000, "on_timeout": "menu_timeout"}}));
        host.set_input(" 1\n");
        let out = host.run(choice);
        assert_eq!(out.said(), ["Your balance is 42.00 EUR."]);
        assert_eq!(out.next, json!({"goto": "menu"}));
        host.set_input("9");
        let out = host.run(choice);
        assert_eq!(out.outputs, [json!({"type": "say", "text": "Goodbye."}), json!({"type": "hangup"})]);
        assert_eq!(out.next, json!({"done": {"outcome": "hangup"}}));
    }

    #[test]
    fn default_account_invalid_keys_and_transfer() {
        let mut host = TestHost::new();
        host.run(start);
        assert_eq!(host.state::<Call>().account, "demo");
        host.set_input("1");
        assert_eq!(host.run(choice).said(), ["We have no balance on file for this account."]);
        host.set_input("7");
        assert_eq!(host.run(choice).said(), ["Sorry, that is not a valid option."]);
        assert_eq!(host.state::<Call>().invalid, 1);
        host.set_input("2");
        let out = host.run(choice);
        assert_eq!(out.outputs_of("transfer").next(), Some(&json!({"type": "transfer", "queue": "agents"})));
        assert_eq!(out.next, json!({"done": {"outcome": "transferred"}}));
    }

    #[test]
    fn three_timeouts_end_the_call() {
        let mut host = TestHost::new();
        for _ in 0..MAX_TIMEOUTS {
            let out = host.run(menu_timeout);
            assert_eq!(out.said(), ["Sorry, I didn't hear anything."]);
            assert_eq!(out.next, json!({"goto": "menu"}));
        }
        let out = host.run(menu_timeout);
        assert_eq!(out.next, json!({"done": {"outcome": "timeout"}}));
        assert_eq!(host.state::<Call>().timeouts, 3);
    }
}
