//! Health, components, deploy, and the answers for unknown routes.

use super::AppState;
use super::error::ApiError;
use super::extract::{Params, Path};
use super::openapi::ErrorBody;
use crate::components::{ComponentSummary, DeployOptions, Deployed, SwitchCheck};
use crate::routing::{RoutingError, SequenceAction};
use crate::store::DeadLetterKey;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `GET /healthz`
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "The process is up",
    responses((status = 200, description = "`{\"status\": \"ok\", \"head_position\", \"live_actors\"}`", body = Object)))]
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(
        json!({"status": "ok", "head_position": state.store.head_position(), "live_actors": state.actors.live()}),
    )
}

/// `GET /readyz`: 200 only when the host can take commands: the writer thread is alive, its
/// last commit succeeded, and components are loaded; else 503 `not_ready` with the reason.
/// A projection that has stopped (a view that no longer follows the log) does not stop the
/// host taking commands; it is named under `degraded`, with why.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The host can take commands",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"head_position\", \"degraded\": [{\"projection\", \"reason\"}], \"store_reopened\": {\"error\", \"failed_at\", \"reopened_at\", \"unavailable_ms\"}}`", body = Object),
        (status = 503, description = "`not_ready`: the writer is gone, its last commit failed, or no component is loaded", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let problem = state
        .writer
        .problem()
        .or_else(|| state.components.is_empty().then(|| "no components are loaded".to_owned()));
    match problem {
        None => {
            let degraded: Vec<Value> = state
                .projections
                .status()?
                .into_iter()
                .filter_map(|p| {
                    let failure = p.failure.or_else(|| p.rebuild.and_then(|r| r.failure))?;
                    Some(
                        json!({"projection": p.name, "position": failure.position, "reason": failure.reason}),
                    )
                })
                .collect();
            let mut answer = json!({"status": "ready", "head_position": state.store.head_position()});
            if !degraded.is_empty() {
                answer["degraded"] = Value::Array(degraded);
            }
            // The last time the store failed with an I/O error and was opened again.
            if let Some(reopening) = state.writer.last_reopening() {
                answer["store_reopened"] = json!(reopening);
            }
            Ok(Json(answer))
        }
        Some(reason) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).retry_after(1))
        }
    }
}

/// `GET /metrics`: Prometheus text format. Counters and histograms come from where things
/// happen; the gauges of the host's state are read now.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "Metrics could not be installed in this process", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use crate::telemetry::{gauge, labelled_gauge};
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        ));
    };
    let head = state.store.head_position();
    gauge("cairn_head_position", head as f64);
    gauge("cairn_live_actors", state.actors.live() as f64);
    let (queued, deepest) = state.actors.queued();
    gauge("cairn_mailbox_messages", queued as f64);
    gauge("cairn_mailbox_depth_max", deepest as f64);
    gauge("cairn_guest_instances", state.components.guest_instances() as f64);
    for subscriber in state.routing.status()? {
        let name = subscriber.name.as_str();
        labelled_gauge("cairn_routing_lag_events", "subscriber", name, subscriber.lag as f64);
        labelled_gauge(
            "cairn_routing_in_flight_events",
            "subscriber",
            name,
            subscriber.counters.in_flight as f64,
        );
        labelled_gauge("cairn_dead_letters", "subscriber", name, subscriber.dead_letters as f64);
    }
    for projection in state.projections.status()? {
        let name = projection.name.as_str();
        labelled_gauge("cairn_projection_lag_events", "projection", name, projection.lag as f64);
        let failed =
            projection.failure.is_some() || projection.rebuild.as_ref().is_some_and(|r| r.failure.is_some());
        labelled_gauge("cairn_projection_failed", "projection", name, if failed { 1.0 } else { 0.0 });
        let rebuilding = projection.rebuild.as_ref().map_or(0.0, |r| r.progress);
        labelled_gauge("cairn_projection_rebuild_progress", "projection", name, rebuilding);
    }
    handle.run_upkeep();
    let text = handle.render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// `GET /components`
#[utoipa::path(get, path = "/components", tag = "components",
    summary = "Every component: its versions and the active one",
    responses((status = 200, description = "The components", body = Vec<ComponentSummary>)))]
pub async fn components(State(state): State<AppState>) -> Json<Vec<ComponentSummary>> {
    Json(state.components.list())
}

/// `GET /routing`: each subscriber's cursor, lag, counters, restarts and dead letters.
#[utoipa::path(get, path = "/routing", tag = "routing",
    summary = "Each subscriber's cursor, lag, deliveries, restarts and dead letters",
    responses((status = 200, description = "`{\"subscribers\": [...]}`", body = Object)))]
pub async fn routing(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"subscribers": state.routing.status()?})))
}

/// `GET /routing/dead-letters?subscriber=&stream=&after=&limit=`: parked events in
/// (subscriber, stream, position) order, so each stream's sequence reads in order. `after`
/// is the `id` of the last letter of the previous page (`next_after`).
#[utoipa::path(get, path = "/routing/dead-letters", tag = "routing",
    summary = "Parked events in (subscriber, stream, position) order",
    params(
        ("subscriber" = Option<String>, Query, description = "Only this subscriber's"),
        ("stream" = Option<String>, Query, description = "Only this stream's, e.g. `account/101`"),
        ("after" = Option<String>, Query, description = "The `next_after` of the previous page"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "`{\"dead_letters\": [...], \"next_after\", \"counts\": {subscriber: letters}}`; each letter says the `stored_bytes` it takes", body = Object),
        (status = 400, description = "A bad query", body = ErrorBody),
    ))]
pub async fn dead_letters(State(state): State<AppState>, params: Params) -> Result<Json<Value>, ApiError> {
    let limit = params.limit(100, 1000)?;
    let subscriber = params.text("subscriber")?;
    let stream = params.text("stream")?;
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
        state.store.dead_letters(subscriber.as_deref(), stream.as_deref(), after.as_ref(), limit)?;
    // Kept counts, never a scan of the letters.
    let mut counts = state.store.dead_letter_counts()?;
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
/// parked stream's. Answers what it released; delivery goes on in the background.
#[utoipa::path(post, path = "/routing/dead-letters/retry", tag = "routing",
    summary = "Deliver parked sequences again, in order, with the active versions",
    security(("admin_token" = [])),
    params(
        ("subscriber" = Option<String>, Query, description = "The subscriber"),
        ("stream" = Option<String>, Query, description = "One parked stream of that subscriber"),
    ),
    responses(
        (status = 200, description = "`{\"retried\": [...], \"events\"}`", body = Object),
        (status = 400, description = "A stream without its subscriber", body = ErrorBody),
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
        state.routing.retry(subscriber.as_deref(), stream.as_deref()).await.map_err(routing_error)?;
    Ok(sequences_answer("retried", released))
}

/// `POST /routing/dead-letters/discard?subscriber=&stream=` (admin): drop parked sequences
/// on purpose (their events are never delivered to that subscriber). `subscriber` is
/// required; without `stream`, every parked stream of that subscriber.
#[utoipa::path(post, path = "/routing/dead-letters/discard", tag = "routing",
    summary = "Drop parked sequences on purpose",
    security(("admin_token" = [])),
    params(
        ("subscriber" = Option<String>, Query, description = "The subscriber"),
        ("stream" = Option<String>, Query, description = "One parked stream of that subscriber"),
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
    let dropped = state.routing.discard(&subscriber, stream.as_deref()).await.map_err(routing_error)?;
    Ok(sequences_answer("discarded", dropped))
}

/// What a retry or discard did: each stream under `verb`, and the events in all.
fn sequences_answer(verb: &str, actions: Vec<SequenceAction>) -> Json<Value> {
    let events: u64 = actions.iter().map(|a| a.events).sum();
    Json(json!({verb: actions, "events": events}))
}

/// `subscriber` and `stream` of a retry or discard; a stream needs its subscriber.
fn sequence_params(params: &Params) -> Result<(Option<String>, Option<String>), ApiError> {
    let subscriber = params.text("subscriber")?;
    let stream = params.text("stream")?;
    if stream.is_some() && subscriber.is_none() {
        return Err(ApiError::bad_request("invalid_query", "a stream is named together with its subscriber"));
    }
    Ok((subscriber, stream))
}

fn routing_error(error: RoutingError) -> ApiError {
    match error {
        RoutingError::UnknownSubscriber(_) => ApiError::not_found("unknown_subscriber", error.to_string()),
        RoutingError::Interrupted(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "subscriber_restarting", error.to_string())
        }
        RoutingError::Store(store) => store.into(),
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
    state.routing.rewind(&subscriber, to).await.map_err(routing_error)?;
    Ok(Json(json!({"subscriber": subscriber, "rewound_to": to})))
}

/// Admin endpoints need `Authorization: Bearer <admin token>` (401 otherwise).
pub(super) fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
    ),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's .wasm bytes"),
    responses(
        (status = 200, description = "The deploy report", body = Deployed),
        (status = 400, description = "An empty body or a bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 413, description = "The component is too large", body = ErrorBody),
        (status = 422, description = "Not a valid component, the wrong world or kind, a replay failure, or too slow to compile", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
    body: axum::body::Body,
) -> Result<Json<Deployed>, ApiError> {
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
    Ok(Json(state.components.deploy(&name, bytes.to_vec(), options).await?))
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
    let bytes = state.components.version_bytes(&name, version)?;
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
        (status = 200, description = "`{\"name\", \"deleted_version\", \"freed_bytes\"}`", body = Object),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such component or version", body = ErrorBody),
        (status = 409, description = "It is the active version", body = ErrorBody),
    ))]
pub async fn delete_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let version = parse_version(&version)?;
    let freed = state.components.delete_version(&name, version).await?;
    Ok(Json(json!({"name": name, "deleted_version": version, "freed_bytes": freed})))
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
        (status = 200, description = "`{\"name\", \"active_version\", \"replay\"}`", body = Object),
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
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let switched = state.components.rollback(&name, switch_check(&state, &params)?).await?;
    Ok(Json(json!({"name": name, "active_version": switched.version, "replay": switched.replay})))
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
        (status = 200, description = "`{\"name\", \"active_version\", \"replay\"}`", body = Object),
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
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &headers)?;
    let version = params
        .u64("version")?
        .ok_or_else(|| ApiError::bad_request("invalid_query", "activate needs ?version=N"))?;
    let version =
        u32::try_from(version).map_err(|_| ApiError::not_found("unknown_version", "no such version"))?;
    let switched = state.components.activate(&name, version, switch_check(&state, &params)?).await?;
    Ok(Json(json!({"name": name, "active_version": switched.version, "replay": switched.replay})))
}

fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_version",
            format!("a component version is a positive integer, not {text:?}"),
        )
    })
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
