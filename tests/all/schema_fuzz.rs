//! The OpenAPI document against a real `turnstile serve`: schemathesis (a schema-driven fuzzer,
//! from PyPI) generates requests from the served document — valid ones, invalid ones, and
//! sequences that follow the document's links (start a session, then read it, send it events,
//! follow its outputs, cancel it) — and checks every answer. No answer may be a server error,
//! carry a status, content type, header or body the document does not describe for it.
//!
//! schemathesis is installed on first use into `target/tools/schemathesis` (a Python venv);
//! `TURNSTILE_SCHEMATHESIS` may name an `st` to use instead.

use crate::console::{Server, markup_app, tenant};
use crate::durability::temp_dir;
use crate::serve::{ADMIN, request, start_server};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// The version the test was written against (its checks' names are part of the command line).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,negative_data_rejection,unsupported_method,missing_required_header,ignored_auth,use_after_free,ensure_resource_availability,\
                      response_headers_conformance,response_schema_conformance";

/// The `st` command, installed into a venv under `target/` if it is not there yet.
fn schemathesis() -> PathBuf {
    if let Some(st) = std::env::var_os("TURNSTILE_SCHEMATHESIS") {
        return PathBuf::from(st);
    }
    let venv = turnstile::examples::repository_root().join("target/tools/schemathesis");
    let st = venv.join("bin/st");
    if !st.exists() {
        let run = |command: &mut Command| {
            let output = command.output().expect("python3 runs (the schema fuzz test needs Python 3 with venv)");
            assert!(
                output.status.success(),
                "installing schemathesis: {:?}\n{}",
                command,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]));
    }
    st
}

/// Runs schemathesis over the operations of `tags` with `token`, and fails the test with its
/// report if it found anything.
fn fuzz(st: &PathBuf, port: u16, token: &str, tags: &[&str]) {
    let mut command = Command::new(st);
    command
        .current_dir(std::env::temp_dir())
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "25", "--seed", "7", "--request-timeout", "20"])
        .args(["--generation-database", "none", "--no-color"]);
    for tag in tags {
        command.args(["--include-tag", tag]);
    }
    let output = command.output().expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis over {tags:?} found problems:\n{report}");
    assert!(report.contains("passed"), "schemathesis ran nothing over {tags:?}:\n{report}");
}

#[test]
fn a_schema_driven_fuzzer_finds_no_server_error_and_no_answer_outside_the_document() {
    let st = schemathesis();
    // The fuzzer keeps both cores busy for a few seconds: not beside a test that measures.
    let _measuring = crate::fixtures::measuring();
    let dir = temp_dir("schema-fuzz");
    let (server, port) = start_server(&[OsStr::new("--data-dir"), dir.as_os_str()]);
    let _server = Server(server);
    // A tenant with an app under the name the document's example gives (`ivr`); its sessions
    // finish at once, so a fuzzed request for their outputs gets a stream that ends.
    let token = tenant(port, "fuzzed", 1, &[("ivr", markup_app())]);
    // The tenant's run first: the operator's may delete the tenant (it follows the tenant list
    // to the delete route, as a client may).
    fuzz(&st, port, &token, &["tenant"]);
    fuzz(&st, port, ADMIN, &["operator", "probes", "console"]);
    let (status, body) = request(port, "GET", "/healthz", "", "text/plain", b"");
    assert_eq!((status, body.trim()), (200, "ok"), "the server still answers");
}
