//! The `turnstile` binary as a tenant developer uses it: `inspect` and `run`, including the
//! compile cache surviving from one process to the next.

use crate::fixtures::example;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Writes an example to a file of its own for the CLI to read.
fn example_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turnstile-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, example(name)).expect("write example");
    path
}

fn turnstile(args: &[&str], stdin: &str, cache: Option<&PathBuf>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    match cache {
        Some(dir) => command.arg("--cache-dir").arg(dir),
        None => command.arg("--no-cache"),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turnstile starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("turnstile ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inspect_lists_actions_imports_and_memory_or_the_refusal() {
    let out = turnstile(&["inspect", example_file("hostile").to_str().expect("utf-8")], "", None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in ["spin", "memory_bomb", "deep_recursion", "turnstile::emit", "memory"] {
        assert!(stdout.contains(needle), "inspect output lacks `{needle}`:\n{stdout}");
    }

    let junk = std::env::temp_dir().join(format!("turnstile-junk-{}.wasm", std::process::id()));
    std::fs::write(&junk, b"MZ not wasm").expect("write");
    let out = turnstile(&["inspect", junk.to_str().expect("utf-8")], "", None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("refused [not_wasm]"), "{}", text(&out.stderr));
}

#[test]
fn run_walks_a_session_from_stdin_and_reuses_compiled_code_in_a_new_process() {
    let cache = std::env::temp_dir().join(format!("turnstile-cli-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let app = example_file("ivr_menu");
    let args = ["run", app.to_str().expect("utf-8"), "--kv", "balance:demo=42 EUR"];

    let out = turnstile(&args, "1\n9\n", Some(&cache));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Your balance is 42 EUR."), "{stdout}");
    assert!(stdout.contains("done"), "{stdout}");
    assert!(text(&out.stderr).contains("Compiled"), "{}", text(&out.stderr));

    // The same bytes in a new process: no compile, the cache serves them.
    let out = turnstile(&args, "/timeout\n9\n", Some(&cache));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("DiskCache"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Sorry, I didn't hear anything."), "{}", text(&out.stdout));
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn run_exits_non_zero_with_the_reason_when_the_session_fails() {
    let app = example_file("hostile");
    let out = turnstile(&["run", app.to_str().expect("utf-8"), "--entry", "spin"], "", None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("out_of_fuel"), "{}", text(&out.stderr));

    let out = turnstile(&["run", app.to_str().expect("utf-8"), "--entry", "nope"], "", None);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no action `nope`"), "{}", text(&out.stderr));
}

#[test]
fn new_makes_a_script_whose_test_passes_and_whose_module_answers_a_call() {
    let dir = crate::durability::temp_dir("new");
    std::fs::create_dir_all(&dir).expect("dir");
    let dir_text = dir.to_str().expect("utf-8 path");
    let made = turnstile(&["new", "hello-line", "--dir", dir_text], "", None);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let again = turnstile(&["new", "hello-line", "--dir", dir_text], "", None);
    assert!(!again.status.success() && text(&again.stderr).contains("exists already"));
    let bad = turnstile(&["new", "Hello Line", "--dir", dir_text], "", None);
    assert!(!bad.status.success() && text(&bad.stderr).contains("can't name a script"));

    // Its own test passes, and it builds to Wasm (a target directory shared across runs).
    let project = dir.join("hello-line");
    let target_dir = turnstile::examples::repository_root().join("target").join("guest-new");
    let cargo = |args: &[&str]| {
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args(args)
            .output()
            .expect("cargo runs")
    };
    let tested = cargo(&["test", "--quiet"]);
    assert!(tested.status.success(), "{}{}", text(&tested.stdout), text(&tested.stderr));
    assert!(text(&tested.stdout).contains("1 passed"), "{}", text(&tested.stdout));
    let built = cargo(&["build", "--quiet", "--release", "--target", "wasm32-unknown-unknown"]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let wasm = target_dir.join("wasm32-unknown-unknown/release/hello_line.wasm");
    // A call: press 1, and the caller is transferred.
    let call = turnstile(&["run", wasm.to_str().expect("utf-8 path")], "1\n", None);
    assert!(call.status.success(), "{}", text(&call.stderr));
    assert!(text(&call.stdout).contains("Transferring you to an agent."), "{}", text(&call.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_demo_splits_its_rush_hour_by_weight_and_says_so() {
    let _measuring = crate::fixtures::measuring();
    // A debug build beside the rest of the suite on two cores is a noisy place for a 5 s rush
    // hour (short actions are charged their wall time, which the machine can stretch): a miss
    // makes the demo say so and exit 1. Once more, then: a demo that ignored the weights would
    // miss both runs.
    let mut printed = String::new();
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .args(["demo", "--sessions", "200"])
            .output()
            .expect("turnstile runs");
        printed = text(&out.stdout);
        let shares: Vec<&str> = printed.lines().filter(|l| l.contains("of the cost, weight share")).collect();
        assert_eq!(shares.len(), 4, "{printed}\n{}", text(&out.stderr));
        assert!(printed.contains("mallory") && printed.contains("out_of_fuel"), "{printed}");
        let within = shares.iter().all(|l| l.ends_with("within ±10%"));
        // The exit status says the same as the summary.
        assert_eq!(out.status.success(), within, "{printed}\n{}", text(&out.stderr));
        if within {
            return;
        }
    }
    panic!("the rush hour's shares missed their weights in both runs:\n{printed}");
}
