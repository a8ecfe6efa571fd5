//! # order-bot: a chat flow with typed state over several turns
//!
//! Shows a chat bot on Turnstile: each customer message wakes one action, the order being built
//! lives in typed session state between turns, bad answers re-ask the same question, and the
//! confirmed order is emitted as a custom (raw JSON) output event before the session ends with a
//! result. `confirm` also `println!`s a line: built for `wasm32-wasip1` the host captures it into
//! the session log; built for `wasm32-unknown-unknown` it goes nowhere.
//!
//! Actions: `start` → `item` → `quantity` → `confirm` (`yes` places the order, `no` starts
//! over).
//!
//! Build and run:
//!
//! ```sh
//! cargo build -p order-bot --target wasm32-unknown-unknown --release
//! cargo run -p turnstile -- run target/wasm32-unknown-unknown/release/order_bot.wasm
//! ```
//!
//! (or `--target wasm32-wasip1` and `target/wasm32-wasip1/release/order_bot.wasm` to see the
//! printed line in the log).

use serde::{Deserialize, Serialize};
use turnstile_sdk::{Ctx, Next, action};

/// The order being taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Order {
    /// What the customer wants (empty until asked).
    pub item: String,
    /// How many (0 until asked).
    pub quantity: u32,
    /// Actions run in this session so far.
    pub turns: u32,
}

/// The custom output event a placed order emits.
#[derive(Serialize)]
struct Placed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item: &'a str,
    quantity: u32,
}

/// Counts the turn and returns the state.
fn turn(ctx: &mut Ctx<Order>) -> &mut Order {
    let order = ctx.state_mut();
    order.turns += 1;
    order
}

/// Opens the conversation.
#[action]
pub fn start(ctx: &mut Ctx<Order>) -> Next {
    turn(ctx);
    ctx.say("Hi! What would you like to order?");
    Next::wait("item")
}

/// Takes the item.
#[action]
pub fn item(ctx: &mut Ctx<Order>) -> Next {
    let item = ctx.input_str().trim().to_owned();
    let order = turn(ctx);
    if item.is_empty() {
        ctx.say("What would you like to order?");
        return Next::wait("item");
    }
    order.item = item;
    ctx.say("How many?");
    Next::wait("quantity")
}

/// Takes the quantity, 1 to 99.
#[action]
pub fn quantity(ctx: &mut Ctx<Order>) -> Next {
    let quantity = ctx.input_str().trim().parse::<u32>().ok().filter(|n| (1..=99).contains(n));
    let order = turn(ctx);
    let Some(quantity) = quantity else {
        ctx.say("Please send a number from 1 to 99.");
        return Next::wait("quantity");
    };
    order.quantity = quantity;
    let question = format!("Confirm {quantity} x {}? (yes/no)", order.item);
    ctx.say(question);
    Next::wait("confirm")
}

/// Places the order, starts over, or asks again.
#[action]
pub fn confirm(ctx: &mut Ctx<Order>) -> Next {
    let answer = ctx.input_str().trim().to_ascii_lowercase();
    let order = turn(ctx).clone();
    println!("order-bot: {} turns", order.turns);
    match answer.as_str() {
        "yes" => {
            ctx.emit(&Placed { kind: "order", item: &order.item, quantity: order.quantity });
            ctx.say("Order placed.");
            Next::done_with(&serde_json::json!({
                "item": order.item,
                "quantity": order.quantity,
                "turns": order.turns,
            }))
        }
        "no" => {
            *ctx.state_mut() = Order { turns: order.turns, ..Order::default() };
            ctx.say("Let's start again. What would you like to order?");
            Next::wait("item")
        }
        _ => {
            ctx.say("Please answer yes or no.");
            Next::wait("confirm")
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use serde_json::json;
    use turnstile_sdk::testing::TestHost;

    fn send(host: &mut TestHost, text: &str, action: fn(&mut Ctx<Order>) -> Next) -> turnstile_sdk::testing::Outcome {
        host.set_input(text);
        let out = host.run(action);
        assert_eq!(out.status, 0);
        out
    }

    #[test]
    fn a_full_order_with_mistakes() {
        let mut host = TestHost::new();
        assert_eq!(host.run(start).next, json!({"wait": {"action": "item"}}));
        assert_eq!(send(&mut host, "   ", item).next, json!({"wait": {"action": "item"}}));
        assert_eq!(send(&mut host, " pizza ", item).said(), ["How many?"]);
        let out = send(&mut host, "100", quantity);
        assert_eq!(out.said(), ["Please send a number from 1 to 99."]);
        assert_eq!(out.next, json!({"wait": {"action": "quantity"}}));
        assert_eq!(send(&mut host, "2", quantity).said(), ["Confirm 2 x pizza? (yes/no)"]);
        assert_eq!(send(&mut host, "maybe", confirm).next, json!({"wait": {"action": "confirm"}}));
        let out = send(&mut host, "YES", confirm);
        assert_eq!(
            out.outputs,
            [json!({"type": "order", "item": "pizza", "quantity": 2}), json!({"type": "say", "text": "Order placed."})]
        );
        assert_eq!(out.next, json!({"done": {"item": "pizza", "quantity": 2, "turns": 7}}));
    }

    #[test]
    fn no_starts_over_but_keeps_counting_turns() {
        let mut host = TestHost::new();
        host.run(start);
        send(&mut host, "tea", item);
        send(&mut host, "3", quantity);
        let out = send(&mut host, "no", confirm);
        assert_eq!(out.said(), ["Let's start again. What would you like to order?"]);
        assert_eq!(out.next, json!({"wait": {"action": "item"}}));
        assert_eq!(host.state::<Order>(), Order { item: String::new(), quantity: 0, turns: 4 });
    }
}
