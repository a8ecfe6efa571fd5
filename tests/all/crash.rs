//! The crash test: a real `turnstile drive` process on SQLite is driven with many sessions and
//! customer events and killed with SIGKILL at random moments, several times, and restarted. The
//! end state must equal that of a crash-free run of the same inputs: no session lost, every
//! acknowledged event applied exactly once (an event applied twice, or lost, changes the
//! conversation), no output lost or released twice.

use crate::durability::temp_dir;
use crate::fixtures::example;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One `turnstile drive` process.
struct Driven {
    process: Arc<Mutex<Child>>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driven {
    fn start(data_dir: &Path) -> Driven {
        let mut process = Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .arg("drive")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnstile drive starts");
        let stdin = process.stdin.take().expect("stdin");
        let stdout = BufReader::new(process.stdout.take().expect("stdout"));
        Driven { process: Arc::new(Mutex::new(process)), stdin, stdout }
    }

    /// Sends a command and reads its reply, or `None` when the process died first.
    fn call(&mut self, command: &Value) -> Option<Value> {
        writeln!(self.stdin, "{command}").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).expect("replies are JSON")),
            _ => None,
        }
    }

    fn must(&mut self, command: &Value) -> Value {
        let reply = self.call(command).expect("the process is alive");
        assert_eq!(reply["ok"], true, "{command} → {reply}");
        reply
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let mut process = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = process.kill();
        let _ = process.wait();
    }
}

/// What each customer of the order bot says, by session number.
fn script(n: usize) -> &'static [&'static str] {
    match n % 3 {
        0 => &["pizza", "2", "yes"],
        1 => &["tea", "lots", "3", "no", "cake", "1", "yes"],
        _ => &["salad", "0", "5", "yes"],
    }
}

const SESSIONS: usize = 30;

/// Runs the whole workload in `data_dir`, killing the process `kills` times at random moments,
/// and returns the final dump of every session.
fn run(data_dir: &Path, app: &Path, kills: usize, seed: u64) -> Value {
    let mut driven = Driven::start(data_dir);
    driven.must(&json!({ "op": "tenant", "name": "shop" }));
    driven.must(&json!({ "op": "deploy", "tenant": "shop", "app": "bot", "path": app }));
    let sessions: Vec<u64> = (0..SESSIONS)
        .map(|_| {
            let reply = driven.must(&json!({ "op": "start", "tenant": "shop", "app": "bot", "entry": "start" }));
            reply["session"].as_u64().expect("an id")
        })
        .collect();

    // The kills: after the command that sends the k-th event (k drawn at random), wait a
    // random few milliseconds and SIGKILL the process, whatever it is doing then: appending the
    // event, running actions, committing a group of checkpoints.
    let total: usize = (0..SESSIONS).map(|n| script(n).len()).sum();
    let mut rng = seed;
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kill_at: Vec<usize> =
        (0..kills).map(|_| 10 + usize::try_from(random() % 100).expect("small") * (total - 20) / 100).collect();
    kill_at.sort_unstable();
    let mut sent = 0;
    let mut killed = 0;

    let mut next = vec![0usize; SESSIONS];
    while next.iter().enumerate().any(|(n, &i)| i < script(n).len()) {
        for (n, &session) in sessions.iter().enumerate() {
            let Some(event) = script(n).get(next[n]) else { continue };
            let command = json!({ "op": "deliver", "tenant": "shop", "session": session, "event": event, "key": format!("{session}-{}", next[n]) });
            let reply = if kill_at.get(killed) == Some(&sent) {
                killed += 1;
                let _ = writeln!(driven.stdin, "{command}").and_then(|()| driven.stdin.flush());
                std::thread::sleep(Duration::from_micros(random() % 3000));
                let _ = driven.process.lock().unwrap_or_else(PoisonError::into_inner).kill();
                None
            } else {
                driven.call(&command)
            };
            sent += 1;
            match reply {
                Some(reply) if reply["ok"] == true => next[n] += 1,
                // The inbox or a queue is full: this event waits for the next round.
                Some(reply) if reply["code"] == "queue_full" => {}
                Some(reply) => panic!("{command} → {reply}"),
                None => {
                    // Killed: start again on the same data directory and send the same event
                    // (same key) again. It may already be durable: then it is a duplicate.
                    driven = Driven::start(data_dir);
                }
            }
        }
    }
    assert_eq!(killed, kills, "every planned kill happened");
    driven.must(&json!({ "op": "settle" }));
    driven.must(&json!({ "op": "dump" }))["sessions"].clone()
}

#[test]
fn sessions_survive_sigkill_with_every_event_applied_once_and_every_output_released_once() {
    let dir = temp_dir("crash");
    let app: PathBuf = dir.join("order_bot.wasm");
    std::fs::write(&app, example("order_bot")).expect("write the app");

    let reference = run(&dir.join("reference"), &app, 0, 1);
    let crashed = run(&dir.join("crashed"), &app, 4, 0x9E37_79B9_7F4A_7C15);

    let reference = reference.as_array().expect("sessions");
    let crashed = crashed.as_array().expect("sessions");
    assert_eq!(crashed.len(), SESSIONS, "no session lost");
    assert_eq!(reference.len(), SESSIONS);
    for (want, got) in reference.iter().zip(crashed) {
        assert_eq!(got["session"], want["session"]);
        assert!(matches!(want["status"].as_object().map(|s| s.contains_key("done")), Some(true)), "{want}");
        assert_eq!(got["status"], want["status"], "final status of session {}", want["session"]);
        assert_eq!(got["state"], want["state"], "final state of session {}", want["session"]);
        assert_eq!(got["outputs"], want["outputs"], "outputs of session {}: none lost, none twice", want["session"]);
        // Time and the cost derived from it differ between runs; what the actions did does not.
        for counter in ["actions", "failures", "fuel", "outputs"] {
            assert_eq!(got["counters"][counter], want["counters"][counter], "{counter} of session {}", want["session"]);
        }
    }
}
