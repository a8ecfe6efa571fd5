//! The HTTP API through its router (no sockets): operator and tenant routes, their errors, tenant
//! isolation route by route, and the OpenAPI document against the routes actually served.

use crate::fixtures::example;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;
use turnstile::api::{Api, openapi_document, router};
use turnstile::{Host, HostConfig};

const ADMIN: &str = "admin-token-for-tests-0123456789";

struct Server {
    router: axum::Router,
    _host: Arc<Host>,
}

impl Server {
    fn new() -> Server {
        let mut config = HostConfig { workers: 2, ..HostConfig::default() };
        config.runtime.engine.pool_instances = 8;
        let host = Arc::new(Host::new(config).expect("host"));
        Server { router: router(Api::new(host.clone(), ADMIN)), _host: host }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response =
            self.router.clone().oneshot(request.body(Body::from(body)).expect("request")).await.expect("response");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn json(&self, method: Method, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(method, path, Some(token), Some("application/json"), body.to_string().into_bytes()).await
    }

    /// A tenant with a token, the IVR deployed as `ivr`, and one waiting session.
    async fn tenant(&self, name: &str) -> (String, u64) {
        let (status, _) = self.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) =
            self.call(Method::POST, &format!("/v1/tenants/{name}/tokens"), Some(ADMIN), None, Vec::new()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().expect("token").to_owned();
        let (status, body) =
            self.call(Method::PUT, "/v1/apps/ivr", Some(&token), Some("application/wasm"), example("ivr_menu")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = self.json(Method::POST, "/v1/sessions", &token, json!({ "app": "ivr" })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (token, body["id"].as_u64().expect("id"))
    }
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn operators_manage_tenants_and_tokens() {
    let server = Server::new();
    let (status, body) =
        server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "acme", "config": { "weight": 3 } })).await;
    assert_eq!((status, body["config"]["weight"].clone()), (StatusCode::CREATED, json!(3)));
    let (status, body) = server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "acme" })).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));
    let (_, body) = server.call(Method::GET, "/v1/tenants", Some(ADMIN), None, Vec::new()).await;
    assert_eq!(body["tenants"][0]["name"], "acme");
    let (status, body) =
        server.json(Method::PUT, "/v1/tenants/acme", ADMIN, json!({ "weight": 5, "max_in_flight": 2 })).await;
    assert_eq!((status, body["config"]["weight"].clone()), (StatusCode::OK, json!(5)));
    let (status, body) = server.call(Method::POST, "/v1/tenants/acme/suspend", Some(ADMIN), None, Vec::new()).await;
    assert_eq!((status, body["config"]["suspended"].clone()), (StatusCode::OK, json!(true)));
    let (_, token) = server.call(Method::POST, "/v1/tenants/acme/tokens", Some(ADMIN), None, Vec::new()).await;
    let secret = token["token"].as_str().expect("token");
    let (status, body) = server.json(Method::POST, "/v1/sessions", secret, json!({ "app": "x" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.call(Method::POST, "/v1/tenants/acme/resume", Some(ADMIN), None, Vec::new()).await;
    let revoke = format!("/v1/tenants/acme/tokens/{}", token["id"].as_str().expect("id"));
    let (status, _) = server.call(Method::DELETE, &revoke, Some(ADMIN), None, Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.call(Method::GET, "/v1/apps", Some(secret), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "a revoked token is refused");
    let (status, _) = server.call(Method::DELETE, "/v1/tenants/acme", Some(ADMIN), None, Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.call(Method::GET, "/v1/tenants/acme", Some(ADMIN), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn bad_requests_get_their_own_answers() {
    let server = Server::new();
    let (status, body) = server.call(Method::GET, "/v1/tenants", None, None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (status, body) = server.call(Method::GET, "/v1/tenants", Some("wrong"), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (status, body) =
        server.call(Method::POST, "/v1/tenants", Some(ADMIN), Some("application/json"), b"{\"name\":".to_vec()).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "malformed_json"));
    let (status, body) = server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "a", "colour": "red" })).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"));
    let (status, body) =
        server.call(Method::POST, "/v1/tenants", Some(ADMIN), Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let huge = json!({ "name": "x".repeat(100_000) });
    let (status, body) = server.json(Method::POST, "/v1/tenants", ADMIN, huge).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    let (status, body) = server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "Bad Name" })).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"));
    let (status, body) = server.call(Method::GET, "/nowhere", None, None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));

    let (token, _) = server.tenant("acme").await;
    let (status, body) =
        server.call(Method::PUT, "/v1/apps/junk", Some(&token), Some("application/wasm"), b"MZ".to_vec()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "not_wasm"), "{body}");
    let (status, body) =
        server.call(Method::PUT, "/v1/apps/junk", Some(&token), Some("application/json"), b"{}".to_vec()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let (status, body) = server.call(Method::GET, "/v1/tenants", Some(&token), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "a tenant token is not the admin's");
}

#[tokio::test]
async fn tenants_run_sessions_with_events_and_idempotency_keys() {
    let server = Server::new();
    let (token, session) = server.tenant("acme").await;
    let (status, body) = server.call(Method::GET, "/v1/apps/ivr", Some(&token), None, Vec::new()).await;
    assert_eq!((status, body["actions"].clone()), (StatusCode::OK, json!(["choice", "menu", "menu_timeout", "start"])));
    let path = format!("/v1/sessions/{session}");
    for _ in 0..200 {
        let (_, body) = server.call(Method::GET, &path, Some(&token), None, Vec::new()).await;
        if body["status"] == "waiting" {
            break;
        }
        tokio::task::yield_now().await;
    }
    // A stream opened while the session waits carries what comes next, live.
    let mut live = Request::builder().method(Method::GET).uri(format!("{path}/outputs"));
    live = live.header("authorization", format!("Bearer {token}"));
    let response = server.router.clone().oneshot(live.body(Body::empty()).expect("request")).await.expect("response");
    let streamed = tokio::spawn(async move { response.into_body().collect().await.expect("body").to_bytes() });
    let events = format!("{path}/events");
    let mut request = Request::builder().method(Method::POST).uri(&events);
    request = request
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .header("idempotency-key", "k1");
    let response =
        server.router.clone().oneshot(request.body(Body::from("9")).expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut again = Request::builder().method(Method::POST).uri(&events);
    again = again
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .header("idempotency-key", "k1");
    let response =
        server.router.clone().oneshot(again.body(Body::from("9")).expect("request")).await.expect("response");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert_eq!(body["delivery"], "duplicate");
    let streamed = String::from_utf8(streamed.await.expect("the stream ends").to_vec()).expect("utf-8");
    assert!(streamed.contains("Goodbye.") && streamed.contains("event: end"), "{streamed}");
    // A stream opened afterwards replays every output and ends with the final status.
    let (status, text) = server.call(Method::GET, &format!("{path}/outputs"), Some(&token), None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text").to_owned();
    assert!(text.contains("event: output\nid: 1\n") || text.contains("id: 1\nevent: output"), "{text}");
    assert!(text.contains("Goodbye."), "{text}");
    assert!(text.contains("event: end"), "{text}");
    // Resuming after the first output skips it.
    let mut resume = Request::builder().method(Method::GET).uri(format!("{path}/outputs"));
    resume = resume.header("authorization", format!("Bearer {token}")).header("last-event-id", "1");
    let response = server.router.clone().oneshot(resume.body(Body::empty()).expect("request")).await.expect("response");
    let resumed =
        String::from_utf8(response.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf-8");
    assert!(!resumed.contains("id: 1\n") && resumed.contains("id: 2\n"), "{resumed}");
    let (status, body) = server.call(Method::DELETE, &path, Some(&token), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "session_state"), "a finished session can't be cancelled");
}

/// Starts a session under an idempotency key.
async fn start_keyed(server: &Server, token: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post("/v1/sessions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = server.router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_start_retried_under_its_key_finds_its_session_whatever_the_quota() {
    let server = Server::new();
    let (token, _) = server.tenant("acme").await;
    let (status, body) = server.json(Method::PUT, "/v1/tenants/acme", ADMIN, json!({ "max_sessions": 2 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let call = json!({ "app": "ivr", "input": "+33 1 23" });
    let (status, first) = start_keyed(&server, &token, "call-7", call.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // The tenant is at its quota now: a start without a key is refused, a retry finds its session.
    let (status, body) = server.json(Method::POST, "/v1/sessions", &token, json!({ "app": "ivr" })).await;
    assert_eq!((status, code(&body)), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"), "{body}");
    let (status, again) = start_keyed(&server, &token, "call-7", call).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &first["id"]), "{again}");
    // The same key for another request is the client's mistake, named.
    let (status, body) = start_keyed(&server, &token, "call-7", json!({ "app": "ivr", "input": "other" })).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"), "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains(&format!("session s-{}", first["id"])), "{body}");
    let (status, body) = start_keyed(&server, &token, "call 7", json!({ "app": "ivr" })).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_idempotency_key"), "{body}");
    // Another tenant's key of the same name is its own.
    let (other, _) = server.tenant("beta").await;
    let (status, body) = start_keyed(&server, &other, "call-7", json!({ "app": "ivr", "input": "+33 1 23" })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["id"], first["id"]);
}

#[tokio::test]
async fn a_tenant_can_neither_reach_nor_detect_another_tenants_things() {
    let server = Server::new();
    let (_, theirs) = server.tenant("acme").await;
    let (mine, _) = server.tenant("other").await;
    let session = format!("/v1/sessions/{theirs}");
    let absent = "/v1/sessions/999999";
    // Every tenant route that names something: another tenant's answers like a missing one.
    for (method, path, content_type, body) in [
        (Method::GET, session.clone(), None, Vec::new()),
        (Method::DELETE, session.clone(), None, Vec::new()),
        (Method::POST, format!("{session}/events"), Some("text/plain"), b"1".to_vec()),
        (Method::GET, format!("{session}/outputs"), None, Vec::new()),
    ] {
        let (status, answer) = server.call(method.clone(), &path, Some(&mine), content_type, body.clone()).await;
        let missing = path.replace(&format!("/{theirs}"), "/999999");
        let (absent_status, absent_body) = server.call(method.clone(), &missing, Some(&mine), content_type, body).await;
        assert_eq!((status, code(&answer)), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}");
        assert_eq!(
            answer["message"].as_str().map(|m| m.replace(&theirs.to_string(), "999999")),
            absent_body["message"].as_str().map(str::to_owned),
            "the same answer as for a missing one"
        );
        assert_eq!((absent_status, code(&absent_body)), (StatusCode::NOT_FOUND, "not_found"), "{method} {absent}");
    }
    // Apps are per tenant: the other tenant's `ivr` is its own; a name only acme has is unknown.
    let (status, _) =
        server.call(Method::PUT, "/v1/apps/onlyacme", Some(&mine), Some("application/wasm"), b"x".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = server.call(Method::GET, "/v1/apps/onlyacme", Some(&mine), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = server.json(Method::POST, "/v1/sessions", &mine, json!({ "app": "nope" })).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, acme_session) = server.call(Method::GET, &session, Some(&mine), None, Vec::new()).await;
    assert_eq!(code(&acme_session), "not_found");
    // Listings show only one's own: other's sessions list lists its one session, not acme's.
    let (status, listed) = server.call(Method::GET, "/v1/sessions", Some(&mine), None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<u64> =
        listed["sessions"].as_array().expect("a list").iter().filter_map(|s| s["id"].as_u64()).collect();
    assert_eq!(ids.len(), 1, "{listed}");
    assert!(!ids.contains(&theirs), "{listed}");
    // A new version of acme's `ivr` is not other's.
    let (status, _) =
        server.call(Method::PUT, "/v1/apps/ivr", Some(&mine), Some("application/wasm"), example("order_bot")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, apps) = server.call(Method::GET, "/v1/apps", Some(&mine), None, Vec::new()).await;
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    assert_eq!(apps[0]["versions"].as_array().map(Vec::len), Some(2), "both of its own versions: {apps}");
    let (_, theirs_app) = server.call(Method::GET, "/v1/tenants/acme", Some(ADMIN), None, Vec::new()).await;
    assert_eq!(theirs_app["apps"][0]["versions"].as_array().map(Vec::len), Some(1), "{theirs_app}");
}

/// Every documented operation: method, path, and the token it takes (`admin`, `tenant`, or none).
fn documented_operations() -> Vec<(Method, String, Option<String>)> {
    let document = openapi_document();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let token = operation["security"][0].as_object().and_then(|s| s.keys().next().cloned());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            operations.push((method, path.clone(), token));
        }
    }
    operations
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{tenant}", "acme").replace("{app}", "ivr").replace("{session}", "1").replace("{token}", "k")
}

#[tokio::test]
async fn every_operator_route_refuses_a_tenant_token_and_every_tenant_route_the_admin_token() {
    let server = Server::new();
    let (token, _) = server.tenant("acme").await;
    let operations = documented_operations();
    assert!(operations.len() >= 29, "{operations:?}");
    for (method, path, needs) in operations {
        let wrong = match needs.as_deref() {
            Some("admin") => token.as_str(),
            Some("tenant") => ADMIN,
            _ => continue,
        };
        let (status, body) =
            server.call(method.clone(), &concrete(&path), Some(wrong), Some("application/json"), b"{}".to_vec()).await;
        assert_eq!((status, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{method} {path}");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_it_lists_and_they_are_served() {
    let server = Server::new();
    let (status, document) = server.call(Method::GET, "/openapi.json", None, None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document, openapi_document());
    for (method, path, _) in documented_operations() {
        let operation = &document["paths"][&path][method.as_str().to_lowercase()];
        assert!(operation["operationId"].is_string(), "{method} {path} has an operation id");
        let responses = operation["responses"].as_object().expect("responses");
        let success = responses.iter().find(|(status, _)| status.starts_with('2')).expect("a success answer");
        assert!(success.1["description"].is_string(), "{method} {path}");
        for (status, response) in responses.iter().filter(|(status, _)| !status.starts_with('2')) {
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} {status} answers an error body"
            );
        }
        let (status, body) = server.call(method.clone(), &concrete(&path), None, None, Vec::new()).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served");
        assert!(body.get("message").is_none_or(|m| m != "no such route"), "{method} {path} is served");
    }
    // A path the document does not list is no route.
    let (status, body) = server.call(Method::GET, "/v1/nothing", None, None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[test]
fn the_example_configuration_is_a_valid_configuration() {
    let path = turnstile::examples::repository_root().join("turnstile.example.toml");
    let text = std::fs::read_to_string(path).expect("example config");
    let config = turnstile::config::ServeConfig::parse(&text).expect("the example parses as a configuration");
    assert_eq!(config.tenants[0].config.weight, 3);
    assert_eq!(config.store_url(), "sqlite://turnstile-data/turnstile.db");
    assert_eq!(config.pool.memory_init, turnstile::MemoryInit::Copy);
    let mapped = turnstile::config::ServeConfig::parse("[pool]\nmemory_init = \"map\"").expect("parses");
    assert_eq!(mapped.pool.memory_init, turnstile::MemoryInit::Map);
    let error = turnstile::config::ServeConfig::parse("[pool]\nmemory_init = \"mmap\"").expect_err("refused");
    assert!(error.contains("unknown variant `mmap`, expected `copy` or `map`"), "{error}");
    assert!(turnstile::open_store("mysql://elsewhere").is_err_and(|e| e.code() == "invalid_config"));
    let refused = turnstile::open_store("postgres://127.0.0.1/test?shards=none").err().expect("refused");
    assert!(refused.to_string().contains("shards `none`"), "{refused}");
    let error = turnstile::config::ServeConfig::parse("listen = 5\ncolour = 1").expect_err("refused");
    assert!(error.contains("invalid type") || error.contains("unknown field"), "{error}");
}

#[tokio::test]
async fn odd_requests_get_json_answers_with_their_own_codes() {
    let server = Server::new();
    let (token, id) = server.tenant("acme").await;
    let send = |request: Request<Body>| async {
        let response = server.router.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
    };
    let (status, body) = server.call(Method::PATCH, "/v1/apps/ivr", Some(&token), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let long = format!("/v1/apps/{}", "a".repeat(10_000));
    let (status, body) = server.call(Method::GET, &long, Some(&token), None, Vec::new()).await;
    assert_eq!((status, code(&body)), (StatusCode::URI_TOO_LONG, "uri_too_long"));
    let event = |key: axum::http::HeaderValue| {
        Request::post(format!("/v1/sessions/{id}/events"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "text/plain")
            .header("idempotency-key", key)
            .body(Body::from("1"))
            .expect("request")
    };
    for key in
        [axum::http::HeaderValue::from_bytes("clé".as_bytes()).expect("bytes"), "k".repeat(129).parse().expect("key")]
    {
        let (status, body) = send(event(key)).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_idempotency_key"), "{body}");
    }
    // A body declared larger than the route takes is refused before it is read.
    let big = Request::post("/v1/sessions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("content-length", "10000000")
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(big).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    // The host's own failures never show its paths or queries.
    let failure = turnstile::Error::Store(Arc::new(turnstile::StoreError::Damaged {
        report: "page 7 of /secret/data/turnstile.db is corrupt".into(),
    }));
    let response = axum::response::IntoResponse::into_response(turnstile::api::ApiError::from(failure));
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"code\":\"store\"") && !text.contains("/secret"), "{text}");
}

#[tokio::test]
async fn stalled_uploads_neither_hold_the_deploy_route_nor_hang_a_deploy() {
    let server = Server::new();
    let (token, _) = server.tenant("acme").await;
    let limits = turnstile::api::HttpLimits { max_uploads: 1, body_timeout_secs: 1, ..Default::default() };
    let router = router(Api::new(server._host.clone(), ADMIN).with_limits(&limits));
    let stalled = |token: Option<&str>| {
        let mut request = Request::put("/v1/apps/ivr").header("content-type", "application/wasm");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = Body::from_stream(futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>());
        router.clone().oneshot(request.body(body).expect("request"))
    };
    // Without a token, a PUT is answered before its body is read: it takes no upload turn.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), stalled(None)).await.expect("answered");
    assert_eq!(answer.expect("response").status(), StatusCode::UNAUTHORIZED);
    // A tenant's stalled upload holds one turn (here the only one) until its body times out: the
    // same tenant's next upload is refused at once, another tenant's is told the uploads are busy
    // rather than left hanging.
    let (other, _) = server.tenant("other").await;
    let mut first = Box::pin(stalled(Some(&token)));
    // Polled until it waits for its body, holding its turn.
    tokio::select! {
        biased;
        _ = &mut first => panic!("a stalled upload ended early"),
        () = tokio::task::yield_now() => {}
    }
    let started = std::time::Instant::now();
    let again = stalled(Some(&token)).await.expect("response");
    let body = again.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(code(&serde_json::from_slice(&body).expect("json")), "upload_in_progress");
    let theirs = stalled(Some(&other)).await.expect("response");
    let body = theirs.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(code(&serde_json::from_slice(&body).expect("json")), "uploads_busy");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(first.await.expect("response").status(), StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test]
async fn output_streams_opened_and_dropped_leave_nothing_behind() {
    let server = Server::new();
    let (token, id) = server.tenant("acme").await;
    for _ in 0..50 {
        let request = Request::get(format!("/v1/sessions/{id}/outputs"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let response = server.router.clone().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
    }
    let request = Request::get(format!("/v1/sessions/{id}/outputs"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let _open = server.router.clone().oneshot(request).await.expect("response");
    assert_eq!(server._host.metrics().output_streams, 1, "only the stream still open is watched");
}

#[tokio::test]
async fn metrics_can_be_kept_to_the_operator() {
    let server = Server::new();
    let (token, _) = server.tenant("acme").await;
    let limits = turnstile::api::HttpLimits { protect_metrics: true, ..Default::default() };
    let router = router(Api::new(server._host.clone(), ADMIN).with_limits(&limits));
    let get = |token: Option<&str>| {
        let mut request = Request::get("/metrics");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        router.clone().oneshot(request.body(Body::empty()).expect("request"))
    };
    assert_eq!(get(None).await.expect("response").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(&token)).await.expect("response").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(ADMIN)).await.expect("response").status(), StatusCode::OK);
    // Unprotected (the default), anyone may scrape.
    let (status, _) = server.call(Method::GET, "/metrics", None, None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    // Scrapes within a second share one render (a render walks every session): a tenant made
    // in between shows only in a scrape a second later.
    let scrape = || async { server.call(Method::GET, "/metrics", None, None, Vec::new()).await.1.to_string() };
    let started = std::time::Instant::now();
    let first = scrape().await;
    let (status, _) = server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "newcomer" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let second = scrape().await;
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(first, second, "the same render");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(scrape().await.contains("newcomer"), "rendered again after a second");
}

#[tokio::test]
async fn quotas_take_durations_and_sizes_as_people_write_them() {
    let server = Server::new();
    let config = json!({ "limits": { "wall_time": "250ms", "memory_bytes": "16MiB", "max_state_bytes": 4096 } });
    let (status, body) =
        server.json(Method::POST, "/v1/tenants", ADMIN, json!({ "name": "acme", "config": config })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["config"]["limits"]["wall_time"], "250ms");
    assert_eq!(body["config"]["limits"]["memory_bytes"], 16 << 20);
    // The form written before is still read.
    let legacy = json!({ "limits": { "wall_time": { "secs": 2, "nanos": 0 } } });
    let (status, body) = server.json(Method::PUT, "/v1/tenants/acme", ADMIN, legacy).await;
    assert_eq!((status, body["config"]["limits"]["wall_time"].clone()), (StatusCode::OK, json!("2s")), "{body}");
    let (status, body) =
        server.json(Method::PUT, "/v1/tenants/acme", ADMIN, json!({ "limits": { "wall_time": "5" } })).await;
    assert_eq!((status, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"), "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("limits.wall_time: `5`: give a unit"), "{body}");
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_output_streams_and_another_is_not_held_to_them() {
    let server = Server::new();
    let (mine, id) = server.tenant("acme").await;
    let (theirs, their_id) = server.tenant("other").await;
    let (status, _) = server.json(Method::PUT, "/v1/tenants/acme", ADMIN, json!({ "max_streams": 2 })).await;
    assert_eq!(status, StatusCode::OK);
    let open = |token: &str, session: u64| {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("/v1/sessions/{session}/outputs"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        server.router.clone().oneshot(request)
    };
    // Two streams held open (their bodies not read: a waiting session's stream stays open).
    let first = open(&mine, id).await.expect("answers");
    let second = open(&mine, id).await.expect("answers");
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = open(&mine, id).await.expect("answers");
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = third.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(code(&body), "quota_exceeded", "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("open output streams"), "{body}");
    // Another tenant is not held to acme's streams.
    assert_eq!(open(&theirs, their_id).await.expect("answers").status(), StatusCode::OK);
    // A stream given up frees its place.
    drop(first);
    assert_eq!(open(&mine, id).await.expect("answers").status(), StatusCode::OK);
    drop(second);
}

#[tokio::test]
async fn a_session_list_reads_its_query_as_clients_encode_it() {
    let server = Server::new();
    let (token, _) = server.tenant("acme").await;
    for (query, status) in [
        ("limit=%31", StatusCode::OK),
        ("limit=1&after=0", StatusCode::OK),
        ("limit=0", StatusCode::BAD_REQUEST),
        ("limit=1001", StatusCode::BAD_REQUEST),
        ("after=9223372036854775808", StatusCode::BAD_REQUEST),
        ("after=-1", StatusCode::BAD_REQUEST),
        ("page=2", StatusCode::BAD_REQUEST),
    ] {
        let (got, body) =
            server.call(Method::GET, &format!("/v1/sessions?{query}"), Some(&token), None, Vec::new()).await;
        assert_eq!(got, status, "?{query}: {body}");
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(code(&body), "bad_query", "?{query}: {body}");
        }
    }
}
