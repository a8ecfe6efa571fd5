//! End to end against a real `turnstile serve` on an ephemeral loopback port: an operator creates
//! two tenants, each deploys an example and runs IVR sessions over HTTP with their outputs
//! streamed as SSE; one tenant's hostile module fails only its own sessions; SIGTERM ends the
//! server cleanly.

use crate::durability::temp_dir;
use crate::fixtures::example;
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const ADMIN: &str = "e2e-admin-token-0123456789abcdef";

/// One HTTP/1.1 request on its own connection; returns the status and the body as text
/// (chunked bodies are left as they are: the tests look for substrings).
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("sends");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("reads");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

pub(crate) fn json_body(body: &str) -> Value {
    // A Content-Length body is the JSON itself.
    serde_json::from_str(body.trim()).unwrap_or(Value::Null)
}

pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops a server with SIGTERM and checks that it exits 0.
fn stop_gracefully(server: &mut Child) {
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().expect("kill runs");
    assert!(server.wait().expect("ends").success(), "a graceful stop exits 0");
}

/// `turnstile serve` on an ephemeral port with these extra arguments, and the port it bound.
pub(crate) fn start_server(args: &[&OsStr]) -> (Child, u16) {
    start_server_in(&std::env::temp_dir(), args)
}

/// [`start_server`] run from the directory `cwd` (relative paths in its arguments and its
/// configuration are taken from there).
fn start_server_in(cwd: &std::path::Path, args: &[&OsStr]) -> (Child, u16) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_turnstile"))
        .current_dir(cwd)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("TURNSTILE_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("the listening line");
    let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    (server, port)
}

#[test]
fn two_tenants_over_http_with_sse_and_a_clean_shutdown() {
    let dir = temp_dir("serve");
    let (mut server, port) = start_server(&[OsStr::new("--data-dir"), dir.as_os_str()]);

    let (status, body) = request(port, "GET", "/healthz", "", "text/plain", b"");
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut tokens = Vec::new();
    for tenant in ["bank", "mallory"] {
        let (status, _) = request(
            port,
            "POST",
            "/v1/tenants",
            ADMIN,
            "application/json",
            json!({ "name": tenant }).to_string().as_bytes(),
        );
        assert_eq!(status, 201);
        let (status, body) =
            request(port, "POST", &format!("/v1/tenants/{tenant}/tokens"), ADMIN, "application/json", b"");
        assert_eq!(status, 201);
        let token = json_body(&body)["token"].as_str().expect("token").to_owned();
        let (status, body) = request(port, "PUT", "/v1/apps/ivr", &token, "application/wasm", &example("ivr_menu"));
        assert_eq!(status, 201, "{body}");
        tokens.push(token);
    }
    let (bank, mallory) = (&tokens[0], &tokens[1]);
    let (status, _) = request(port, "PUT", "/v1/apps/hostile", mallory, "application/wasm", &example("hostile"));
    assert_eq!(status, 201);

    // The hostile tenant's sessions fail, each with its own kind...
    let mut hostile = Vec::new();
    for entry in ["spin", "memory_bomb", "trap"] {
        let (status, body) = request(
            port,
            "POST",
            "/v1/sessions",
            mallory,
            "application/json",
            json!({ "app": "hostile", "entry": entry }).to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        hostile.push(json_body(&body)["id"].as_u64().expect("id"));
    }
    // ...while the bank's calls go through the menu and end.
    let mut calls = Vec::new();
    for _ in 0..3 {
        let (status, body) = request(
            port,
            "POST",
            "/v1/sessions",
            bank,
            "application/json",
            json!({ "app": "ivr" }).to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{body}");
        calls.push(json_body(&body)["id"].as_u64().expect("id"));
    }
    let status_of = |token: &str, id: u64| {
        json_body(&request(port, "GET", &format!("/v1/sessions/{id}"), token, "application/json", b"").1)["status"]
            .clone()
    };
    for &id in &calls {
        wait_until("the call to wait at the menu", || status_of(bank, id) == "waiting");
        let (status, body) = request(port, "POST", &format!("/v1/sessions/{id}/events"), bank, "text/plain", b"9");
        assert_eq!(status, 202, "{body}");
        // The outputs, as SSE: the stream ends with the session.
        let (status, stream) = request(port, "GET", &format!("/v1/sessions/{id}/outputs"), bank, "text/plain", b"");
        assert_eq!(status, 200);
        assert!(stream.contains("Goodbye.") && stream.contains("event: end"), "{stream}");
        assert_eq!(status_of(bank, id), "done");
    }
    for &id in &hostile {
        wait_until("the hostile session to fail", || status_of(mallory, id) == "failed");
        // The bank can't see them.
        let (status, _) = request(port, "GET", &format!("/v1/sessions/{id}"), bank, "application/json", b"");
        assert_eq!(status, 404);
    }
    let (_, metrics) = request(port, "GET", "/metrics", "", "text/plain", b"");
    assert!(
        metrics.contains("turnstile_action_failures_total{tenant=\"mallory\",kind=\"out_of_fuel\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("turnstile_action_failures_total{tenant=\"bank\",kind=\"trap\"} 0"), "{metrics}");

    let pid = server.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    let exit = server.wait().expect("the server ends");
    assert!(exit.success(), "SIGTERM ends the server with 0, got {exit}");
}

#[test]
fn slow_clients_and_open_streams_hold_neither_a_connection_nor_the_shutdown() {
    let dir = temp_dir("serve-slow");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("turnstile.toml");
    std::fs::write(&config, "[http]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\nshutdown_grace_secs = 5\n")
        .expect("config");
    let (mut server, port) =
        start_server(&[OsStr::new("--config"), config.as_os_str(), OsStr::new("--data-dir"), dir.as_os_str()]);
    let body = json!({ "name": "bank" }).to_string();
    assert_eq!(request(port, "POST", "/v1/tenants", ADMIN, "application/json", body.as_bytes()).0, 201);
    let (_, body) = request(port, "POST", "/v1/tenants/bank/tokens", ADMIN, "application/json", b"");
    let token = json_body(&body)["token"].as_str().expect("token").to_owned();
    assert_eq!(request(port, "PUT", "/v1/apps/ivr", &token, "application/wasm", &example("ivr_menu")).0, 201);

    // Headers that never end: the connection is closed.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stalled.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("sends");
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(10), "headers held the connection {:?}", started.elapsed());
    // A body that never arrives: 408 with a JSON answer.
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    slow.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).expect("sends");
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "the body held the connection {:?}", started.elapsed());

    // An output stream open on a waiting call, then SIGTERM: the stream ends and the server exits 0.
    let (_, body) = request(port, "POST", "/v1/sessions", &token, "application/json", br#"{"app":"ivr"}"#);
    let id = json_body(&body)["id"].as_u64().expect("id");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!("GET /v1/sessions/{id}/outputs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("sends");
    let mut first = [0u8; 256];
    let n = stream.read(&mut first).expect("the stream starts");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().expect("kill runs");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let exit = server.wait().expect("the server ends");
    assert!(exit.success(), "SIGTERM with an open stream ends the server with 0, got {exit}");
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_client_takes_a_script_from_nothing_to_an_answered_call() {
    let dir = temp_dir("client");
    let (mut server, port) = start_server(&[OsStr::new("--data-dir"), dir.as_os_str()]);
    let url = format!("http://127.0.0.1:{port}");
    let module = dir.join("ivr.wasm");
    std::fs::write(&module, example("ivr_menu")).expect("module written");
    let client = |token: &str, args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .args(args)
            .env("TURNSTILE_URL", &url)
            .env("TURNSTILE_TOKEN", token)
            .output()
            .expect("the client runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let (ok, _, err) = client(ADMIN, &["tenants", "--create", "bank"]);
    assert!(ok, "{err}");
    let (ok, token, err) = client(ADMIN, &["token", "bank"]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let (ok, out, err) = client(&token, &["deploy", "ivr", module.to_str().expect("utf-8")]);
    assert!(ok && out.contains("\"actions\""), "{out}{err}");
    let (ok, id, err) = client(&token, &["start", "ivr", "--key", "call-1"]);
    assert!(ok, "{err}");
    let id = id.trim().to_owned();
    // Started again under its key (an answer lost, say): the same session.
    let (ok, again, err) = client(&token, &["start", "ivr", "--key", "call-1"]);
    assert!(ok && again.trim() == id, "{again}{err}");
    // The menu waits for a key: 9 hangs up, and the tail shows the call to its end.
    let (ok, _, err) = client(&token, &["send", &id, "9", "--key", "press-1"]);
    assert!(ok, "{err}");
    let (ok, out, err) = client(&token, &["tail", &id]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Goodbye.") && out.trim_end().ends_with("end: done"), "{out}");
    // The tenant's sessions, a page at a time.
    let (ok, second, err) = client(&token, &["start", "ivr"]);
    assert!(ok, "{err}");
    let (ok, out, err) = client(&token, &["sessions", "--limit", "1"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{id}  ivr")) && out.contains(" done ") && out.contains(&format!("more: --after {id}")),
        "{out}"
    );
    let (ok, out, err) = client(&token, &["sessions", "--after", &id]);
    assert!(ok && out.contains(second.trim()) && !out.contains("more:"), "{out}{err}");
    let (ok, _, err) = client(&token, &["sessions", "--limit", "0"]);
    assert!(!ok && err.contains("bad_query"), "{err}");
    // A refusal is the server's code and message, and exit status 1.
    let (ok, _, err) = client(&token, &["deploy", "bad", "Cargo.toml"]);
    assert!(!ok && err.contains("not_wasm:"), "{err}");
    let (ok, _, err) = client("wrong-token", &["apps"]);
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (ok, out, err) = client(ADMIN, &["suspend", "bank"]);
    assert!(ok && out.contains("bank: suspended"), "{out}{err}");
    let (ok, _, err) = client(&token, &["start", "ivr"]);
    assert!(!ok && err.contains("tenant_suspended"), "{err}");
    stop_gracefully(&mut server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds a lock on the schema's `tenants` table until dropped (rolled back): a node starting on
/// the schema waits for it while it loads, for as long as it is held (no timeout to race).
struct LoadLock(postgres::Client);

impl LoadLock {
    fn on(schema: &crate::store::PgSchema) -> LoadLock {
        let name = schema.url.rsplit("schema=").next().expect("named").to_owned();
        let mut client = postgres::Client::connect(&crate::store::postgres_url(), postgres::NoTls).expect("connects");
        client.batch_execute(&format!("BEGIN; LOCK TABLE \"{name}\".tenants IN ACCESS EXCLUSIVE MODE")).expect("locks");
        LoadLock(client)
    }
}

impl Drop for LoadLock {
    fn drop(&mut self) {
        let _ = self.0.batch_execute("ROLLBACK");
    }
}

#[test]
fn a_starting_server_is_alive_not_ready_and_holds_requests_for_its_api() {
    let schema = crate::store::PgSchema::new("starting");
    drop(turnstile::PgStore::open(&schema.url).expect("the schema is made"));
    let dir = temp_dir("starting");
    let lock = LoadLock::on(&schema);
    let (mut server, port) =
        start_server(&[OsStr::new("--store"), OsStr::new(&schema.url), OsStr::new("--data-dir"), dir.as_os_str()]);
    let (status, body) = request(port, "GET", "/healthz", "", "text/plain", b"");
    assert_eq!((status, body.trim()), (200, "ok"));
    // (A standby for a moment, until it holds the shards; then starting, until the lock goes.)
    wait_until("the node to load", || {
        json_body(&request(port, "GET", "/readyz", "", "text/plain", b"").1)["code"] == "starting"
    });
    let held = std::thread::spawn(move || request(port, "GET", "/v1/tenants", ADMIN, "text/plain", b""));
    drop(lock);
    let (status, body) = held.join().expect("answered");
    assert_eq!(status, 200, "the held request is answered by the API once it is up: {body}");
    wait_until("the API to take the connections", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    stop_gracefully(&mut server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node stopped (SIGTERM) while it loads exits 0 at once and gives its shards up: a standby
/// takes over then, not when the leases run out (30 s here).
#[test]
fn a_node_stopped_while_it_loads_gives_its_shards_up_at_once() {
    let schema = crate::store::PgSchema::new("stopped_loading");
    drop(turnstile::PgStore::open(&schema.url).expect("the schema is made"));
    let dir = temp_dir("stopped-loading");
    let config = dir.join("turnstile.toml");
    std::fs::write(&config, "[cluster]\nlease = \"30s\"\n").expect("config");
    let args = |node: &str| {
        [
            OsStr::new("--store").to_owned(),
            OsStr::new(&schema.url).to_owned(),
            OsStr::new("--config").to_owned(),
            config.clone().into_os_string(),
            OsStr::new("--data-dir").to_owned(),
            dir.join(node).into_os_string(),
        ]
    };
    let code = |port: u16| json_body(&request(port, "GET", "/readyz", "", "", b"").1)["code"].clone();
    let lock = LoadLock::on(&schema);
    let first = args("a");
    let (mut loading, port) = start_server(&first.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    wait_until("the first node to load", || code(port) == "starting");
    let second = args("b");
    let (mut standby, port_b) = start_server(&second.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    wait_until("the second node to wait", || code(port_b) == "standby");
    Command::new("kill").args(["-TERM", &loading.id().to_string()]).status().expect("kill runs");
    let stopped = Instant::now();
    assert!(loading.wait().expect("ends").success(), "a stop while loading exits 0");
    while code(port_b) != "starting" {
        assert!(stopped.elapsed() < Duration::from_secs(10), "the standby waited for the leases to run out");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lock);
    wait_until("the standby to act", || request(port_b, "GET", "/readyz", "", "", b"").0 == 200);
    stop_gracefully(&mut standby);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An output stream opened while a server starts is handed to the API and lives as long as any
/// of the API's streams: not cut when the grace period of the loop that held it runs out.
#[test]
fn a_stream_opened_while_the_server_starts_outlives_the_starting_loop() {
    let schema = crate::store::PgSchema::new("starting_stream");
    let dir = temp_dir("starting-stream");
    let config = dir.join("turnstile.toml");
    std::fs::write(&config, "[http]\nshutdown_grace_secs = 1\n").expect("config");
    let args = [
        OsStr::new("--store"),
        OsStr::new(&schema.url),
        OsStr::new("--data-dir"),
        dir.as_os_str(),
        OsStr::new("--config"),
        config.as_os_str(),
    ];
    let (mut server, port) = start_server(&args);
    wait_until("the node to act", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    assert_eq!(request(port, "POST", "/v1/tenants", ADMIN, "application/json", br#"{"name":"bank"}"#).0, 201);
    let (_, body) = request(port, "POST", "/v1/tenants/bank/tokens", ADMIN, "application/json", b"");
    let token = json_body(&body)["token"].as_str().expect("token").to_owned();
    let app = crate::durability::wait_app(None);
    assert_eq!(request(port, "PUT", "/v1/apps/call", &token, "application/wasm", &app).0, 201);
    let (_, body) = request(port, "POST", "/v1/sessions", &token, "application/json", br#"{"app":"call"}"#);
    let session = format!("/v1/sessions/{}", json_body(&body)["id"].as_u64().expect("id"));
    wait_until("the call to wait", || {
        json_body(&request(port, "GET", &session, &token, "", b"").1)["status"] == "waiting"
    });
    stop_gracefully(&mut server);
    // Started again while its load waits: the stream is opened then.
    let lock = LoadLock::on(&schema);
    let (mut server, port) = start_server(&args);
    wait_until("the node to load", || json_body(&request(port, "GET", "/readyz", "", "", b"").1)["code"] == "starting");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let follow = format!("GET {session}/outputs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(follow.as_bytes()).expect("sends");
    let streamed = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    drop(lock);
    wait_until("the server to be ready", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    // Past the held loop's grace period, the call is answered: the stream carries it to its end.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = request(port, "POST", &format!("{session}/events"), &token, "text/plain", b"\"hello\"");
    assert_eq!(status, 202, "{body}");
    let text = streamed.join().expect("joins");
    assert!(text.contains("hello") && text.contains("event: end"), "{text}");
    stop_gracefully(&mut server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_configuration_serves_with_its_relative_data_directory() {
    // As the README shows it: `serve --config turnstile.example.toml` from the directory that
    // holds it, whose `data_dir = "turnstile-data"` is relative (the port is the test's own).
    let dir = temp_dir("example-config");
    let config = turnstile::examples::repository_root().join("turnstile.example.toml");
    std::fs::copy(config, dir.join("turnstile.example.toml")).expect("copied");
    let (mut server, port) = start_server_in(&dir, &[OsStr::new("--config"), OsStr::new("turnstile.example.toml")]);
    // The example seeds a tenant; a token for it deploys and runs a call.
    let (status, body) = request(port, "POST", "/v1/tenants/first-bank/tokens", ADMIN, "application/json", b"");
    assert_eq!(status, 201, "{body}");
    let token = json_body(&body)["token"].as_str().expect("a token").to_owned();
    let (status, body) = request(port, "PUT", "/v1/apps/ivr", &token, "application/wasm", &example("ivr_menu"));
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        request(port, "POST", "/v1/sessions", &token, "application/json", br#"{"app":"ivr","entry":"start"}"#);
    assert_eq!(status, 201, "{body}");
    for made in ["turnstile-data/turnstile.db", "turnstile-data/modules"] {
        assert!(dir.join(made).exists(), "{made} was not made under the directory serve ran in");
    }
    stop_gracefully(&mut server);
    let _ = std::fs::remove_dir_all(&dir);
}
