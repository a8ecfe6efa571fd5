//! A cluster's `turnstile serve` processes on one PostgreSQL schema: a standby taking over the
//! calls of a killed node, and a node paused past its lease coming back a zombie that writes
//! nothing and exits 3 (the store-level leases and fencing are in `cluster.rs`; the chaos test of
//! three nodes in `failover.rs`).

use crate::store::PgSchema;
use std::time::{Duration, Instant};

/// Two `turnstile serve` processes on one database: the second waits as a standby, the first
/// is killed with SIGKILL, the second takes the shards over once the leases run out (its timer
/// re-armed from the stored wait), resumes the waiting call and finishes it. Prints the takeover time (the figure is `turnstile bench`'s
/// business, not a test's).
#[test]
fn a_standby_server_takes_over_the_calls_of_a_killed_one() {
    use crate::serve::{ADMIN, json_body, request, start_server, wait_until};
    use std::ffi::OsStr;
    let schema = PgSchema::new("failover");
    let store = OsStr::new(&schema.url);
    let (dir_a, dir_b) = (crate::durability::temp_dir("failover-a"), crate::durability::temp_dir("failover-b"));
    let (mut active, port) = start_server(&[OsStr::new("--store"), store, OsStr::new("--data-dir"), dir_a.as_os_str()]);
    wait_until("the first node to act", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    let (status, _) = request(port, "POST", "/v1/tenants", ADMIN, "application/json", br#"{"name":"bank"}"#);
    assert_eq!(status, 201);
    let (_, body) = request(port, "POST", "/v1/tenants/bank/tokens", ADMIN, "application/json", b"");
    let token = json_body(&body)["token"].as_str().expect("token").to_owned();
    // A call that waits for the customer (ten minutes at most), answers, and ends.
    let app = crate::durability::wait_app(Some(600_000));
    assert_eq!(request(port, "PUT", "/v1/apps/call", &token, "application/wasm", &app).0, 201);
    let (status, body) = request(port, "POST", "/v1/sessions", &token, "application/json", br#"{"app":"call"}"#);
    assert_eq!(status, 201, "{body}");
    let id = json_body(&body)["id"].as_u64().expect("id");
    let session = format!("/v1/sessions/{id}");
    wait_until("the call to wait", || {
        json_body(&request(port, "GET", &session, &token, "", b"").1)["status"] == "waiting"
    });

    // The standby answers while it waits: it is not ready, and it forwards every other request
    // to the acting node (whose address it read beside the leases), output streams included.
    let (mut standby, standby_port) =
        start_server(&[OsStr::new("--store"), store, OsStr::new("--data-dir"), dir_b.as_os_str()]);
    let (status, body) = request(standby_port, "GET", "/readyz", "", "", b"");
    assert_eq!((status, json_body(&body)["code"].as_str()), (503, Some("standby")), "{body}");
    // (`standby` with Retry-After until it has read the lease table once.)
    wait_until("the standby to forward", || {
        json_body(&request(standby_port, "GET", &session, &token, "", b"").1)["status"] == "waiting"
    });
    let cluster = json_body(&request(standby_port, "GET", "/v1/cluster", ADMIN, "", b"").1);
    assert_eq!(cluster["shards"][0]["address"], format!("http://127.0.0.1:{port}"), "{cluster}");
    // A request some standby forwarded already is not forwarded again (two standbys with an old
    // view of the holder would bounce it between them).
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", standby_port)).expect("connects");
    std::io::Write::write_all(
        &mut stream,
        format!("GET {session} HTTP/1.0\r\nAuthorization: Bearer {token}\r\nTurnstile-Forwarded-By: x\r\n\r\n")
            .as_bytes(),
    )
    .expect("sends");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("reads");
    assert!(answer.starts_with("HTTP/1.0 503") && answer.contains("\"standby\""), "{answer}");
    // A holder of an older build (one from before the protocol stamp leaves the stamp of an
    // older epoch behind when it takes a shard) is not forwarded a keyed start, which it would
    // ignore (a retry could start the call twice); everything else still is.
    let mut raw = crate::cluster::raw(&schema);
    raw.batch_execute("UPDATE leases SET protocol_epoch = epoch - 1").expect("the stamp of an older build");
    let keyed = "application/json\r\nIdempotency-Key: upgrade"; // (one more header line)
    wait_until("the standby to see an older holder", || {
        // (An app that does not exist: forwarded, it starts nothing.)
        let (status, body) = request(standby_port, "POST", "/v1/sessions", &token, keyed, br#"{"app":"none"}"#);
        status == 503 && json_body(&body)["code"] == "holder_outdated"
    });
    let (status, body) = request(standby_port, "POST", "/v1/sessions", &token, keyed, br#"{"app":"call"}"#);
    assert_eq!((status, json_body(&body)["code"].as_str()), (503, Some("holder_outdated")), "{body}");
    assert!(json_body(&body)["message"].as_str().is_some_and(|m| m.contains("cluster protocol 1")), "{body}");
    assert_eq!(json_body(&request(standby_port, "GET", &session, &token, "", b"").1)["status"], "waiting");
    // Upgraded (stamped with this build's protocol), it is given keyed starts again.
    raw.batch_execute("UPDATE leases SET protocol_epoch = epoch").expect("this build's stamp");
    wait_until("the standby to see the upgraded holder", || {
        request(standby_port, "POST", "/v1/sessions", &token, keyed, br#"{"app":"none"}"#).0 == 404
    });

    active.kill().expect("SIGKILL");
    let killed = Instant::now();
    active.wait().expect("reaped");
    let port = standby_port;
    wait_until("the standby to take over", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    eprintln!("takeover after SIGKILL: {:.2} s (lease 3 s)", killed.elapsed().as_secs_f64());
    let view = json_body(&request(port, "GET", &session, &token, "", b"").1);
    assert_eq!(view["status"], "waiting", "{view}");
    let (status, body) = request(port, "POST", &format!("{session}/events"), &token, "text/plain", b"\"taken over\"");
    assert_eq!(status, 202, "{body}");
    let outputs = request(port, "GET", &format!("{session}/outputs"), &token, "", b"").1;
    assert!(outputs.contains("taken over") && outputs.contains("event: end"), "{outputs}");
    let view = json_body(&request(port, "GET", &session, &token, "", b"").1);
    assert_eq!(view["status"], "done", "{view}");
    let cluster = json_body(&request(port, "GET", "/v1/cluster", ADMIN, "", b"").1);
    let node = cluster["node"].as_str().expect("a node").to_owned();
    assert_eq!(cluster["holds_all_shards"], true, "{cluster}");
    let shards = cluster["shards"].as_array().expect("shards");
    assert!(shards.iter().all(|s| s["owner"] == node.as_str() && s["epoch"].as_u64() >= Some(2)), "{cluster}");

    // A graceful stop hands the shards over at once: the next standby does not wait for the
    // leases to run out.
    let dir_c = crate::durability::temp_dir("failover-c");
    let (mut next, next_port) =
        start_server(&[OsStr::new("--store"), store, OsStr::new("--data-dir"), dir_c.as_os_str()]);
    wait_until("the next standby to wait", || request(next_port, "GET", "/readyz", "", "", b"").0 == 503);
    let terminated = Instant::now();
    let killed = std::process::Command::new("kill").args(["-TERM", &standby.id().to_string()]).status();
    assert!(killed.expect("kill runs").success());
    assert!(standby.wait().expect("reaped").success(), "a SIGTERM ends the server cleanly");
    let port = next_port;
    wait_until("the next standby to take over", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    eprintln!("hand-off after SIGTERM: {:.2} s", terminated.elapsed().as_secs_f64());
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_turnstile"))
        .args(["cluster", "status", "--server", &format!("http://127.0.0.1:{port}"), "--token", ADMIN])
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{printed}");
    assert!(
        printed.contains(": 64 of 64 shards") && !printed.contains(&node),
        "the new node holds them all:\n{printed}"
    );
    // Its metrics say so too: every shard held, every one taken over from the node before.
    let (status, metrics) = request(port, "GET", "/metrics", ADMIN, "text/plain", b"");
    assert_eq!(status, 200);
    for line in
        ["turnstile_cluster_shards 64", "turnstile_cluster_shards_held 64", "turnstile_cluster_shards_taken_over 64"]
    {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    next.kill().expect("stops");
    next.wait().expect("reaped");
}

/// A host paused past its lease (SIGSTOP: a long GC pause, a frozen VM) comes back a zombie: a
/// standby has taken its shards over meanwhile. Its first renewal finds them taken, and it
/// exits 3 (to be started again as a standby) without writing anything: the call the standby
/// finished stays finished, with one output.
#[test]
fn a_paused_server_that_lost_its_shards_exits_and_writes_nothing() {
    use crate::serve::{ADMIN, json_body, request, start_server, wait_until};
    use std::ffi::OsStr;
    let schema = PgSchema::new("zombie");
    let config = crate::durability::temp_dir("zombie-config").join("turnstile.toml");
    std::fs::write(&config, "[cluster]\nlease = \"1s\"\n").expect("config");
    let (dir_a, dir_b) = (crate::durability::temp_dir("zombie-a"), crate::durability::temp_dir("zombie-b"));
    let dir_c = crate::durability::temp_dir("zombie-c");
    let args = |dir: &std::path::Path| {
        [
            OsStr::new("--config").to_owned(),
            config.clone().into_os_string(),
            "--store".into(),
            schema.url.clone().into(),
            "--data-dir".into(),
            dir.as_os_str().to_owned(),
        ]
    };
    let a_args = args(&dir_a);
    let (mut zombie, port) = start_server(&a_args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    wait_until("the first node to act", || request(port, "GET", "/readyz", "", "", b"").0 == 200);
    let (status, _) = request(port, "POST", "/v1/tenants", ADMIN, "application/json", br#"{"name":"bank"}"#);
    assert_eq!(status, 201);
    let (_, body) = request(port, "POST", "/v1/tenants/bank/tokens", ADMIN, "application/json", b"");
    let token = json_body(&body)["token"].as_str().expect("token").to_owned();
    let app = crate::durability::wait_app(None);
    assert_eq!(request(port, "PUT", "/v1/apps/call", &token, "application/wasm", &app).0, 201);
    let (status, body) = request(port, "POST", "/v1/sessions", &token, "application/json", br#"{"app":"call"}"#);
    assert_eq!(status, 201, "{body}");
    let session = format!("/v1/sessions/{}", json_body(&body)["id"].as_u64().expect("id"));
    wait_until("the call to wait", || {
        json_body(&request(port, "GET", &session, &token, "", b"").1)["status"] == "waiting"
    });

    let (b_args, c_args) = (args(&dir_b), args(&dir_c));
    let (mut standby, port_b) = start_server(&b_args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    let (mut third, port_c) = start_server(&c_args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    wait_until("both standbys to forward", || {
        [port_b, port_c]
            .iter()
            .all(|&p| json_body(&request(p, "GET", &session, &token, "", b"").1)["status"] == "waiting")
    });
    let pause = |signal: &str| {
        let sent = std::process::Command::new("kill").args([signal, &zombie.id().to_string()]).status();
        assert!(sent.expect("kill runs").success());
    };
    // An output stream forwarded to the node that is about to pause, flowing (headers read).
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port_c)).expect("connects");
    let follow = format!("GET {session}/outputs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    std::io::Write::write_all(&mut stream, follow.as_bytes()).expect("sends");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).expect("the stream's head");
    assert_eq!(&head, b"HTTP/1.1 200", "the stream is open");
    let streamed = std::thread::spawn(move || std::io::Read::read_to_end(&mut stream, &mut Vec::new()));
    pause("-STOP");
    // Requests forwarded to the paused node meanwhile are not left hanging on it once another
    // node acts: both standbys (the one that takes over, and the other) answer them `standby`.
    let hanging: Vec<_> = [port_b, port_c]
        .into_iter()
        .map(|p| {
            let (token, session) = (token.clone(), session.clone());
            std::thread::spawn(move || request(p, "GET", &session, &token, "", b""))
        })
        .collect();
    let acting = |p: u16| request(p, "GET", "/readyz", "", "", b"").0 == 200;
    wait_until("a standby to take over", || acting(port_b) || acting(port_c));
    for asked in hanging {
        let (status, body) = asked.join().expect("answered while the zombie is still paused");
        // Or, on a loaded machine, sent only once that standby acted: then it answers itself.
        let answer = json_body(&body);
        let answered = (status, answer["code"].as_str());
        assert!(matches!(answered, (503, Some("standby")) | (200, None)), "{answered:?}: {body}");
    }
    // And the stream flowing from it ends, for its client to resume from the node acting now.
    streamed.join().expect("joins").expect("the stream ends while the zombie is still paused");
    let port = if acting(port_b) { port_b } else { port_c };
    let (status, body) = request(port, "POST", &format!("{session}/events"), &token, "text/plain", b"\"answered\"");
    assert_eq!(status, 202, "{body}");
    wait_until("the call to end", || json_body(&request(port, "GET", &session, &token, "", b"").1)["status"] == "done");

    // The zombie wakes up: it finds its leases taken and exits 3.
    pause("-CONT");
    let (exited, code) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(zombie.wait().expect("reaped")));
    let status = code.recv_timeout(Duration::from_secs(30)).expect("the zombie exits");
    assert_eq!(status.code(), Some(3), "{status:?}");
    let view = json_body(&request(port, "GET", &session, &token, "", b"").1);
    assert_eq!((view["status"].as_str(), view["outputs"].as_u64()), (Some("done"), Some(1)), "{view}");
    let cluster = json_body(&request(port, "GET", "/v1/cluster", ADMIN, "", b"").1);
    assert_eq!(cluster["holds_all_shards"], true, "{cluster}");
    for node in [&mut standby, &mut third] {
        node.kill().expect("stops");
        node.wait().expect("reaped");
    }
}
