//! The read side: `/views` (API.md, Projections). Every answer about a view carries
//! `X-Cairn-Position`, the global position the view had handled when it was read, and
//! `?min_position=` waits (bounded) until the view has caught up, so a client reads its
//! own writes.

use super::AppState;
use super::error::ApiError;
use super::extract::require_admin;
use super::extract::{Params, Path};
use super::openapi::ErrorBody;
use crate::projection::ViewError;
use crate::store::Position;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The header that tells which global position a view answer reflects.
pub const POSITION_HEADER: HeaderName = HeaderName::from_static("x-cairn-position");

/// `GET /views`: every projection with its cursor, lag and status.
#[utoipa::path(get, path = "/views", tag = "views",
    summary = "Every projection with its cursor, lag and status (running, rebuilding, failed)",
    responses((status = 200, description = "`{\"projections\": [...]}`", body = Object)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"projections": state.projections.status().await?})))
}

/// `GET /views/{projection}?after=&limit=&min_position=`: the view's keys, in key order.
#[utoipa::path(get, path = "/views/{projection}", tag = "views", summary = "A view's keys, in key order",
    params(
        ("projection" = String, Path, description = "The projection, e.g. `account-info`"),
        ("after" = Option<String>, Query, description = "Keys after this one (`next_after` of the previous page)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)"),
        ("min_position" = Option<u64>, Query, description = "Wait (bounded) until the view has handled this global position"),
    ),
    responses(
        (status = 200, description = "`{\"projection\", \"keys\", \"next_after\"}`", body = Object, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
        (status = 503, description = "The view did not reach `min_position` in time", body = ErrorBody, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
    ))]
pub async fn keys(
    State(state): State<AppState>,
    Path(projection): Path<String>,
    params: Params,
) -> Result<Response, Response> {
    let limit = params.limit(100, 1000).map_err(IntoResponse::into_response)?;
    let after = params.text("after").map_err(IntoResponse::into_response)?;
    let min_position = params.u64("min_position").map_err(IntoResponse::into_response)?.map(Position);
    let (position, keys) = state
        .projections
        .keys(&projection, after.as_deref(), limit, min_position, state.view_wait)
        .await
        .map_err(answer_error)?;
    let next_after = (keys.len() == limit).then(|| keys.last().cloned()).flatten();
    let body = Json(json!({"projection": projection, "keys": keys, "next_after": next_after}));
    Ok(with_position(position, body.into_response()))
}

/// `GET /views/{projection}/{key}?min_position=`: the document, as the projection wrote it.
#[utoipa::path(get, path = "/views/{projection}/{key}", tag = "views",
    summary = "The document a projection keeps under a key",
    params(
        ("projection" = String, Path, description = "The projection"),
        ("key" = String, Path, description = "The document's key"),
        ("min_position" = Option<u64>, Query, description = "Wait (bounded) until the view has handled this global position"),
    ),
    responses(
        (status = 200, description = "The document, as the projection wrote it", body = Object, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 404, description = "No such projection or document", body = ErrorBody, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
        (status = 503, description = "The view did not reach `min_position` in time", body = ErrorBody, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
    ))]
pub async fn document(
    State(state): State<AppState>,
    Path((projection, key)): Path<(String, String)>,
    params: Params,
) -> Result<Response, Response> {
    let min_position = params.u64("min_position").map_err(IntoResponse::into_response)?.map(Position);
    let (position, document) = state
        .projections
        .document(&projection, &key, min_position, state.view_wait)
        .await
        .map_err(answer_error)?;
    let Some(document) = document.filter(|_| !key.starts_with('_')) else {
        let missing = ApiError::not_found(
            "document_not_found",
            format!("the view {projection} has no document {key:?}"),
        );
        return Ok(with_position(position, missing.into_response()));
    };
    let response = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document);
    Ok(with_position(position, response.into_response()))
}

/// `GET /views/{projection}/rebuild`: the document whose key is `rebuild`. The path of the
/// admin's rebuild is the path of that document too; the method tells them apart.
#[utoipa::path(get, path = "/views/{projection}/rebuild", tag = "views",
    summary = "The document a projection keeps under the key `rebuild`",
    params(
        ("projection" = String, Path, description = "The projection"),
        ("min_position" = Option<u64>, Query, description = "Wait (bounded) until the view has handled this global position"),
    ),
    responses(
        (status = 200, description = "The document, as the projection wrote it", body = Object, headers(("X-Cairn-Position" = u64, description = "The global position the view had handled"))),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 404, description = "No such projection or document", body = ErrorBody),
        (status = 503, description = "The view did not reach `min_position` in time", body = ErrorBody),
    ))]
pub async fn rebuild_document(
    state: State<AppState>,
    Path(projection): Path<String>,
    params: Params,
) -> Result<Response, Response> {
    document(state, Path((projection, "rebuild".to_owned())), params).await
}

/// `POST /views/{projection}/rebuild` (admin): build the view again from the whole log,
/// beside the live one; readers keep the live one until the new one has caught up.
#[utoipa::path(post, path = "/views/{projection}/rebuild", tag = "views",
    summary = "Build a view again from the whole log, beside the live one",
    security(("admin_token" = [])),
    params(("projection" = String, Path, description = "The projection")),
    responses(
        (status = 202, description = "`{\"status\": \"rebuilding\", \"rebuild\": {...}}`", body = Object),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such projection", body = ErrorBody),
    ))]
pub async fn rebuild(
    State(state): State<AppState>,
    Path(projection): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let started = state.projections.rebuild(&projection).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "rebuilding", "rebuild": started}))).into_response())
}

/// A view read that failed; a view that has not caught up says how far it got.
fn answer_error(error: ViewError) -> Response {
    match error {
        ViewError::Behind { reached, .. } => {
            let answer = ApiError::from(error).retry_after(1);
            with_position(reached, answer.into_response())
        }
        other => ApiError::from(other).into_response(),
    }
}

fn with_position(position: Position, mut response: Response) -> Response {
    response.headers_mut().insert(POSITION_HEADER, HeaderValue::from(position.get()));
    response
}

impl From<ViewError> for ApiError {
    fn from(error: ViewError) -> Self {
        let message = error.to_string();
        match error {
            ViewError::UnknownProjection(_) => ApiError::not_found("unknown_view", message),
            ViewError::Behind { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "view_behind", message)
            }
            ViewError::Interrupted(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "interrupted", message)
            }
            ViewError::RebuildFailed { .. } => ApiError::internal(message),
            ViewError::Store(store) => store.into(),
            ViewError::Elsewhere => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "projections_elsewhere", message)
            }
        }
    }
}
