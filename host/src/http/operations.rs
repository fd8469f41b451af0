//! Health, components, deploy, and the answers for unknown routes.

use super::AppState;
use super::error::ApiError;
use super::extract::{Body, Params};
use crate::components::{ComponentSummary, Deployed};
use crate::routing::RoutingError;
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

/// `GET /routing`: each subscriber's cursor and lag.
pub async fn routing(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"subscribers": state.routing.status()}))
}

/// `GET /routing/dead-letters`: deliveries the router gave up on.
pub async fn dead_letters(State(state): State<AppState>, params: Params) -> Result<Json<Value>, ApiError> {
    let limit = params.limit(100, 10_000)?;
    let letters: Vec<Value> = state
        .store
        .dead_letters(limit)?
        .into_iter()
        .map(|d| {
            json!({
                "subscriber": d.subscriber,
                "position": d.position,
                "stream": d.stream,
                "event_type": d.event_type,
                "command_index": d.command_index,
                "target": d.target,
                "command_type": d.command_type,
                "error": d.error,
                "attempts": d.attempts,
                "parked_at": crate::time::rfc3339_micros(d.parked_at_micros),
            })
        })
        .collect();
    Ok(Json(json!({"dead_letters": letters})))
}

/// `POST /routing/{subscriber}/rewind?to=<position>` (admin): deliver again every event
/// after `to` (default 0). Effects are deduplicated, so nothing happens twice.
pub async fn rewind(
    State(state): State<AppState>,
    Path(subscriber): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let to = params.u64("to")?.unwrap_or(0);
    state.routing.rewind(&subscriber, to).await.map_err(|e| match e {
        RoutingError::UnknownSubscriber(_) => ApiError::not_found("unknown_subscriber", e.to_string()),
        RoutingError::Store(store) => store.into(),
    })?;
    Ok(Json(json!({"subscriber": subscriber, "rewound_to": to})))
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
    state.routing.ensure_subscriber(&deployed.name)?;
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
