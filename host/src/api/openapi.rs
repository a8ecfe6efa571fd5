//! The OpenAPI document, derived from the handlers: each handler's `#[utoipa::path]` names its
//! parameters, body and answers in the types of `bodies.rs`, and the router is built from the
//! same annotations (`utoipa_axum::routes!`), so a route cannot be served undocumented or
//! documented at a path it is not served at. What every route may answer whatever it does (the
//! body limits, the token, an unavailable store) is added here once, by [`add_refusals`].

use super::bodies::ErrorBody;
use serde_json::{Value, json};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The document's frame: what the handlers' annotations are added to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Turnstile",
        description = "A multi-tenant WebAssembly host for contact-handling scripts. Operator routes take the admin \
                       token, tenant routes a tenant's token (`Authorization: Bearer …`); every error is \
                       `{\"code\", \"message\"}` with a stable code."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "operator", description = "Tenants, their tokens and quotas, the host's figures (admin token)."),
        (name = "tenant", description = "A tenant's apps, sessions, events and outputs (that tenant's token)."),
        (name = "probes", description = "Metrics, liveness, readiness and this document (no token)."),
        (name = "console", description = "The live operator console's page and assets (no token; the page asks for the admin token)."),
    ),
    modifiers(&SecuritySchemes)
)]
pub(super) struct Frame;

/// The two bearer tokens.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme("admin", bearer("The operator's admin token."));
        components.add_security_scheme("tenant", bearer("A tenant's token (`tst_…`)."));
    }
}

/// The document as served: the routes' own part, the refusals every route may give, as JSON.
pub(super) fn finish(mut document: Document) -> Value {
    add_refusals(&mut document);
    let mut json = serde_json::to_value(&document).unwrap_or_else(|error| json!({ "error": error.to_string() }));
    name_link_fields(&mut json);
    json
}

/// utoipa 5.5 writes a link's fields in snake case (`operation_id`), where OpenAPI names them in
/// camel case (`operationId`): tools then find no target operation. Renamed here.
fn name_link_fields(document: &mut Value) {
    let operations = document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    let responses = operations
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    let links =
        responses.filter_map(|response| response.get_mut("links")?.as_object_mut()).flat_map(|l| l.values_mut());
    for link in links.filter_map(Value::as_object_mut) {
        for (snake, camel) in
            [("operation_id", "operationId"), ("operation_ref", "operationRef"), ("request_body", "requestBody")]
        {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// Adds the answers any route may give besides its own: a JSON body that is not JSON, not sent
/// as JSON, or not of the route's shape (routes taking one); a missing or wrong token and an
/// unavailable store (routes behind a token); the body and target limits (every route).
fn add_refusals(document: &mut Document) {
    for item in document.paths.paths.values_mut() {
        for operation in operations(item) {
            let takes_json = operation
                .request_body
                .as_ref()
                .is_some_and(|body| body.content.keys().all(|kind| kind == "application/json"));
            if takes_json {
                refusal(
                    operation,
                    "400",
                    "`malformed_json`, or `bad_body`: the body is not JSON or could not be read.",
                );
                refusal(operation, "415", "`unsupported_media_type`: send `Content-Type: application/json`.");
                refusal(
                    operation,
                    "422",
                    "`invalid_body` (not the route's shape), or `invalid_config` (a value out of bounds, named).",
                );
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                refusal(operation, "401", "`unauthorized`: no token, or not one this route takes.");
                refusal(
                    operation,
                    "503",
                    "`store_unavailable` (nothing was written; try again), `session_recovering` (a checkpoint of the session failed and it is being taken back; try again), or `shutting_down`.",
                );
            }
            refusal(operation, "400", "`bad_body`: the body could not be read.");
            refusal(operation, "408", "`body_timeout`: the body did not arrive in time.");
            refusal(operation, "413", "`body_too_large`: the body is over this route's limit.");
            refusal(operation, "414", "`uri_too_long`: the request target is over 8 KiB.");
        }
    }
}

/// Adds an error answer to an operation, unless it documents that status itself.
fn refusal(operation: &mut Operation, status: &str, description: &str) {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let response = ResponseBuilder::new().description(description).content("application/json", content).build();
    operation.responses.responses.entry(status.to_owned()).or_insert_with(|| response.into());
}

/// The operations of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .filter_map(Option::as_mut)
}
