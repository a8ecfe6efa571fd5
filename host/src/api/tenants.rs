//! The operator's routes over tenants (create, read, set their quotas, suspend, delete), their
//! tokens, and the cluster's shard leases. Every one takes the admin token.

use super::bodies::{ClusterBody, ErrorBody, IssuedToken, NewTenant, TenantList};
use super::{Admin, Api, ApiError, Body, blocking};
use crate::error::Error;
use crate::host::TenantInfo;
use crate::limits::TenantConfig;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

#[utoipa::path(
    post, path = "/v1/tenants", tag = "operator", security(("admin" = [])),
    summary = "Create a tenant",
    description = "With its weight, quotas and limits (`config`; the server's default tenant when left out).",
    request_body = NewTenant,
    responses(
        (status = 201, description = "Created.", body = TenantInfo, links(
            ("read" = (operation_id = "get_tenant", parameters(("tenant" = "$response.body#/name")))),
            ("update" = (operation_id = "update_tenant", parameters(("tenant" = "$response.body#/name")))),
            ("suspend" = (operation_id = "suspend_tenant", parameters(("tenant" = "$response.body#/name")))),
            ("resume" = (operation_id = "resume_tenant", parameters(("tenant" = "$response.body#/name")))),
            ("issue_token" = (operation_id = "issue_token", parameters(("tenant" = "$response.body#/name")))),
            ("sessions" = (operation_id = "tenant_sessions", parameters(("tenant" = "$response.body#/name")))),
            ("delete" = (operation_id = "delete_tenant", parameters(("tenant" = "$response.body#/name")))),
        )),
        (status = 409, description = "`conflict`: a tenant of that name exists.", body = ErrorBody),
        (status = 422, description = "`invalid_name`, `invalid_config` (the field named), or `invalid_body`.", body = ErrorBody),
    )
)]
pub(super) async fn create_tenant(
    _: Admin,
    State(api): State<Api>,
    Body(new): Body<NewTenant>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let host = api.host.clone();
    let config = new.config.unwrap_or_else(|| TenantConfig::clone(&api.default_tenant));
    let info = blocking(move || {
        host.create_tenant(&new.name, config)?;
        host.tenant(&new.name)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(
    get, path = "/v1/tenants", tag = "operator", security(("admin" = [])),
    summary = "List tenants",
    description = "Every tenant with its quotas, sessions, storage and apps.",
    responses((status = 200, description = "The tenants, by name.", body = TenantList))
)]
pub(super) async fn list_tenants(_: Admin, State(api): State<Api>) -> Json<TenantList> {
    Json(TenantList { tenants: api.host.tenants() })
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant}", tag = "operator", security(("admin" = [])),
    summary = "Read a tenant",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 200, description = "The tenant.", body = TenantInfo),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn get_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    Ok(Json(api.host.tenant(&tenant)?))
}

#[utoipa::path(
    put, path = "/v1/tenants/{tenant}", tag = "operator", security(("admin" = [])),
    summary = "Set a tenant's weight, quotas and limits",
    description = "Fields left out take their defaults; a suspension is kept as it is (it has routes of its own).",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    request_body = TenantConfig,
    responses(
        (status = 200, description = "The tenant as it is now.", body = TenantInfo),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 422, description = "`invalid_config` (the field named), or `invalid_body`.", body = ErrorBody),
    )
)]
pub(super) async fn update_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
    Body(config): Body<TenantConfig>,
) -> Result<Json<TenantInfo>, ApiError> {
    let host = api.host.clone();
    let info = blocking(move || {
        host.reconfigure_tenant(&tenant, config)?;
        host.tenant(&tenant)
    })
    .await?;
    Ok(Json(info))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}", tag = "operator", security(("admin" = [])),
    summary = "Delete a tenant",
    description = "A tenant without open sessions, with everything it has (apps, tokens, finished sessions, key-value space).",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`conflict`: it has open sessions.", body = ErrorBody),
    )
)]
pub(super) async fn delete_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let host = api.host.clone();
    blocking(move || host.delete_tenant(&tenant)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_suspended(api: Api, tenant: String, suspended: bool) -> Result<Json<TenantInfo>, ApiError> {
    let host = api.host.clone();
    let info = blocking(move || {
        host.suspend_tenant(&tenant, suspended)?;
        host.tenant(&tenant)
    })
    .await?;
    Ok(Json(info))
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/suspend", tag = "operator", security(("admin" = [])),
    summary = "Suspend a tenant",
    description = "Its new sessions and events are refused (`tenant_suspended`) and its queued actions wait.",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 200, description = "The tenant as it is now.", body = TenantInfo),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn suspend_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    set_suspended(api, tenant, true).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/resume", tag = "operator", security(("admin" = [])),
    summary = "Lift a tenant's suspension",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 200, description = "The tenant as it is now.", body = TenantInfo),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn resume_tenant(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    set_suspended(api, tenant, false).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/tokens", tag = "operator", security(("admin" = [])),
    summary = "Issue a tenant token",
    description = "The token is shown once; only its hash is kept.",
    params(("tenant" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 201, description = "Issued.", body = IssuedToken, links(
            ("revoke" = (operation_id = "revoke_token", parameters(("tenant" = "$request.path.tenant"), ("token" = "$response.body#/id")))),
        )),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(super) async fn issue_token(
    _: Admin,
    State(api): State<Api>,
    Path(tenant): Path<String>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let host = api.host.clone();
    let (id, token) = blocking(move || host.issue_token(&tenant)).await?;
    let issued = IssuedToken { id, token, note: "the token is shown this once; only its hash is kept" };
    Ok((StatusCode::CREATED, Json(issued)))
}

#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/tokens/{token}", tag = "operator", security(("admin" = [])),
    summary = "Revoke a tenant token",
    params(
        ("tenant" = String, Path, description = "The tenant's name."),
        ("token" = String, Path, description = "The token's id (as issued)."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "`not_found`: no such tenant, or no such token of it.", body = ErrorBody),
    )
)]
pub(super) async fn revoke_token(
    _: Admin,
    State(api): State<Api>,
    Path((tenant, token)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let host = api.host.clone();
    blocking(move || host.revoke_token(&tenant, &token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/cluster", tag = "operator", security(("admin" = [])),
    summary = "The cluster's shard leases",
    description = "On a PostgreSQL store: every shard's owner, epoch and milliseconds left, and this node.",
    responses((status = 200, description = "The leases as the database has them now.", body = ClusterBody))
)]
pub(super) async fn cluster(_: Admin, State(api): State<Api>) -> Result<Json<ClusterBody>, ApiError> {
    let Some(store) = api.cluster.clone() else {
        return Ok(Json(ClusterBody {
            store: "single node (not PostgreSQL)",
            node: None,
            holds_all_shards: None,
            shards: Vec::new(),
        }));
    };
    let (node, holds) = (store.claim_node(), store.holds_claim());
    let shards = blocking(move || store.lease_table().map_err(Error::from)).await?;
    Ok(Json(ClusterBody { store: "postgres", node, holds_all_shards: Some(holds), shards }))
}
