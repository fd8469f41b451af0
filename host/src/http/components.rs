//! The components: their versions, deploys, activation, rollback and deletion. Handlers only
//! call the registry; routing and projections follow its changes by themselves.

use super::AppState;
use super::component_json::{ComponentJson, DeletedVersionJson, DeployJson, SwitchedJson};
use super::error::ApiError;
use super::extract::{Params, Path, require_admin};
use super::openapi::ErrorBody;
use crate::components::{DeployOptions, SwitchCheck};
use crate::store::ComponentVersion;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `GET /components`
#[utoipa::path(get, path = "/components", tag = "components",
    summary = "Every component: its versions and the active one",
    responses((status = 200, description = "The components", body = Vec<ComponentJson>)))]
pub async fn components(State(state): State<AppState>) -> Json<Vec<ComponentJson>> {
    Json(state.components.list().into_iter().map(ComponentJson::from).collect())
}

/// `PUT /components/{name}?dry_run=true&react_from=beginning` (admin) with the `.wasm`
/// bytes: validate, replay-check, and (unless a dry run) store and activate a new version.
/// The token is checked before a byte of the body is read.
#[utoipa::path(put, path = "/components/{name}", tag = "components",
    summary = "Check and deploy a new version of a component",
    description = "The token is checked before a byte of the body is read. An aggregate's new version \
        is replay-checked against recent streams; a projection's view is rebuilt beside the live one.",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The component's name, e.g. `account`"),
        ("dry_run" = Option<bool>, Query, description = "Run every check and activate nothing"),
        ("react_from" = Option<String>, Query, description = "`beginning`: a new subscriber reacts to the whole log; `now` (default): to new events"),
        ("allow_changed_reactions" = Option<bool>, Query, description = "Let the consumer check pass a reaction that sends other commands for events in the new schema"),
    ),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's .wasm bytes"),
    responses(
        (status = 200, description = "The deploy report", body = DeployJson),
        (status = 400, description = "An empty body or a bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 413, description = "The component is too large", body = ErrorBody),
        (status = 422, description = "Not a valid component, the wrong world or kind, a replay failure, a consumer that cannot read the new schema (`consumer_breaks`), or too slow to compile", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
    body: axum::body::Body,
) -> Result<Json<DeployJson>, ApiError> {
    require_admin(&state, &headers)?;
    let react_from_beginning = match params.text("react_from")?.as_deref() {
        None | Some("now") => false,
        Some("beginning") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("react_from is `beginning` or `now`, not {other:?}"),
            ));
        }
    };
    let options = DeployOptions {
        dry_run: params.flag("dry_run")?,
        react_from_beginning,
        replay_sample: state.replay_sample,
        compile_timeout: Some(state.compile_timeout),
        allow_changed_reactions: params.flag("allow_changed_reactions")?,
    };
    let bytes = axum::body::to_bytes(body, state.max_component_bytes).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a component is at most {} bytes", state.max_component_bytes),
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_component",
            "the body must be the component's .wasm bytes",
        ));
    }
    Ok(Json(state.components.deploy(&name, bytes.to_vec(), options).await?.into()))
}

/// `GET /components/{name}/versions/{version}`: the bytes of a stored version.
#[utoipa::path(get, path = "/components/{name}/versions/{version}", tag = "components",
    summary = "The bytes of a stored version",
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = u32, Path, description = "The version"),
    ),
    responses(
        (status = 200, description = "The .wasm bytes", content_type = "application/wasm", body = Vec<u8>),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "No such component or version", body = ErrorBody),
    ))]
pub async fn version_bytes(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let bytes = state.components.version_bytes(&name, version).await?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

/// `DELETE /components/{name}/versions/{version}` (admin): delete a version that is not
/// active, to reclaim its space; its number is never given again.
#[utoipa::path(delete, path = "/components/{name}/versions/{version}", tag = "components",
    summary = "Delete a stored version that is not active",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = u32, Path, description = "The version"),
    ),
    responses(
        (status = 200, description = "The version is deleted", body = DeletedVersionJson),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such component or version", body = ErrorBody),
        (status = 409, description = "It is the active version", body = ErrorBody),
    ))]
pub async fn delete_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<DeletedVersionJson>, ApiError> {
    require_admin(&state, &headers)?;
    let version = parse_version(&version)?;
    let freed_bytes = state.components.delete_version(&name, version).await?;
    Ok(Json(DeletedVersionJson { name, deleted_version: version.get(), freed_bytes }))
}

/// `POST /components/{name}/rollback?force=` (admin): the version active before the current
/// one becomes active again, after the deploy's replay check (`force=true` skips it, for an
/// emergency).
#[utoipa::path(post, path = "/components/{name}/rollback", tag = "components",
    summary = "Make the version active before the current one active again",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The component's name"),
        ("force" = Option<bool>, Query, description = "Skip the replay check (an emergency)"),
    ),
    responses(
        (status = 200, description = "The version now active and the replay check's findings", body = SwitchedJson),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such component", body = ErrorBody),
        (status = 409, description = "There is no earlier version to go back to", body = ErrorBody),
        (status = 422, description = "The version fails the replay check, or no longer loads", body = ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<SwitchedJson>, ApiError> {
    require_admin(&state, &headers)?;
    let switched = state.components.rollback(&name, switch_check(&state, &params)?).await?;
    Ok(Json(SwitchedJson::new(name, switched)))
}

/// Whether a switch runs the replay check: always, unless `?force=true`.
fn switch_check(state: &AppState, params: &Params) -> Result<SwitchCheck, ApiError> {
    Ok(if params.flag("force")? {
        SwitchCheck::Forced
    } else {
        SwitchCheck::Replay { sample: state.replay_sample }
    })
}

/// `POST /components/{name}/activate?version=N` (admin): any stored version becomes active.
#[utoipa::path(post, path = "/components/{name}/activate", tag = "components",
    summary = "Make a stored version active",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The component's name"),
        ("version" = u32, Query, description = "The version to activate"),
        ("force" = Option<bool>, Query, description = "Skip the replay check (an emergency)"),
    ),
    responses(
        (status = 200, description = "The version now active and the replay check's findings", body = SwitchedJson),
        (status = 400, description = "No version given", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such component or version", body = ErrorBody),
        (status = 422, description = "The version fails the replay check, or no longer loads", body = ErrorBody),
    ))]
pub async fn activate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<SwitchedJson>, ApiError> {
    require_admin(&state, &headers)?;
    let version = params
        .u64("version")?
        .ok_or_else(|| ApiError::bad_request("invalid_query", "activate needs ?version=N"))?;
    let version = u32::try_from(version)
        .map(ComponentVersion)
        .map_err(|_| ApiError::not_found("unknown_version", "no such version"))?;
    let switched = state.components.activate(&name, version, switch_check(&state, &params)?).await?;
    Ok(Json(SwitchedJson::new(name, switched)))
}

fn parse_version(text: &str) -> Result<ComponentVersion, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_version",
            format!("a component version is a positive integer, not {text:?}"),
        )
    })
}
