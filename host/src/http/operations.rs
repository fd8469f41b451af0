//! Health, components, deploy, and the answers for unknown routes.

use super::AppState;
use super::error::ApiError;
use super::extract::Body;
use crate::components::{ComponentSummary, Deployed};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

/// `GET /healthz`
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(
        json!({"status": "ok", "head_position": state.store.head_position(), "live_actors": state.actors.live()}),
    )
}

/// `GET /components`
pub async fn components(State(state): State<AppState>) -> Json<Vec<ComponentSummary>> {
    Json(state.components.list())
}

/// Admin endpoints need `Authorization: Bearer <admin token>` (401 otherwise).
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let expected = state.admin_token.as_bytes();
    // Compare in time independent of where the first difference is.
    let matches = presented.is_some_and(|p| {
        p.len() == expected.len() && p.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs Authorization: Bearer <admin token>",
        ))
    }
}

/// `PUT /components/{name}` with the `.wasm` bytes: deploy and activate a new version.
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Body(bytes): Body,
) -> Result<Json<Deployed>, ApiError> {
    require_admin(&state, &headers)?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_component",
            "the body must be the component's .wasm bytes",
        ));
    }
    let components = state.components.clone();
    // Compiling takes ~100 ms of CPU: keep it off the async threads.
    let deployed = tokio::task::spawn_blocking(move || components.deploy(&name, &bytes))
        .await
        .map_err(|e| ApiError::internal(format!("deploy task failed: {e}")))??;
    Ok(Json(deployed))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the API reference in the README")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
