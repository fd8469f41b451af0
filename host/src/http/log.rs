//! The global log and saga chains.

use super::AppState;
use super::aggregates::EventsAnswer;
use super::error::ApiError;
use super::extract::Params;
use crate::json;
use axum::Json;
use axum::extract::{Path, State};

const MAX_PAGE: usize = 1000;

/// `GET /events?after=<position>&limit=<n>`: the global log in order.
pub async fn global(State(state): State<AppState>, params: Params) -> Result<Json<EventsAnswer>, ApiError> {
    let after = params.u64("after")?.unwrap_or(0);
    let limit = params.limit(100, MAX_PAGE)?;
    let events = state.store.read_all(after, limit)?;
    Ok(Json(EventsAnswer { events: json::events_json(&events) }))
}

/// `GET /sagas/{correlation_id}?after=&limit=`: the events of one chain, in global order;
/// a long chain pages with `after` (the last position of the previous page).
pub async fn saga(
    State(state): State<AppState>,
    Path(correlation_id): Path<String>,
    params: Params,
) -> Result<Json<EventsAnswer>, ApiError> {
    let limit = params.limit(MAX_PAGE, 10 * MAX_PAGE)?;
    let after = params.u64("after")?;
    let events = state.store.read_correlation(&correlation_id, after.unwrap_or(0), limit)?;
    // A page after the end of a chain is empty; only an unknown chain is a 404.
    if events.is_empty() && after.is_none() {
        return Err(ApiError::not_found(
            "saga_not_found",
            format!("no events carry correlation id {correlation_id:?}"),
        ));
    }
    Ok(Json(EventsAnswer { events: json::events_json(&events) }))
}
