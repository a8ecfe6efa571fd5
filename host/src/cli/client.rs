//! The client: tenants and operators talk to a `turnstile serve` from the command line.
//! `--server` (or `TURNSTILE_URL`) says where, `--token` (or `TURNSTILE_TOKEN`) who; a refusal
//! prints the server's code and message and exits 1.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;
use ureq::Agent;

/// Where the server is and who is asking.
pub(crate) struct Client {
    server: String,
    token: String,
    agent: Agent,
}

/// One answer: its status and body.
struct Answer {
    status: u16,
    body: String,
}

impl Client {
    pub(crate) fn new(server: &str, token: Option<String>) -> Result<Client> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!("give a token: --token or TURNSTILE_TOKEN (a tenant's, or the admin token for operator commands)");
        };
        let agent: Agent = Agent::config_builder().http_status_as_error(false).build().into();
        Ok(Client { server: server.trim_end_matches('/').to_owned(), token, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn answer(&self, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Answer> {
        let mut response = response.with_context(|| format!("reaching the server at {}", self.server))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().context("reading the server's answer")?;
        Ok(Answer { status, body })
    }

    fn get(&self, path: &str) -> Result<Answer> {
        self.answer(self.agent.get(self.url(path)).header("Authorization", self.auth()).call())
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Answer> {
        self.send_keyed(method, path, content_type, body, None)
    }

    /// Sends `body` under an idempotency key, if one is given: a retry with it is applied once.
    fn send_keyed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        key: Option<&str>,
    ) -> Result<Answer> {
        let url = self.url(path);
        let mut request = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.answer(request.header("Authorization", self.auth()).header("Content-Type", content_type).send(body))
    }
}

/// The JSON of a successful answer, or the server's refusal as an error.
fn json_of(answer: Answer) -> Result<Value> {
    let value: Value = serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body.clone()));
    if (200..300).contains(&answer.status) {
        return Ok(value);
    }
    match (value["code"].as_str(), value["message"].as_str()) {
        (Some(code), Some(message)) => bail!("{code}: {message}"),
        _ => bail!("the server answered {}: {}", answer.status, answer.body.trim()),
    }
}

fn print(value: &Value) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(ExitCode::SUCCESS)
}

/// `turnstile deploy APP FILE.wasm`.
pub(crate) fn deploy(client: &Client, app: &str, module: &Path) -> Result<ExitCode> {
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    print(&json_of(client.send("PUT", &format!("/v1/apps/{app}"), "application/wasm", &bytes)?)?)
}

/// `turnstile apps`.
pub(crate) fn apps(client: &Client) -> Result<ExitCode> {
    print(&json_of(client.get("/v1/apps")?)?)
}

/// `turnstile start APP [--entry E] [--input TEXT] [--key K]`: prints the session's id (the one
/// the key started before, if it did).
pub(crate) fn start(client: &Client, app: &str, entry: &str, input: &str, key: Option<&str>) -> Result<ExitCode> {
    let body = json!({ "app": app, "entry": entry, "input": input }).to_string();
    let session = json_of(client.send_keyed("POST", "/v1/sessions", "application/json", body.as_bytes(), key)?)?;
    println!("{}", session["id"]);
    Ok(ExitCode::SUCCESS)
}

/// `turnstile send SESSION EVENT [--key K]`.
pub(crate) fn send(client: &Client, session: u64, event: &str, key: Option<&str>) -> Result<ExitCode> {
    let path = format!("/v1/sessions/{session}/events");
    print(&json_of(client.send_keyed("POST", &path, "text/plain", event.as_bytes(), key)?)?)
}

/// `turnstile sessions [--after ID] [--limit N]`: one line a session, then the cursor of the
/// next page if there is one.
pub(crate) fn sessions(client: &Client, after: u64, limit: usize) -> Result<ExitCode> {
    let page = json_of(client.get(&format!("/v1/sessions?after={after}&limit={limit}"))?)?;
    for session in page["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:>10}  {:<24} {:<10} {} outputs",
            session["id"],
            session["app"].as_str().unwrap_or(""),
            session["status"].as_str().unwrap_or(""),
            session["outputs"]
        );
    }
    if let Some(next) = page["next_after"].as_u64() {
        println!("more: --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `turnstile session SESSION`: its status, step, counters and failure.
pub(crate) fn session(client: &Client, session: u64) -> Result<ExitCode> {
    print(&json_of(client.get(&format!("/v1/sessions/{session}"))?)?)
}

/// `turnstile tail SESSION`: prints each output as it is released, and the final status at the
/// end; exits 0 when the session ended done, 1 otherwise.
pub(crate) fn tail(client: &Client, session: u64) -> Result<ExitCode> {
    let url = client.url(&format!("/v1/sessions/{session}/outputs"));
    let mut response = client
        .agent
        .get(url)
        .header("Authorization", client.auth())
        .call()
        .with_context(|| format!("reaching the server at {}", client.server))?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        json_of(Answer { status, body })?;
    }
    let mut event = String::new();
    for line in BufReader::new(response.body_mut().as_reader()).lines() {
        let line = line.context("reading the stream")?;
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data = data.trim();
            if event == "end" {
                let end: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                println!("end: {}", end["status"].as_str().unwrap_or("unknown"));
                return Ok(if end["status"] == "done" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            println!("{data}");
        }
    }
    bail!("the stream ended before the session did (the server shut down?): run `tail` again to resume")
}

/// Operator: `turnstile tenants` lists them, `turnstile tenants NAME` creates one.
pub(crate) fn tenants(client: &Client, create: Option<&str>) -> Result<ExitCode> {
    match create {
        Some(name) => {
            let body = json!({ "name": name }).to_string();
            print(&json_of(client.send("POST", "/v1/tenants", "application/json", body.as_bytes())?)?)
        }
        None => print(&json_of(client.get("/v1/tenants")?)?),
    }
}

/// Operator: `turnstile cluster status`: the shard leases, summed up per node (with the address
/// it answers at and the cluster protocol its build speaks), then the JSON.
pub(crate) fn cluster_status(client: &Client) -> Result<ExitCode> {
    let cluster = json_of(client.get("/v1/cluster")?)?;
    let shards = cluster["shards"].as_array().cloned().unwrap_or_default();
    let mut owners: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for shard in &shards {
        let protocol = shard["protocol"].as_u64().unwrap_or(1);
        let owner = match (shard["owner"].as_str(), shard["address"].as_str()) {
            (Some(owner), Some(address)) => format!("{owner} at {address} (protocol {protocol})"),
            (Some(owner), None) => format!("{owner} (protocol {protocol})"),
            (None, _) => "(nobody)".to_owned(),
        };
        *owners.entry(owner).or_default() += 1;
    }
    println!(
        "store: {}; this node: {}",
        cluster["store"].as_str().unwrap_or("?"),
        cluster["node"].as_str().unwrap_or("-")
    );
    for (owner, count) in &owners {
        println!("  {owner}: {count} of {} shards", shards.len());
    }
    print(&cluster)
}

/// Operator: `turnstile token TENANT` issues a token and prints it (shown this once).
pub(crate) fn token(client: &Client, tenant: &str) -> Result<ExitCode> {
    let issued = json_of(client.send("POST", &format!("/v1/tenants/{tenant}/tokens"), "application/json", b"")?)?;
    println!("{}", issued["token"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// Operator: `turnstile suspend TENANT` / `turnstile resume TENANT`.
pub(crate) fn suspend(client: &Client, tenant: &str, suspended: bool) -> Result<ExitCode> {
    let verb = if suspended { "suspend" } else { "resume" };
    let answer = json_of(client.send("POST", &format!("/v1/tenants/{tenant}/{verb}"), "application/json", b"")?)?;
    println!("{tenant}: {}", if answer["config"]["suspended"] == true { "suspended" } else { "active" });
    Ok(ExitCode::SUCCESS)
}
