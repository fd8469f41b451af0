//! `GET /export`: the running host's store as an export file (`store::export`), from one
//! consistent snapshot, streamed while the host keeps serving. `cairn export` writes it to
//! a file; `cairn import` loads it into an empty store.

use super::AppState;
use super::error::ApiError;
use super::extract::require_admin;
use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

/// `GET /export` (admin): everything the store holds that is not derived.
#[utoipa::path(get, path = "/export", tag = "operations",
    summary = "Everything that is not derived, from one snapshot, as an export file",
    description = "The log with its positions, components and their versions, idempotency and dedup \
        records, cursors and dead letters, streamed while the host keeps serving. The file ends with \
        a record that counts the others and holds their SHA-256; a stream cut short has none, and \
        `cairn import` refuses it. `x-cairn-head` is the head when the export began.",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The export file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    ))]
pub async fn export(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let head = state.store.head_position();
    let frames = crate::store::export::frames(&state.store);
    let body = futures_util::stream::unfold(frames, |mut frames| async move {
        frames.recv().await.map(|frame| (frame, frames))
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"cairn.export\"".to_owned()),
        (header::HeaderName::from_static("x-cairn-head"), head.to_string()),
    ];
    Ok((headers, axum::body::Body::from_stream(body)).into_response())
}
