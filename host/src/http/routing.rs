//! The router's subscribers, their dead letters, retries, discards and rewinds.

use super::AppState;
use super::error::ApiError;
use super::extract::{Params, Path, require_admin};
use super::openapi::ErrorBody;
use crate::routing::{RoutingError, SequenceAction};
use crate::store::{DeadLetterKey, Position, StreamId};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// `GET /routing`: each subscriber's cursor, lag, counters, restarts and dead letters.
#[utoipa::path(get, path = "/routing", tag = "routing",
    summary = "Each subscriber's cursor, lag, deliveries, restarts and dead letters",
    responses((status = 200, description = "`{\"subscribers\": [...]}`", body = Object)))]
pub async fn routing(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"subscribers": state.routing.status().await?})))
}

/// `GET /routing/dead-letters?subscriber=&stream=&after=&limit=`: parked events in
/// (subscriber, stream, position) order, so each stream's sequence reads in order. `after`
/// is the `id` of the last letter of the previous page (`next_after`).
#[utoipa::path(get, path = "/routing/dead-letters", tag = "routing",
    summary = "Parked events in (subscriber, stream, position) order",
    params(
        ("subscriber" = Option<String>, Query, description = "Only this subscriber's"),
        ("stream" = Option<String>, Query, description = "Only this stream's, e.g. `account/101`"),
        ("after" = Option<String>, Query, pattern = r"^[^:]*:[\s\S]*/[\s\S]*:\+?[0-9]{1,19}$",
            description = "The `next_after` of the previous page: a letter's `id`, `subscriber:stream:position`"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "`{\"dead_letters\": [...], \"next_after\", \"counts\": {subscriber: letters}}`; each letter says the `stored_bytes` it takes", body = Object),
        (status = 400, description = "A bad query", body = ErrorBody),
    ))]
pub async fn dead_letters(State(state): State<AppState>, params: Params) -> Result<Json<Value>, ApiError> {
    let limit = params.limit(100, 1000)?;
    let subscriber = params.text("subscriber")?;
    let stream = params.stream("stream")?;
    let after = match params.text("after")? {
        None => None,
        Some(text) => Some(text.parse::<DeadLetterKey>().map_err(|()| {
            ApiError::bad_request(
                "invalid_query",
                "after must be a dead letter's id (subscriber:stream:position)",
            )
        })?),
    };
    let letters =
        state.store.dead_letters(subscriber.as_deref(), stream.as_ref(), after.as_ref(), limit).await?;
    // Kept counts, never a scan of the letters.
    let mut counts = state.store.dead_letter_counts().await?;
    if let Some(subscriber) = &subscriber {
        counts.retain(|name, _| name == subscriber);
    }
    let next_after =
        (letters.len() == limit).then(|| letters.last().map(|(l, _)| l.key().to_string())).flatten();
    let letters: Vec<Value> = letters
        .into_iter()
        .map(|(d, stored_bytes)| {
            json!({
                "id": d.key().to_string(),
                "subscriber": d.subscriber,
                "stream": d.stream,
                "position": d.position,
                "event_type": d.event_type,
                "waiting_behind": d.behind,
                "command_index": d.command_index,
                "target": d.target,
                "command_type": d.command_type,
                "error": d.error,
                "attempts": d.attempts,
                "parked_at": crate::time::rfc3339_micros(d.parked_at_micros),
                "stored_bytes": stored_bytes,
            })
        })
        .collect();
    Ok(Json(json!({"dead_letters": letters, "next_after": next_after, "counts": counts})))
}

/// `POST /routing/dead-letters/retry?subscriber=&stream=` (admin): deliver the parked
/// sequences again, in order, with the components now active (typically after deploying a
/// fixed version). Without `subscriber`, every subscriber's; without `stream`, every
/// parked stream's (so a stream alone is that stream for every subscriber). Answers what it
/// released; delivery goes on in the background.
#[utoipa::path(post, path = "/routing/dead-letters/retry", tag = "routing",
    summary = "Deliver parked sequences again, in order, with the active versions",
    security(("admin_token" = [])),
    params(
        ("subscriber" = Option<String>, Query, description = "The subscriber (default: every one)"),
        ("stream" = Option<String>, Query, description = "One parked stream (default: every one)"),
    ),
    responses(
        (status = 200, description = "`{\"retried\": [...], \"events\"}`", body = Object),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such subscriber", body = ErrorBody),
        (status = 503, description = "The subscriber is restarting", body = ErrorBody),
    ))]
pub async fn retry_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let (subscriber, stream) = sequence_params(&params)?;
    let released =
        state.routing.retry(subscriber.as_deref(), stream.as_ref()).await.map_err(routing_error)?;
    Ok(sequences_answer("retried", released))
}

/// `POST /routing/dead-letters/discard?subscriber=&stream=` (admin): drop parked sequences
/// on purpose (their events are never delivered to that subscriber). `subscriber` is
/// required; without `stream`, every parked stream of that subscriber.
#[utoipa::path(post, path = "/routing/dead-letters/discard", tag = "routing",
    summary = "Drop parked sequences on purpose",
    security(("admin_token" = [])),
    params(
        ("subscriber" = String, Query, description = "The subscriber"),
        ("stream" = Option<String>, Query, description = "One parked stream of that subscriber (default: every one)"),
    ),
    responses(
        (status = 200, description = "`{\"discarded\": [...], \"events\"}`", body = Object),
        (status = 400, description = "No subscriber named", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such subscriber", body = ErrorBody),
        (status = 503, description = "The subscriber is restarting", body = ErrorBody),
    ))]
pub async fn discard_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let (subscriber, stream) = sequence_params(&params)?;
    let subscriber = subscriber.ok_or_else(|| {
        ApiError::bad_request("invalid_query", "discard needs a subscriber (and optionally a stream)")
    })?;
    let dropped = state.routing.discard(&subscriber, stream.as_ref()).await.map_err(routing_error)?;
    Ok(sequences_answer("discarded", dropped))
}

/// What a retry or discard did: each stream under `verb`, and the events in all.
fn sequences_answer(verb: &str, actions: Vec<SequenceAction>) -> Json<Value> {
    let events: u64 = actions.iter().map(|a| a.events).sum();
    Json(json!({verb: actions, "events": events}))
}

/// `subscriber` and `stream` of a retry or discard.
fn sequence_params(params: &Params) -> Result<(Option<String>, Option<StreamId>), ApiError> {
    Ok((params.text("subscriber")?, params.stream("stream")?))
}

fn routing_error(error: RoutingError) -> ApiError {
    match error {
        RoutingError::UnknownSubscriber(_) => ApiError::not_found("unknown_subscriber", error.to_string()),
        RoutingError::Interrupted(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "subscriber_restarting", error.to_string())
        }
        RoutingError::Store(store) => store.into(),
        RoutingError::Elsewhere => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "routing_elsewhere", error.to_string())
        }
    }
}

/// `POST /routing/{subscriber}/rewind?to=<position>` (admin): deliver again every event
/// after `to` (default 0). Effects are deduplicated, so nothing happens twice.
#[utoipa::path(post, path = "/routing/{subscriber}/rewind", tag = "routing",
    summary = "Deliver every event after a position again (effects are deduplicated)",
    security(("admin_token" = [])),
    params(
        ("subscriber" = String, Path, description = "The subscriber (a component's name)"),
        ("to" = Option<u64>, Query, description = "Deliver again every event after this position (default 0)"),
    ),
    responses(
        (status = 200, description = "`{\"subscriber\", \"rewound_to\"}`", body = Object),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such subscriber", body = ErrorBody),
    ))]
pub async fn rewind(
    State(state): State<AppState>,
    Path(subscriber): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let to = params.u64("to")?.unwrap_or(0);
    state.routing.rewind(&subscriber, Position(to)).await.map_err(routing_error)?;
    Ok(Json(json!({"subscriber": subscriber, "rewound_to": to})))
}
