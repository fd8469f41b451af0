//! The global log and saga chains.

use super::AppState;
use super::aggregates::{EventsAnswer, PAGE_BYTES};
use super::error::ApiError;
use super::event_json::{as_read, events_json};
use super::extract::{Params, Path};
use super::openapi::ErrorBody;
use crate::store::{Page, Position};
use axum::Json;
use axum::extract::State;

const MAX_PAGE: usize = 1000;

/// `GET /events?after=<position>&limit=<n>`: the global log in order.
#[utoipa::path(get, path = "/events", tag = "log", summary = "The global log in position order",
    params(
        ("after" = Option<u64>, Query, description = "Events after this position (default 0)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000); a page also stops once its events reach 4 MiB"),
        ("upcast" = Option<bool>, Query, description = "Answer the events as the active versions' consumers read them (after their producers' upcasters), not as stored"),
    ),
    responses(
        (status = 200, description = "A page of the log; `next_after` is where the next page starts when there may be more", body = EventsAnswer),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 422, description = "With `upcast`: a producer's upcasters fail on an event (`upcast_failed`, naming it)", body = ErrorBody),
    ))]
pub async fn global(State(state): State<AppState>, params: Params) -> Result<Json<EventsAnswer>, ApiError> {
    let after = Position(params.u64("after")?.unwrap_or(0));
    let limit = params.limit(100, MAX_PAGE)?;
    let upcast = params.flag("upcast")?;
    let events = state.store.read_all(after, Page::new(limit, PAGE_BYTES)).await?;
    let next_after = (events.len() == limit || page_full(&events))
        .then(|| events.last().map(|e| e.position.get()))
        .flatten();
    let events = as_read(&state, events, upcast).await?;
    Ok(Json(EventsAnswer::with_next(events_json(&events), next_after)))
}

/// `GET /sagas/{correlation_id}?after=&limit=`: the events of one chain, in global order;
/// a long chain pages with `after` (the last position of the previous page).
#[utoipa::path(get, path = "/sagas/{correlation_id}", tag = "log",
    summary = "Every event of one saga (correlation id), in global order",
    params(
        ("correlation_id" = String, Path, description = "The correlation id the chain carries"),
        ("after" = Option<u64>, Query, description = "The last position of the previous page"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 1000, at most 10 000); a page also stops once its events reach 4 MiB"),
    ),
    responses(
        (status = 200, description = "The chain's events; `next_after` is where the next page starts when there may be more", body = EventsAnswer),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 404, description = "No event carries that correlation id", body = ErrorBody),
    ))]
pub async fn saga(
    State(state): State<AppState>,
    Path(correlation_id): Path<String>,
    params: Params,
) -> Result<Json<EventsAnswer>, ApiError> {
    let limit = params.limit(MAX_PAGE, 10 * MAX_PAGE)?;
    let after = params.u64("after")?;
    let events = state
        .store
        .read_correlation(&correlation_id, Position(after.unwrap_or(0)), Page::new(limit, PAGE_BYTES))
        .await?;
    // A page after the end of a chain is empty; only an unknown chain is a 404.
    if events.is_empty() && after.is_none() {
        return Err(ApiError::not_found(
            "saga_not_found",
            format!("no events carry correlation id {correlation_id:?}"),
        ));
    }
    let next_after = (events.len() == limit || page_full(&events))
        .then(|| events.last().map(|e| e.position.get()))
        .flatten();
    Ok(Json(EventsAnswer::with_next(events_json(&events), next_after)))
}

/// Whether a page stopped at its byte budget (there may be more after it): the store counts
/// the events' stored bytes, which is what they encode to.
pub(super) fn page_full(events: &[crate::store::StoredEvent]) -> bool {
    use crate::store::Record as _;
    let mut bytes = 0usize;
    events.iter().any(|event| {
        bytes += event.encode().len();
        bytes >= PAGE_BYTES
    })
}
