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
