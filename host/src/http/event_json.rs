//! An event as users see it over HTTP (API.md's EVENT): in answers and in the live stream.

use crate::msgpack::to_json;
use crate::store::StoredEvent;
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
        }
    }
}

pub fn events_json(events: &[StoredEvent]) -> Vec<EventJson> {
    events.iter().map(EventJson::from).collect()
}
