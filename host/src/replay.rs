//! Rebuilding an aggregate's state from its events with one component version: what an
//! actor does when it wakes or the active version changes, what a temporal read does, and
//! what a deploy's replay check does with a new version before it may go live.
//!
//! Events are read in chunks and each chunk is folded in one guest call (`apply-events`):
//! crossing the component boundary costs more than a fold step. When a chunk traps, the
//! events of that chunk are folded one at a time to name the one that failed.

use crate::runtime::{AggregateComponent, GuestError};
use crate::store::{EventStore, StoreError, StreamId, Version};
use cairn_guest::glue::RawEvent;

/// Events read from the store per chunk.
const CHUNK: usize = 4096;

/// Why a stream's state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The component failed on the event at `version` (its fold trapped or ran out of time,
    /// e.g. because it cannot decode that event).
    #[error("event {version} ({event_type}): {error}")]
    Guest { version: Version, event_type: String, error: GuestError },
}

/// Fold the events of `stream` after `version`, up to `up_to`, into `state`; returns the
/// state and the version it reached.
pub fn replay(
    component: &AggregateComponent,
    store: &EventStore,
    stream: &StreamId,
    mut state: Option<Vec<u8>>,
    mut version: Version,
    up_to: Version,
) -> Result<(Option<Vec<u8>>, Version), ReplayError> {
    while version < up_to {
        let events = store.read_stream_range(stream, version + 1, up_to, CHUNK)?;
        let Some(last) = events.last().map(|e| e.version) else { break };
        let first = version + 1;
        let raw: Vec<RawEvent> =
            events.into_iter().map(|e| RawEvent { event_type: e.event_type, payload: e.payload }).collect();
        state = match component.apply_events(state.as_deref(), &raw) {
            Ok(folded) => folded,
            Err(error) => return Err(locate_failure(component, state, first, &raw, error)),
        };
        version = last;
    }
    Ok((state, version))
}

/// Fold `events` (versions from `first`) one at a time to find the one the component fails
/// on; `chunk_error` is the answer if none fails alone.
fn locate_failure(
    component: &AggregateComponent,
    mut state: Option<Vec<u8>>,
    first: Version,
    events: &[RawEvent],
    chunk_error: GuestError,
) -> ReplayError {
    for (offset, event) in events.iter().enumerate() {
        match component.apply_events(state.as_deref(), std::slice::from_ref(event)) {
            Ok(folded) => state = folded,
            Err(error) => {
                return ReplayError::Guest {
                    version: first + offset as Version,
                    event_type: event.event_type.clone(),
                    error,
                };
            }
        }
    }
    let last = events.last();
    ReplayError::Guest {
        version: first + events.len().saturating_sub(1) as Version,
        event_type: last.map(|e| e.event_type.clone()).unwrap_or_default(),
        error: chunk_error,
    }
}
