//! The cluster's chaos test: three `turnstile serve` processes on one PostgreSQL schema run a few
//! hundred calls of a deterministic app whose last output is every event it was given, in order.
//! Calls are started and events sent at random nodes, each retried, with the same
//! `Idempotency-Key`, at random nodes until one accepts it; output streams are followed from
//! random nodes and resumed with `Last-Event-ID`. Meanwhile the acting node is killed (SIGKILL)
//! and started again, paused (SIGSTOP) past its lease and woken, and the database's connections
//! are killed. A checker then proves that every call was started once, that every acknowledged
//! event was applied exactly once, that no output number was missed or repeated by any stream,
//! that every call finished with the result its events make, that the shards' epochs only grew,
//! and that the paused node, woken a zombie, wrote nothing and exited 3.

use crate::durability::temp_dir;
use crate::fixtures::abi_module;
use crate::serve::{ADMIN, json_body};
use crate::store::PgSchema;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SESSIONS: usize = 200;
/// Events per call; the call ends after the last.
const EVENTS: usize = 12;
const SENDERS: usize = 10;
/// Calls whose outputs are followed live, across the chaos.
const STREAMS: usize = 16;
/// A sender's pause between two events, so that the load spans the chaos.
const PACE: Duration = Duration::from_millis(20);
/// Nothing may take longer than this.
const PATIENCE: Duration = Duration::from_secs(90);

/// Waits for events; echoes each as an output (a JSON string) and appends it to the state; after
/// `EVENTS` of `EVENT_LEN` bytes it emits the whole state as one JSON string and ends.
fn accumulator() -> Vec<u8> {
    let wait = r#"{"wait":{"action":"step"}}"#;
    let done = r#"{"done":"ok"}"#;
    abi_module(&format!(
        r#"            (data (i32.const 0) "{wait_text}")
            (data (i32.const 200) "{done_text}")
            (func (export "start") (result i32) (call $next (i32.const 0) (i32.const {wait_len})) i32.const 0)
            (func (export "step") (result i32)
              (local $len i32) (local $state i32)
              (local.set $len (call $input_len))
              (call $input_read (i32.const 1001))
              (i32.store8 (i32.const 1000) (i32.const 34))
              (i32.store8 (i32.add (i32.const 1001) (local.get $len)) (i32.const 34))
              (call $emit (i32.const 1000) (i32.add (local.get $len) (i32.const 2)))
              (local.set $state (call $state_len))
              (call $state_read (i32.const 5001))
              (memory.copy (i32.add (i32.const 5001) (local.get $state)) (i32.const 1001) (local.get $len))
              (local.set $state (i32.add (local.get $state) (local.get $len)))
              (call $state_write (i32.const 5001) (local.get $state))
              (if (i32.ge_u (local.get $state) (i32.const {total}))
                (then
                  (i32.store8 (i32.const 5000) (i32.const 34))
                  (i32.store8 (i32.add (i32.const 5001) (local.get $state)) (i32.const 34))
                  (call $emit (i32.const 5000) (i32.add (local.get $state) (i32.const 2)))
                  (call $next (i32.const 200) (i32.const {done_len})))
                (else (call $next (i32.const 0) (i32.const {wait_len}))))
              i32.const 0)"#,
        wait_text = wait.replace('"', "\\\""),
        wait_len = wait.len(),
        done_text = done.replace('"', "\\\""),
        done_len = done.len(),
        total = EVENTS * EVENT_LEN,
    ))
}

const EVENT_LEN: usize = 7;

/// The `number`th event of the call at `index`: fixed width, different for every call and event.
fn event(index: usize, number: usize) -> String {
    format!("{number:02}{index:03}{:02}", (index * 7 + number * 13) % 100)
}

/// One HTTP/1.0 exchange (the server closes the connection after the answer, and a stream is
/// sent as it is, not chunked): the status and the body, or why there was none.
fn exchange(port: u16, head: &str, body: &[u8], timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
    Ok((status, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned())))
}

/// The head of an HTTP/1.0 request; `more` is extra header lines.
fn head(method: &str, path: &str, token: &str, content_type: &str, more: &str, length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\n{more}Content-Length: {length}\r\n\r\n"
    )
}

/// A small deterministic generator per thread (which node to try next).
struct Dice(u64);

impl Dice {
    fn node(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % NODES as u64).expect("small")
    }
}

/// The three processes, each on a fixed port so that clients can try any of them (a standby
/// forwards what it gets to the acting node), its output in a log file of its own.
struct Cluster {
    ports: [u16; NODES],
    config: PathBuf,
    store: String,
    dirs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
    /// Exits the test did not cause: (node, status).
    exits: Vec<(usize, ExitStatus)>,
}

impl Cluster {
    fn start(store: &str, name: &str) -> Cluster {
        let listeners: Vec<_> = (0..NODES).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
        let ports = std::array::from_fn(|i| listeners[i].local_addr().expect("bound").port());
        drop(listeners);
        let config = temp_dir(&format!("{name}-config")).join("turnstile.toml");
        std::fs::write(&config, "[cluster]\nlease = \"2s\"\n").expect("config");
        let dirs = (0..NODES).map(|i| temp_dir(&format!("{name}-{i}"))).collect();
        let children = (0..NODES).map(|_| None).collect();
        Cluster { ports, config, store: store.to_owned(), dirs, children, exits: Vec::new() }
    }

    fn spawn(&mut self, node: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dirs[node].join("serve.log"))
            .expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.ports[node])])
            .arg("--config")
            .arg(&self.config)
            .args(["--store", &self.store, "--data-dir"])
            .arg(&self.dirs[node])
            .env("TURNSTILE_ADMIN_TOKEN", ADMIN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        self.children[node] = Some(child);
    }

    /// Starts again every node that exited on its own (as a supervisor would), noting its exit.
    fn revive(&mut self) {
        for node in 0..NODES {
            let exited = self.children[node].as_mut().and_then(|child| child.try_wait().expect("waits"));
            if let Some(status) = exited {
                self.exits.push((node, status));
                self.spawn(node);
            }
        }
    }

    fn signal(&self, node: usize, signal: &str) {
        let pid = self.children[node].as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().expect("kill runs").success());
    }

    /// The node acting for the database (the one that answers), other than `not`, and its shards'
    /// epochs; waits for one, starting again what exits meanwhile.
    fn acting(&mut self, not: Option<usize>) -> (usize, BTreeMap<u64, u64>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.revive();
            for node in (0..NODES).filter(|&n| Some(n) != not) {
                // Standbys answer too (forwarding to the acting node), but are never ready.
                let ask = |path: &str| {
                    exchange(self.ports[node], &head("GET", path, ADMIN, "", "", 0), b"", Duration::from_millis(500))
                };
                if !matches!(ask("/readyz"), Ok((200, _))) {
                    continue;
                }
                if let Ok((200, body)) = ask("/v1/cluster") {
                    let view = json_body(&body);
                    if view["holds_all_shards"] == true {
                        let shards = view["shards"].as_array().expect("shards");
                        let epochs = shards
                            .iter()
                            .map(|s| (s["shard"].as_u64().expect("shard"), s["epoch"].as_u64().expect("epoch")))
                            .collect();
                        return (node, epochs);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no node took the shards over");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed run says what the nodes said of it: their warnings and errors, in order.
        if std::thread::panicking() {
            for (node, dir) in self.dirs.iter().enumerate() {
                let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
                let said: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("exiting"))
                    .collect();
                eprintln!("node {node} said ({} lines):", said.len());
                for line in &said[said.len().saturating_sub(60)..] {
                    eprintln!("  {line}");
                }
            }
        }
    }
}

/// Checks that no shard's epoch went back (or, after a takeover, that every one went up).
fn grown(before: &BTreeMap<u64, u64>, after: &BTreeMap<u64, u64>, strictly: bool) {
    for (shard, epoch) in after {
        let old = before.get(shard).copied().unwrap_or(0);
        assert!(if strictly { *epoch > old } else { *epoch >= old }, "shard {shard}: epoch {old} then {epoch}");
    }
}

/// What one stream consumer saw: each output number with its data, and any number out of order.
#[derive(Default)]
struct Seen {
    outputs: Vec<(u64, String)>,
    disorder: Vec<String>,
    reconnects: usize,
}

/// Follows the outputs of `path` from random nodes until the `end` event, resuming after the last
/// output seen.
fn follow(ports: [u16; NODES], token: &str, path: &str, seed: u64, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut dice = Dice(seed);
    let deadline = Instant::now() + PATIENCE;
    'connect: while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let last = seen.outputs.last().map_or(0, |(n, _)| *n);
        let port = ports[dice.node()];
        let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        seen.reconnects += 1;
        let request = head("GET", path, token, "", &format!("Last-Event-ID: {last}\r\n"), 0);
        if stream
            .set_read_timeout(Some(Duration::from_secs(4)))
            .and_then(|()| stream.write_all(request.as_bytes()))
            .is_err()
        {
            continue;
        }
        let mut lines = BufReader::new(stream).lines();
        let Some(Ok(status)) = lines.next() else { continue };
        if !status.contains(" 200 ") {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        for line in lines.by_ref() {
            let Ok(line) = line else { continue 'connect };
            if line.is_empty() {
                break; // the end of the headers
            }
        }
        for line in lines {
            let Ok(line) = line else { continue 'connect };
            if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().parse::<u64>().ok();
            } else if let Some(value) = line.strip_prefix("event:") {
                kind = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data = value.trim().to_owned();
            } else if line.is_empty() {
                match (kind.as_str(), id) {
                    ("end", _) => return seen,
                    ("output", Some(number)) => {
                        let last = seen.outputs.last().map_or(0, |(n, _)| *n);
                        if number != last + 1 {
                            seen.disorder.push(format!("{path}: output {number} after {last}"));
                        }
                        seen.outputs.push((number, std::mem::take(&mut data)));
                    }
                    _ => {}
                }
                (id, kind) = (None, String::new());
            }
        }
    }
    seen.disorder.push(format!("{path}: the stream never reached its end"));
    seen
}

/// How the senders' attempts went: acknowledged events, and each kind of refusal or failure.
#[derive(Default)]
struct Tally {
    acked: AtomicUsize,
    answers: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn note(&self, what: String) {
        *self.answers.lock().expect("tally").entry(what).or_default() += 1;
    }
}

/// Retries `request` at random nodes until one answers one of `wanted`: that answer. Refusals a
/// failover explains (409 `fenced`, 429, 502, 503, no answer) are tallied and retried.
fn until_taken(
    ports: [u16; NODES],
    dice: &mut Dice,
    (request, body): (&str, &str),
    wanted: &[u16],
    what: &str,
    tally: &Tally,
) -> (u16, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "{what} was never taken");
        // Short: a paused node takes connections into its backlog and never answers.
        match exchange(ports[dice.node()], request, body.as_bytes(), Duration::from_secs(1)) {
            Ok((status, answer)) if wanted.contains(&status) => return (status, answer),
            Ok((status @ (409 | 429 | 502 | 503), answer)) if json_body(&answer)["code"] != "session_state" => {
                tally.note(format!("{status} {}", json_body(&answer)["code"].as_str().unwrap_or("?")));
            }
            Ok((status, answer)) => return (status, answer),
            Err(error) => tally.note(format!("no answer: {:?}", error.kind())),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts its calls (each under its own key, with its first event) and sends every event of
/// them, one round at a time, each to random nodes until one takes it (or, for a call's last
/// event whose first answer was lost, says the call has finished).
fn send(ports: [u16; NODES], token: &str, calls: &[usize], ids: &[OnceLock<u64>], seed: u64, tally: &Tally) {
    let mut dice = Dice(seed);
    let new_call = r#"{"app":"calls"}"#;
    for number in 0..EVENTS {
        for &index in calls {
            if number == 0 {
                let key = format!("Idempotency-Key: call{index}\r\n");
                let request = head("POST", "/v1/sessions", token, "application/json", &key, new_call.len());
                let what = format!("the start of call {index}");
                let (status, answer) = until_taken(ports, &mut dice, (&request, new_call), &[200, 201], &what, tally);
                assert!(status == 201 || status == 200, "{what}: {status} {answer}");
                if status == 200 {
                    tally.note("200 a retried start found its call".into());
                }
                let id = json_body(&answer)["id"].as_u64().expect("id");
                // Sent again, as by a client whose answer was lost, at any node: the same call.
                let (status, again) = until_taken(ports, &mut dice, (&request, new_call), &[200], &what, tally);
                assert_eq!((status, json_body(&again)["id"].as_u64()), (200, Some(id)), "{what} again: {again}");
                ids[index].set(id).expect("started once");
            }
            let id = ids[index].get().expect("started");
            let body = event(index, number);
            let key = format!("Idempotency-Key: call{id}-event{number}\r\n");
            let request = head("POST", &format!("/v1/sessions/{id}/events"), token, "text/plain", &key, body.len());
            let what = format!("event {number} of call {id}");
            match until_taken(ports, &mut dice, (&request, &body), &[202], &what, tally) {
                (202, _) => {}
                (409, answer) if json_body(&answer)["code"] == "session_state" && number == EVENTS - 1 => {
                    tally.note("409 session_state (the last event, already applied)".into());
                }
                (status, answer) => panic!("{what}: {status} {answer}"),
            }
            tally.acked.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(PACE);
        }
    }
}

#[test]
fn three_nodes_under_chaos_apply_every_acknowledged_event_once() {
    let _quiet = crate::fixtures::measuring();
    let began = Instant::now();
    let schema = PgSchema::new("chaos");
    let mut cluster = Cluster::start(&schema.url_with("shards=16"), "chaos");
    cluster.spawn(0);
    let (first, mut epochs) = cluster.acting(None);
    assert_eq!(first, 0);
    let port = cluster.ports[0];
    let admin = |method: &str, path: &str, body: &str| {
        exchange(
            port,
            &head(method, path, ADMIN, "application/json", "", body.len()),
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .expect("answers")
    };
    let tenant = r#"{"name":"bank"}"#;
    let (status, body) = admin("POST", "/v1/tenants", tenant);
    assert_eq!(status, 201, "{body}");
    let token = json_body(&admin("POST", "/v1/tenants/bank/tokens", "").1)["token"].as_str().expect("token").to_owned();
    let app = accumulator();
    let deploy = head("PUT", "/v1/apps/calls", &token, "application/wasm", "", app.len());
    let (status, body) = exchange(port, &deploy, &app, Duration::from_secs(10)).expect("deploys");
    assert_eq!(status, 201, "{body}");
    cluster.spawn(1);
    cluster.spawn(2);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ports = cluster.ports;
    let ids: Arc<Vec<OnceLock<u64>>> = Arc::new((0..SESSIONS).map(|_| OnceLock::new()).collect());
    let indices: Vec<usize> = (0..SESSIONS).collect();
    let senders: Vec<_> = indices
        .chunks(SESSIONS / SENDERS)
        .enumerate()
        .map(|(n, mine)| {
            let (mine, token, tally, ids) = (mine.to_vec(), token.clone(), tally.clone(), ids.clone());
            std::thread::spawn(move || send(ports, &token, &mine, &ids, 0x9e37_79b9 + n as u64, &tally))
        })
        .collect();
    let followers: Vec<_> = (0..SESSIONS)
        .step_by(SESSIONS / STREAMS)
        .map(|index| {
            let (token, stop, ids) = (token.clone(), stop.clone(), ids.clone());
            std::thread::spawn(move || {
                let id = loop {
                    match ids[index].get() {
                        Some(id) => break *id,
                        None => std::thread::sleep(Duration::from_millis(10)),
                    }
                };
                let path = format!("/v1/sessions/{id}/outputs");
                (index, id, follow(ports, &token, &path, 0x5151 + id, &stop))
            })
        })
        .collect();

    // The chaos, each step once the calls made progress since the one before; the first while
    // most calls are still being started.
    let total = SESSIONS * EVENTS;
    let progress = |cluster: &mut Cluster, share: usize| {
        let target = total * share / 100;
        let deadline = Instant::now() + PATIENCE;
        while tally.acked.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the calls made no progress");
            cluster.revive();
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut takeovers = Vec::new();
    let mut acting = 0;
    for (step, share) in [3, 25, 40].into_iter().enumerate() {
        progress(&mut cluster, share);
        let killed = Instant::now();
        cluster.children[acting].as_mut().expect("running").kill().expect("SIGKILL");
        cluster.children[acting].take().expect("running").wait().expect("reaped");
        cluster.spawn(acting);
        let (next, now) = cluster.acting(None);
        takeovers.push(killed.elapsed());
        grown(&epochs, &now, true);
        eprintln!(
            "chaos {step} at {:?}: node {acting} killed, node {next} took over in {:?}",
            began.elapsed(),
            killed.elapsed()
        );
        (acting, epochs) = (next, now);
    }

    // A pause past the lease: another node takes over, and the paused one wakes a zombie.
    progress(&mut cluster, 55);
    let zombie = acting;
    cluster.signal(zombie, "-STOP");
    eprintln!("chaos 3 at {:?}: node {zombie} paused", began.elapsed());
    let (next, now) = cluster.acting(Some(zombie));
    grown(&epochs, &now, true);
    (acting, epochs) = (next, now);
    eprintln!("chaos 3 at {:?}: node {acting} took over", began.elapsed());
    progress(&mut cluster, 58);
    cluster.signal(zombie, "-CONT");
    let woke = Instant::now();
    let status = loop {
        if let Some(status) = cluster.children[zombie].as_mut().expect("running").try_wait().expect("waits") {
            break status;
        }
        assert!(woke.elapsed() < PATIENCE, "the zombie never exited");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(3), "the woken zombie found its shards taken and exited 3: {status:?}");
    cluster.spawn(zombie);
    eprintln!("chaos 3 at {:?}: the zombie exited 3", began.elapsed());

    // Every connection of the cluster to the database killed at once.
    progress(&mut cluster, 70);
    let killed = crate::cluster::kill_connections(&schema);
    eprintln!("chaos 4 at {:?}: {killed} database connections killed", began.elapsed());
    progress(&mut cluster, 85);
    let (_, now) = cluster.acting(None);
    grown(&epochs, &now, false);
    epochs = now;

    for sender in senders {
        sender.join().expect("every event acknowledged");
    }
    eprintln!("chaos: every event acknowledged at {:?}", began.elapsed());
    // Every call finishes with the result its events make.
    let (acting, now) = cluster.acting(None);
    grown(&epochs, &now, false);
    let port = cluster.ports[acting];
    let calls: Vec<(usize, u64)> = ids.iter().map(|id| *id.get().expect("started")).enumerate().collect();
    let (status, page) =
        exchange(port, &head("GET", "/v1/sessions?limit=1000", &token, "", "", 0), b"", Duration::from_secs(10))
            .expect("the sessions");
    let mut listed: Vec<u64> = json_body(&page)["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{status} {page}"))
        .iter()
        .map(|s| s["id"].as_u64().expect("id"))
        .collect();
    listed.sort_unstable();
    let mut started: Vec<u64> = calls.iter().map(|(_, id)| *id).collect();
    started.sort_unstable();
    assert_eq!(listed, started, "every call was started once, however often its start was sent");
    for &(index, id) in &calls {
        let deadline = Instant::now() + PATIENCE;
        let session = format!("/v1/sessions/{id}");
        let view = loop {
            let view = exchange(port, &head("GET", &session, &token, "", "", 0), b"", Duration::from_secs(10))
                .map(|(_, body)| json_body(&body))
                .unwrap_or_default();
            if view["status"] == "done" || Instant::now() > deadline {
                break view;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(view["status"], "done", "call {id}: {view}");
        assert_eq!(view["outputs"].as_u64(), Some(EVENTS as u64 + 1), "call {id}: {view}");
        let all = (0..EVENTS).map(|n| event(index, n)).collect::<String>();
        let (status, stream) = exchange(
            port,
            &head("GET", &format!("{session}/outputs"), &token, "", "", 0),
            b"",
            Duration::from_secs(10),
        )
        .expect("the outputs");
        assert_eq!(status, 200, "{stream}");
        let data: Vec<String> =
            stream.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_owned()).collect();
        let expected: Vec<String> =
            (0..EVENTS).map(|n| format!("\"{}\"", event(index, n))).chain([format!("\"{all}\"")]).collect();
        assert_eq!(
            data.get(..EVENTS + 1),
            Some(&expected[..]),
            "call {id}: every event once, in order, then all of them:\n{stream}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut reconnects = 0;
    for follower in followers {
        let (index, id, seen) = follower.join().expect("follows");
        assert!(seen.disorder.is_empty(), "call {id}: {:?}", seen.disorder);
        let numbers: Vec<u64> = seen.outputs.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (1..=EVENTS as u64 + 1).collect::<Vec<_>>(), "call {id}");
        assert_eq!(seen.outputs[0].1, format!("\"{}\"", event(index, 0)), "call {id}");
        reconnects += seen.reconnects;
    }
    cluster.revive();
    let unexpected: Vec<_> = cluster.exits.iter().filter(|(_, status)| status.code() != Some(3)).collect();
    assert!(unexpected.is_empty(), "a node exited other than by losing its shards: {unexpected:?}");
    eprintln!(
        "chaos: {} events acknowledged; takeovers after SIGKILL {takeovers:?}; {reconnects} stream connections; \
         other answers {:?}; nodes that exited 3 on their own: {}",
        tally.acked.load(Ordering::Relaxed),
        tally.answers.lock().expect("tally"),
        cluster.exits.len()
    );
}
