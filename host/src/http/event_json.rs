//! An event as users see it over HTTP (API.md's EVENT): in answers and in the live stream.

use super::AppState;
use super::error::ApiError;
use crate::msgpack::to_json;
use crate::store::StoredEvent;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

/// An event as users see it (API.md's EVENT).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventJson {
    /// `type/id`, e.g. `account/101`.
    pub stream: String,
    /// Its place in its stream, from 1.
    pub version: u64,
    /// Its place in the global log, from 1.
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Object)]
    pub data: Value,
    /// When it was committed, RFC 3339 in UTC.
    pub recorded_at: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub component_version: u32,
    /// The schema version of `data`: as stored, or as the active version's consumers read
    /// it with `?upcast=true`.
    pub schema: u32,
    /// The trace (W3C trace id, 32 hex digits) of the command that caused it: one for every
    /// event of a saga that started with a `traceparent`, or while spans are exported.
    pub trace_id: Option<String>,
}

impl From<&StoredEvent> for EventJson {
    fn from(event: &StoredEvent) -> Self {
        EventJson {
            stream: format!("{}/{}", event.stream_type, event.stream_id),
            version: event.version.get(),
            position: event.position.get(),
            event_type: event.event_type.clone(),
            data: to_json(&event.payload),
            recorded_at: event.recorded_at(),
            correlation_id: event.correlation_id.clone(),
            causation_id: event.causation_id.clone(),
            component_version: event.component_version.get(),
            schema: event.schema,
            trace_id: event.trace.map(|trace| trace.trace_id_hex()),
        }
    }
}

pub fn events_json(events: &[StoredEvent]) -> Vec<EventJson> {
    events.iter().map(EventJson::from).collect()
}

/// `events` as a read asked for them: as stored, or with `upcast` as the active version of
/// each one's producer reads them (`?upcast=true`; API.md's EVENT).
pub async fn as_read(
    state: &AppState,
    mut events: Vec<StoredEvent>,
    upcast: bool,
) -> Result<Vec<StoredEvent>, ApiError> {
    if !upcast {
        return Ok(events);
    }
    let components = state.components.clone();
    // Upcasting runs guest code: off the async threads.
    tokio::task::spawn_blocking(move || {
        crate::upcast::upcast_selected(|t| components.active(t), &mut events, |_| true)?;
        Ok(events)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the upcast task failed: {e}")))?
}

impl From<crate::upcast::UpcastError> for ApiError {
    fn from(error: crate::upcast::UpcastError) -> Self {
        if error.is_transient() {
            return error.error.into();
        }
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "upcast_failed", error.to_string())
    }
}
