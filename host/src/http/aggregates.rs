//! Commands and reads of one aggregate instance.

use super::AppState;
use super::error::ApiError;
use super::event_json::{EventJson, as_read, events_json};
use super::extract::{Body, Params, Path, header_text, if_match};
use super::openapi::ErrorBody;
use crate::actor::{CommandError, CommandReply, CommandRequest};
use crate::msgpack;
use crate::replay::{Fold, Folded, replay_with, wait_for};
use crate::store::{Fingerprint, Page, Snapshot, StreamId, StreamIdError, Version};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::MAX_HEADER_LEN;
use crate::traces::TraceParent;
const MAX_EVENTS_PAGE: usize = 1000;

/// A command: `{"type": "OpenAccount", "data": {"initial_balance": 25000}}`.
#[derive(Deserialize, ToSchema)]
pub(super) struct CommandBody {
    /// The command's type name, as the component knows it.
    #[serde(rename = "type")]
    command_type: String,
    /// The command's fields; may be omitted for a command without fields.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// The answer to an accepted command, sent once its events are durable.
#[derive(Serialize, ToSchema)]
pub(super) struct CommandAnswer {
    #[serde(rename = "type")]
    type_name: String,
    id: String,
    /// The aggregate's version after the command (unchanged when it emitted no events).
    version: u64,
    events: Vec<EventJson>,
}

/// An aggregate's state at a version.
#[derive(Serialize, ToSchema)]
pub(super) struct StateAnswer {
    #[serde(rename = "type")]
    type_name: String,
    id: String,
    version: u64,
    /// The state as the component encodes it.
    #[schema(value_type = Object)]
    state: Value,
}

#[derive(Serialize, ToSchema)]
pub(super) struct EventsAnswer {
    pub events: Vec<EventJson>,
    /// Where the next page starts (`after` of the log and of a saga) when this one was full,
    /// by count or by its byte budget; absent when this page reached the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
    /// Where the next page of a stream's events starts (`from`), likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_from: Option<u64>,
}

impl EventsAnswer {
    pub(super) fn with_next(events: Vec<EventJson>, next_after: Option<u64>) -> Self {
        EventsAnswer { events, next_after, next_from: None }
    }
}

/// The most of stored event bytes one page of events carries (beyond its first event): a
/// count alone would let one page of 1 MiB events hold gigabytes.
pub(super) const PAGE_BYTES: usize = 4 << 20;

/// The stream a path names, checking that its type is deployed (404) and its id usable (400).
fn stream_of(state: &AppState, type_name: &str, id: &str) -> Result<StreamId, ApiError> {
    if state.components.active(type_name).is_none() {
        return Err(ApiError::not_found(
            "unknown_type",
            format!("no aggregate type {type_name:?} is deployed"),
        ));
    }
    StreamId::new(type_name, id)
        .map_err(|e: StreamIdError| ApiError::bad_request("invalid_id", e.to_string()))
}

fn with_etag(version: u64, body: impl Serialize) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// In a cluster, an answer names the node whose actor gave it (`X-Cairn-Node`), forwarded
/// or not: what an operator looks at to see where a stream lives.
fn answered_here(state: &AppState, mut response: Response) -> Response {
    if let Some(cluster) = &state.cluster
        && let Ok(node) = HeaderValue::from_str(cluster.node())
    {
        response.headers_mut().insert("x-cairn-node", node);
    }
    response
}

/// Decode a command body: `{"type": "...", "data": {...}}` (`data` optional): its type and
/// its data as a JSON object.
fn parse_command(body: &[u8]) -> Result<(String, Value), ApiError> {
    let parsed: CommandBody = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        } else {
            ApiError::bad_request(
                "invalid_command",
                format!("a command is {{\"type\": \"...\", \"data\": {{...}}}}: {e}"),
            )
        }
    })?;
    let command_type = parsed.command_type.trim();
    if command_type.is_empty() {
        return Err(ApiError::bad_request("invalid_command", "the command type must not be empty"));
    }
    if command_type == cairn_wire::COMMAND_REJECTED {
        return Err(ApiError::bad_request(
            "invalid_command",
            format!("{command_type} is reserved for the host"),
        ));
    }
    let data = match parsed.data {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(object @ Value::Object(_)) => object,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_command", "data must be a JSON object"));
        }
    };
    Ok((command_type.to_owned(), data))
}

async fn run_command(
    state: AppState,
    stream: StreamId,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (command_type, data) = parse_command(body)?;
    if let Some(active) = state.components.active(&stream.type_name)
        && active.component.info().internal(&command_type).is_some()
    {
        // The actor refuses it too (it decides with the version it runs); refusing here
        // keeps a client's saga step out of the mailbox altogether.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            crate::actor::INTERNAL_COMMAND,
            format!(
                "{command_type} is one of {}'s saga steps: only the host's reactions may send it, not a client",
                stream.type_name
            ),
        ));
    }
    let forwarded = super::cluster::answer_elsewhere(
        &state,
        &stream,
        headers,
        "command",
        axum::http::Method::POST,
        Some("commands"),
        body,
    );
    if let Some(answer) = forwarded.await? {
        return Ok(answer);
    }
    // Time-ordered (UUIDv7), so the saga index takes new ids at its right edge instead of
    // dirtying a random page of it on every commit.
    let correlation_id = header_text(headers, "x-correlation-id", MAX_HEADER_LEN)?
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "command",
        r#type = %stream.type_name,
        id = %stream.id,
        command = %command_type,
        correlation_id = %correlation_id,
    );
    // A `traceparent` that is not one starts a trace of its own (W3C Trace Context).
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let trace = crate::traces::continue_trace(&span, parent);
    let idempotency_key = header_text(headers, "idempotency-key", MAX_HEADER_LEN)?;
    let fingerprint = idempotency_key.as_ref().map(|_| Fingerprint::of(&command_type, &data));
    let request = CommandRequest {
        payload: msgpack::to_msgpack(&data),
        command_type,
        expected_version: if_match(headers)?.map(Version),
        idempotency_key,
        fingerprint,
        correlation_id,
        causation: None,
        span: span.clone(),
        trace,
    };
    let started = std::time::Instant::now();
    let type_name = stream.type_name.clone();
    let sent = tracing::Instrument::instrument(state.actors.send(stream, request), span.clone()).await;
    // The commit happened in the writer thread with other actors' batches; its outcome is
    // told here, in the command's own span.
    match &sent {
        Ok(reply) => tracing::debug!(
            parent: &span,
            version = reply.version.get(),
            events = reply.events.len(),
            first_position = reply.events.first().map(|e| e.position.get()),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "committed"
        ),
        Err(error) => tracing::debug!(parent: &span, "not committed: {error}"),
    }
    let (type_name, outcome) = match &sent {
        Ok(_) => (type_name.as_str(), "accepted"),
        Err(CommandError::Rejected(_)) => (type_name.as_str(), "rejected"),
        // A name nobody deployed must not become a label: anyone could make up thousands.
        Err(CommandError::UnknownType(_)) => ("_unknown", "failed"),
        Err(_) => (type_name.as_str(), "failed"),
    };
    crate::telemetry::command(type_name, outcome, started.elapsed());
    let CommandReply { stream, version, events, .. } = sent?;
    let version = version.get();
    let answer =
        CommandAnswer { type_name: stream.type_name, id: stream.id, version, events: events_json(&events) };
    Ok(answered_here(&state, with_etag(version, answer)))
}

/// `POST /aggregates/{type}/{id}/commands`
#[utoipa::path(post, path = "/aggregates/{type}/{id}/commands", tag = "aggregates",
    summary = "Send a command to an aggregate",
    params(
        ("type" = String, Path, description = "The aggregate type, e.g. `account`"),
        ("id" = String, Path, description = "The aggregate's id"),
        ("If-Match" = Option<String>, Header, description = "Append only if the aggregate is at this version: `\"3\"`"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key gets the first answer and stores nothing new"),
        ("X-Correlation-Id" = Option<String>, Header, description = "Carried by every event the command causes; the host makes one without it"),
        ("traceparent" = Option<String>, Header, description = "A W3C trace context: every event of the saga carries its trace id; a malformed one is ignored"),
    ),
    request_body(content = CommandBody, description = "The command"),
    responses(
        (status = 200, description = "Accepted; its events are durable", body = CommandAnswer,
            headers(("ETag" = String, description = "The aggregate's version, quoted"))),
        (status = 400, description = "Malformed JSON, a command the component cannot decode, or a bad id or header", body = ErrorBody),
        (status = 403, description = "`internal_command`: only the host's reactions may send it; `origin_not_allowed`: a web page of another origin", body = ErrorBody),
        (status = 404, description = "No aggregate type of that name is deployed", body = ErrorBody),
        (status = 409, description = "If-Match names another version", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 421, description = "`host_not_allowed`: a Host the host does not answer for", body = ErrorBody),
        (status = 422, description = "The aggregate rejected the command, `idempotency_key_reused`, or the guest trapped or ran out of fuel", body = ErrorBody),
        (status = 429, description = "The aggregate's mailbox is full", body = ErrorBody),
        (status = 503, description = "The host is overloaded or shutting down, or `storage_unavailable`: the command was not stored", body = ErrorBody),
    ))]
pub async fn command(
    State(state): State<AppState>,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let stream = stream_of(&state, &type_name, &id)?;
    run_command(state, stream, &headers, &body).await
}

/// `POST /aggregates/{type}/commands`: the host picks a new unique id. With an
/// `Idempotency-Key`, the id is derived from the type and the key, so a retry reaches the
/// same new aggregate and gets the first answer instead of creating another one.
#[utoipa::path(post, path = "/aggregates/{type}/commands", tag = "aggregates",
    summary = "Send a command to a new aggregate whose id the host picks",
    params(
        ("type" = String, Path, description = "The aggregate type, e.g. `order`"),
        ("If-Match" = Option<String>, Header, description = "Append only if the aggregate is at this version: `\"3\"`"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key gets the first answer and stores nothing new"),
        ("X-Correlation-Id" = Option<String>, Header, description = "Carried by every event the command causes; the host makes one without it"),
        ("traceparent" = Option<String>, Header, description = "A W3C trace context: every event of the saga carries its trace id; a malformed one is ignored"),
    ),
    request_body(content = CommandBody, description = "The command"),
    responses(
        (status = 200, description = "Accepted; its events are durable", body = CommandAnswer,
            headers(("ETag" = String, description = "The aggregate's version, quoted"))),
        (status = 400, description = "Malformed JSON, a command the component cannot decode, or a bad id or header", body = ErrorBody),
        (status = 403, description = "`internal_command`: only the host's reactions may send it; `origin_not_allowed`: a web page of another origin", body = ErrorBody),
        (status = 404, description = "No aggregate type of that name is deployed", body = ErrorBody),
        (status = 409, description = "If-Match names another version", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 421, description = "`host_not_allowed`: a Host the host does not answer for", body = ErrorBody),
        (status = 422, description = "The aggregate rejected the command, `idempotency_key_reused`, or the guest trapped or ran out of fuel", body = ErrorBody),
        (status = 429, description = "The aggregate's mailbox is full", body = ErrorBody),
        (status = 503, description = "The host is overloaded or shutting down, or `storage_unavailable`: the command was not stored", body = ErrorBody),
    ))]
pub async fn command_new_id(
    State(state): State<AppState>,
    Path(type_name): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let id = match header_text(&headers, "idempotency-key", MAX_HEADER_LEN)? {
        Some(key) => id_for_key(&type_name, &key),
        // Time-ordered like generated correlation ids: new streams land together in the index.
        None => uuid::Uuid::now_v7().to_string(),
    };
    let stream = stream_of(&state, &type_name, &id)?;
    run_command(state, stream, &headers, &body).await
}

/// A UUID-shaped id that only this type and idempotency key give.
fn id_for_key(type_name: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(type_name).chain_update([0]).chain_update(key).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Version 8 (custom) and the RFC 9562 variant: a valid UUID, never a random v4 one.
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// `GET /aggregates/{type}/{id}` and `?version=N` (the state as it was after event N).
#[utoipa::path(get, path = "/aggregates/{type}/{id}", tag = "aggregates",
    summary = "An aggregate's state, now or as it was at a version",
    params(
        ("type" = String, Path, description = "The aggregate type"),
        ("id" = String, Path, description = "The aggregate's id"),
        ("version" = Option<u64>, Query, description = "The state as it was after this event (a temporal query)"),
    ),
    responses(
        (status = 200, description = "The state", body = StateAnswer,
            headers(("ETag" = String, description = "The version, quoted"))),
        (status = 400, description = "A bad id or query", body = ErrorBody),
        (status = 404, description = "Unknown type, a stream with no events, or a version not reached yet", body = ErrorBody),
        (status = 422, description = "The guest trapped while folding the events", body = ErrorBody),
        (status = 503, description = "Too many past versions are being folded now (Retry-After)", body = ErrorBody),
    ))]
pub async fn state(
    State(state): State<AppState>,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let stream = stream_of(&state, &type_name, &id)?;
    // The state now is the owner's actor's; a past version is folded from the log, which
    // every host reads alike.
    if params.u64("version")?.is_none() {
        let forwarded = super::cluster::answer_elsewhere(
            &state,
            &stream,
            &headers,
            "state",
            axum::http::Method::GET,
            None,
            &[],
        );
        if let Some(answer) = forwarded.await? {
            return Ok(answer);
        }
    }
    let Some((head, _)) = state.store.stream_head(&stream).await? else {
        return Err(ApiError::not_found("stream_not_found", format!("{stream} has no events")));
    };
    let (version, bytes) = match params.u64("version")? {
        None => {
            let current = state.actors.state(stream.clone()).await?;
            if current.version == 0 {
                // The first commit is in the log but its actor has not settled it yet (the
                // writer publishes the head before it answers): no events as far as reads go.
                return Err(ApiError::not_found("stream_not_found", format!("{stream} has no events")));
            }
            (current.version.get(), current.state)
        }
        Some(0) => {
            return Err(ApiError::bad_request("invalid_query", "version must be at least 1"));
        }
        Some(wanted) if wanted > head.get() => {
            return Err(ApiError::not_found(
                "version_not_found",
                format!("{stream} is at version {head}; version {wanted} does not exist yet"),
            ));
        }
        Some(wanted) => (wanted, state_at(&state, &stream, wanted).await?),
    };
    let answer = StateAnswer {
        type_name: stream.type_name,
        id: stream.id,
        version,
        state: bytes.as_deref().map(msgpack::to_json).unwrap_or(Value::Null),
    };
    Ok(answered_here(&state, with_etag(version, answer)))
}

/// A temporal query: fold events up to `version` with the active component, from the
/// nearest older snapshot it made, off the async threads.
///
/// The stream keeps a snapshot at every interval, so this folds about one interval at most.
/// Where this version has made no snapshots yet (right after a deploy), the fold is longer,
/// and keeps this version's states at the intervals it passes, so the next read is short.
/// Folds run a few at a time (`--max-concurrent-folds`; beyond it 503 with `Retry-After`),
/// and one whose request has ended (a timeout, a client gone) stops at its next chunk.
async fn state_at(state: &AppState, stream: &StreamId, version: u64) -> Result<Option<Vec<u8>>, ApiError> {
    let version = Version(version);
    let active = state.components.active(&stream.type_name).ok_or_else(|| {
        ApiError::not_found("unknown_type", format!("no aggregate type {:?}", stream.type_name))
    })?;
    let permit = state.folds.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many reads of past versions are being folded now; retry shortly",
        )
        .retry_after(1)
    })?;
    let interval = crate::actor::snapshot_interval(&active, state.default_snapshot_interval);
    // A fold stops when the request that wanted it is dropped.
    let cancelled = tokio_util::sync::CancellationToken::new();
    let _cancel_when_dropped = cancelled.clone().drop_guard();
    let (store, writer, stream) = (state.store.clone(), state.writer.clone(), stream.clone());
    let folded = tokio::task::spawn_blocking(move || -> Result<Folded, ApiError> {
        let _permit = permit;
        let digest = active.component.digest().as_bytes();
        let start = wait_for(store.snapshot_at_or_before(&stream, version, digest))?;
        let (state, from) =
            start.map_or((None, Version::ZERO), |snapshot| (Some(snapshot.state), snapshot.version));
        let fold = Fold {
            cancelled: Some(&cancelled),
            checkpoint_every: (version.saturating_sub(from) > interval).then_some(interval),
        };
        let mut folded = replay_with(&active.component, &store, &stream, state, from, version, &fold)
            .map_err(CommandError::from)?;
        if !folded.checkpoints.is_empty() {
            let snapshots = std::mem::take(&mut folded.checkpoints)
                .into_iter()
                .map(|(version, state)| Snapshot {
                    version,
                    digest: digest.to_vec(),
                    state: state.unwrap_or_default(),
                })
                .collect();
            // Best effort, in the background: the answer does not wait for it.
            let stream = stream.clone();
            tokio::runtime::Handle::current().spawn(async move {
                if let Err(error) = writer.keep_snapshots(&stream, snapshots).await {
                    tracing::warn!(%stream, "could not keep the snapshots a fold passed: {error}");
                }
            });
        }
        Ok(folded)
    })
    .await
    .map_err(|e| ApiError::internal(format!("temporal query task failed: {e}")))??;
    Ok(folded.state)
}

/// `GET /aggregates/{type}/{id}/events?from=<version>&limit=<n>`
#[utoipa::path(get, path = "/aggregates/{type}/{id}/events", tag = "aggregates",
    summary = "An aggregate's events in version order",
    params(
        ("type" = String, Path, description = "The aggregate type"),
        ("id" = String, Path, description = "The aggregate's id"),
        ("from" = Option<u64>, Query, description = "The first version (default 1)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000); a page also stops once its events reach 4 MiB"),
        ("upcast" = Option<bool>, Query, description = "Answer the events as the active version's consumers read them (after its upcasters), not as stored"),
    ),
    responses(
        (status = 200, description = "A page of events; `next_from` is where the next page starts when there may be more", body = EventsAnswer),
        (status = 400, description = "A bad id or query", body = ErrorBody),
        (status = 404, description = "Unknown type or a stream with no events", body = ErrorBody),
        (status = 422, description = "With `upcast`: the active version's upcasters fail on an event (`upcast_failed`, naming it)", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Path((type_name, id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<EventsAnswer>, ApiError> {
    let stream = stream_of(&state, &type_name, &id)?;
    let from = params.u64("from")?.unwrap_or(1);
    let limit = params.limit(100, MAX_EVENTS_PAGE)?;
    if state.store.stream_head(&stream).await?.is_none() {
        return Err(ApiError::not_found("stream_not_found", format!("{stream} has no events")));
    }
    let upcast = params.flag("upcast")?;
    let events = state.store.read_stream(&stream, Version(from), Page::new(limit, PAGE_BYTES)).await?;
    let next_from = (events.len() == limit || super::events::page_full(&events))
        .then(|| events.last().map(|e| (e.version + 1).get()))
        .flatten();
    let events = as_read(&state, events, upcast).await?;
    Ok(Json(EventsAnswer { events: events_json(&events), next_after: None, next_from }))
}
