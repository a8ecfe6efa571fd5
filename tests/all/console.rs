//! The live operator console in a real browser: a headless Chromium (over WebDriver) signs in
//! to a real `turnstile serve`, reads the tenants' table and plots, opens a tenant's sessions and
//! one session, and suspends a tenant; what a tenant wrote is shown as text, never as markup.

use crate::browser::Browser;
use crate::durability::temp_dir;
use crate::fixtures::{abi_module, example};
use crate::serve::{ADMIN, json_body, request, start_server};
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::process::Child;

/// The server, killed when the test ends however it ends.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post_json(port: u16, path: &str, token: &str, body: &Value) -> Value {
    let (status, text) = request(port, "POST", path, token, "application/json", body.to_string().as_bytes());
    assert!((200..300).contains(&status), "POST {path}: {status} {text}");
    json_body(&text)
}

/// A tenant with a token and the apps given (name, module).
pub(crate) fn tenant(port: u16, name: &str, weight: u32, apps: &[(&str, Vec<u8>)]) -> String {
    post_json(port, "/v1/tenants", ADMIN, &json!({ "name": name, "config": { "weight": weight } }));
    let token = post_json(port, &format!("/v1/tenants/{name}/tokens"), ADMIN, &json!({}))["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    for (app, module) in apps {
        let (status, body) = request(port, "PUT", &format!("/v1/apps/{app}"), &token, "application/wasm", module);
        assert_eq!(status, 201, "{body}");
    }
    token
}

fn start_session(port: u16, token: &str, app: &str, entry: &str) -> u64 {
    post_json(port, "/v1/sessions", token, &json!({ "app": app, "entry": entry }))["id"].as_u64().expect("an id")
}

/// An app whose one action says something that looks like markup, and is done.
pub(crate) fn markup_app() -> Vec<u8> {
    let output = r#"{"type":"say","text":"<b id='injected'>hi</b>"}"#;
    abi_module(&format!(
        r#"(data (i32.const 0) "{escaped}")
           (data (i32.const 200) "{{\"done\":null}}")
           (func (export "start") (result i32)
             (call $emit (i32.const 0) (i32.const {len}))
             (call $next (i32.const 200) (i32.const 13))
             i32.const 0)"#,
        escaped = output.replace('"', "\\\""),
        len = output.len()
    ))
}

/// A script expression: the text of a cell of a tenant's row in the console's table (or null).
fn cell(tenant: &str, field: &str) -> String {
    format!(
        "document.querySelector('#tenants tr[data-tenant=\"{tenant}\"] td[data-field=\"{field}\"]')?.textContent ?? null"
    )
}

/// A script that returns the cell's text.
fn read(tenant: &str, field: &str) -> String {
    format!("return {};", cell(tenant, field))
}

#[test]
fn the_console_shows_the_tenants_live_and_lets_the_operator_act() {
    // A browser loads both cores for a few seconds: not beside a test that measures.
    let _measuring = crate::fixtures::measuring();
    let dir = temp_dir("console");
    let (server, port) = start_server(&[OsStr::new("--data-dir"), dir.as_os_str()]);
    let server = Server(server);
    let calm = tenant(port, "calm", 3, &[("ivr", example("ivr_menu")), ("markup", markup_app())]);
    let rough = tenant(port, "rough", 1, &[("hostile", example("hostile"))]);
    let calls: Vec<u64> = (0..3).map(|_| start_session(port, &calm, "ivr", "start")).collect();
    let shown = start_session(port, &calm, "markup", "start");
    start_session(port, &rough, "hostile", "trap");

    let browser = Browser::start();
    let console = format!("http://127.0.0.1:{port}/console");
    browser.open(&console);
    // A wrong token is refused in words, and the page asks again.
    browser.type_into("#token", "not-the-admin-token");
    browser.click("#connect");
    let refused = browser
        .wait_for("the refusal", "const e = document.getElementById('sign-in-error').textContent; return e || null;");
    assert!(refused.as_str().is_some_and(|e| e.contains("refused")), "{refused}");

    browser.type_into("#token", ADMIN);
    browser.click("#connect");
    // The table: a row per tenant, with its weight, open sessions and failures by kind.
    browser.wait_for("the trap counted", &format!("return ({} ?? '').includes('trap 1');", cell("rough", "failures")));
    assert_eq!(browser.eval(&read("calm", "weight"), &[]), json!("3"));
    assert_eq!(browser.eval(&read("calm", "open"), &[]), json!("3"), "three calls wait for the customer");
    assert_eq!(browser.eval(&read("rough", "state"), &[]), json!("active"));

    // Live: actions run now show as a rate, a cost share against the weight share, and plots.
    for _ in 0..20 {
        start_session(port, &calm, "markup", "start");
    }
    browser.wait_for("calm's rate", &format!("return ({} ?? '0') !== '0';", cell("calm", "rate")));
    let share = browser.eval(&read("calm", "share"), &[]);
    assert!(share.as_str().is_some_and(|s| s.contains("% / ") && s.ends_with('%')), "{share}");
    let p99 = browser.eval(&read("calm", "p99"), &[]);
    assert!(p99.as_str().is_some_and(|s| s.ends_with("s")), "a latency with its unit: {p99}");
    browser.wait_for("the plots", "const lines = document.querySelectorAll('#plot-rate polyline'); return lines.length === 2 && lines[0].getAttribute('points').split(' ').length > 1;");

    // A tenant's sessions, then one session: its step, its outputs as text.
    browser.click("#tenants tr[data-tenant=\"calm\"] button.link");
    let row = format!("#session-list tr[data-session=\"{}\"] button.link", calls[0]);
    browser.wait_for("calm's sessions", &format!("return document.querySelector('{row}') !== null;"));
    browser.click(&row);
    let said = browser.wait_for(
        "the call's outputs",
        "const o = document.getElementById('session-outputs').textContent; return o.includes('Welcome') ? o : null;",
    );
    assert!(said.as_str().is_some_and(|o| o.contains("Welcome to Turnstile Bank.")), "{said}");
    let step = browser.eval("return document.getElementById('session-step').textContent;", &[]);
    assert!(step.as_str().is_some_and(|s| s.contains("\"waiting\"")), "{step}");
    let row = format!("#session-list tr[data-session=\"{shown}\"] button.link");
    browser.click(&row);
    browser.wait_for(
        "the markup session's output",
        "return document.getElementById('session-outputs').textContent.includes('injected');",
    );
    assert_eq!(
        browser.eval("return document.getElementById('injected') === null;", &[]),
        json!(true),
        "a tenant's output became markup"
    );

    // Suspend a tenant from its row: the server has it suspended, and the row says so.
    browser.click("#tenants tr[data-tenant=\"rough\"] button[data-action=\"suspend\"]");
    browser.wait_for("the suspension shown", &format!("return {} === 'suspended';", cell("rough", "state")));
    let (_, body) = request(port, "GET", "/v1/tenants/rough", ADMIN, "application/json", b"");
    assert_eq!(json_body(&body)["config"]["suspended"], json!(true));
    browser.click("#tenants tr[data-tenant=\"rough\"] button[data-action=\"resume\"]");
    browser.wait_for("the resumption shown", &format!("return {} === 'active';", cell("rough", "state")));

    // Nothing was fetched from anywhere but this server.
    let foreign = browser.eval(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin));",
        &[],
    );
    assert_eq!(foreign, json!([]));
    drop(browser);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
