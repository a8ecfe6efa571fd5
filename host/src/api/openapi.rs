//! The OpenAPI document of the API, built from one table of routes. A test walks the table
//! against the router, so the document cannot drift from what is served.

use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Nobody needs a token.
    Public,
    /// The admin token.
    Operator,
    /// A tenant's token.
    Tenant,
}

/// Every route: method, path, who may call it, what it does.
pub const ROUTES: &[(&str, &str, Auth, &str)] = &[
    ("post", "/v1/tenants", Auth::Operator, "Create a tenant: {\"name\", \"config\"} (weight, quotas, limits)."),
    ("get", "/v1/tenants", Auth::Operator, "List tenants with their quotas and apps."),
    ("get", "/v1/tenants/{tenant}", Auth::Operator, "Read a tenant."),
    ("put", "/v1/tenants/{tenant}", Auth::Operator, "Set a tenant's quotas and weight."),
    ("delete", "/v1/tenants/{tenant}", Auth::Operator, "Delete a tenant without open sessions, with all it has."),
    ("post", "/v1/tenants/{tenant}/suspend", Auth::Operator, "Suspend a tenant: new sessions and events are refused."),
    ("post", "/v1/tenants/{tenant}/resume", Auth::Operator, "Lift a suspension."),
    ("post", "/v1/tenants/{tenant}/tokens", Auth::Operator, "Issue a tenant token (shown once, stored hashed)."),
    ("delete", "/v1/tenants/{tenant}/tokens/{token}", Auth::Operator, "Revoke a tenant token."),
    (
        "get",
        "/v1/tenants/{tenant}/sessions",
        Auth::Operator,
        "A tenant's sessions, as the tenant would list them: ?after=ID&limit=1..1000 (default 100).",
    ),
    ("get", "/v1/tenants/{tenant}/sessions/{session}", Auth::Operator, "Read one session of a tenant."),
    (
        "get",
        "/v1/overview",
        Auth::Operator,
        "The host and each tenant: counters since start, queue, in flight, latency p50/p99 of the last seconds.",
    ),
    (
        "get",
        "/v1/cluster",
        Auth::Operator,
        "The shard leases of a PostgreSQL store: owner, epoch, milliseconds left; this node.",
    ),
    ("put", "/v1/apps/{app}", Auth::Tenant, "Upload a version of an app (raw Wasm body, application/wasm)."),
    ("get", "/v1/apps", Auth::Tenant, "List the tenant's apps: current version, actions, every version."),
    ("get", "/v1/apps/{app}", Auth::Tenant, "Read an app: current version, actions, every version."),
    ("post", "/v1/sessions", Auth::Tenant, "Start a session: {\"app\", \"entry\" (default start), \"input\"}."),
    (
        "get",
        "/v1/sessions",
        Auth::Tenant,
        "The tenant's sessions held (open, and finished ones not yet purged) in id order: ?after=ID&limit=1..1000 (default 100); next_after is the cursor of the next page.",
    ),
    ("get", "/v1/sessions/{session}", Auth::Tenant, "Read a session: status, step, counters, last failure."),
    ("delete", "/v1/sessions/{session}", Auth::Tenant, "Cancel a session."),
    (
        "post",
        "/v1/sessions/{session}/events",
        Auth::Tenant,
        "Deliver a customer event (the body; optional Idempotency-Key header); 202 once durable.",
    ),
    (
        "get",
        "/v1/sessions/{session}/outputs",
        Auth::Tenant,
        "The session's outputs as Server-Sent Events, resumable with Last-Event-ID.",
    ),
    ("get", "/metrics", Auth::Public, "Prometheus metrics, per-tenant labels."),
    ("get", "/healthz", Auth::Public, "Liveness."),
    ("get", "/readyz", Auth::Public, "Readiness (503 `shutting_down`, or `store_unavailable` while the store fails)."),
    ("get", "/openapi.json", Auth::Public, "This document."),
    ("get", "/console", Auth::Public, "The live operator console (the page asks for the admin token)."),
    ("get", "/console/console.js", Auth::Public, "The console's script."),
    ("get", "/console/console.css", Auth::Public, "The console's style."),
];

/// The OpenAPI 3.1 document.
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for (method, path, auth, summary) in ROUTES {
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let security = match auth {
            Auth::Public => json!([]),
            Auth::Operator => json!([{ "admin": [] }]),
            Auth::Tenant => json!([{ "tenant": [] }]),
        };
        let operation = json!({
            "summary": summary,
            "parameters": parameters,
            "security": security,
            "responses": {
                "default": {
                    "description": "Errors are {\"code\", \"message\"} with a stable code.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            }
        });
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        if let Some(methods) = entry.as_object_mut() {
            methods.insert((*method).to_owned(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Turnstile", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "admin": { "type": "http", "scheme": "bearer", "description": "The operator's admin token." },
                "tenant": { "type": "http", "scheme": "bearer", "description": "A tenant's token (tst_…)." }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" } }
                }
            }
        }
    })
}
