//! Stored events as a component version's consumers read them: each event stored in an
//! older schema than the version of its stream's type declares passes through that
//! version's upcasters (docs/ARCHITECTURE.md, "Schema versions and upcasting"). Folds,
//! reactions, projections and `?upcast=true` reads all go through here; the log itself is
//! never rewritten.
//!
//! Upcasting runs guest code: call it where guest calls may run (a blocking thread, or
//! where the caller already calls guests).

use crate::components::ActiveAggregate;
use crate::runtime::{AggregateComponent, GuestError};
use crate::store::StoredEvent;
use cairn_wire::RawStoredEvent;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A stored event its stream type's upcasters could not read.
#[derive(Debug, thiserror::Error)]
#[error("{event} cannot be upcast: {error}")]
pub struct UpcastError {
    /// Where it is in the events that were upcast.
    pub index: usize,
    /// Which it is: its stream, version, type and stored schema.
    pub event: String,
    pub error: GuestError,
}

impl UpcastError {
    /// Worth trying again as it is: no event's fault (every guest instance slot was busy).
    pub fn is_transient(&self) -> bool {
        self.error.is_transient()
    }
}

/// Whether `component` reads `event` in another shape than the one it is stored in.
pub fn is_stale(component: &AggregateComponent, event: &StoredEvent) -> bool {
    component.info().schema_of(&event.event_type) != event.schema
}

/// Upcast every one of `events` (all of one stream type) with `component`, in place.
pub fn upcast_with(component: &AggregateComponent, events: &mut [StoredEvent]) -> Result<(), UpcastError> {
    let all: Vec<usize> = (0..events.len()).collect();
    upcast_at(component, events, &all)
}

/// Upcast, in place, the events of `events` that `select` picks, each with the active
/// version of its stream's type as `active` names it. Events of a type with no active
/// aggregate component stay as they are stored. On a failure, every event before the one
/// named (the first that failed, whatever its type) is upcast: a reader may take those.
pub fn upcast_selected(
    active: impl Fn(&str) -> Option<Arc<ActiveAggregate>>,
    events: &mut [StoredEvent],
    select: impl Fn(&StoredEvent) -> bool,
) -> Result<(), UpcastError> {
    let mut by_type: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        if select(event) {
            by_type.entry(event.stream_type.as_str()).or_default().push(index);
        }
    }
    let by_type: Vec<(String, Vec<usize>)> =
        by_type.into_iter().map(|(type_name, indices)| (type_name.to_owned(), indices)).collect();
    let mut first_failure: Option<UpcastError> = None;
    for (type_name, indices) in by_type {
        if let Some(producer) = active(&type_name)
            && let Err(error) = upcast_at(&producer.component, events, &indices)
            && first_failure.as_ref().is_none_or(|first| error.index < first.index)
        {
            first_failure = Some(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Upcast the events at `indices` with `component`, in place. The payloads move into the
/// guest call and back, so an event costs no copy unless it is stale.
fn upcast_at(
    component: &AggregateComponent,
    events: &mut [StoredEvent],
    indices: &[usize],
) -> Result<(), UpcastError> {
    let stale: Vec<usize> = indices.iter().copied().filter(|&i| is_stale(component, &events[i])).collect();
    if stale.is_empty() {
        return Ok(());
    }
    let mut raw: Vec<RawStoredEvent> = stale
        .iter()
        .map(|&i| RawStoredEvent {
            event_type: events[i].event_type.clone(),
            schema: events[i].schema,
            payload: std::mem::take(&mut events[i].payload),
        })
        .collect();
    let upcast = component.upcast(&mut raw);
    // Every payload goes back (the failed event's unchanged), whatever the answer.
    for (&i, event) in stale.iter().zip(raw) {
        let stored = &mut events[i];
        stored.event_type = event.event_type;
        stored.schema = event.schema;
        stored.payload = event.payload;
    }
    upcast.map_err(|(at, error)| {
        let event = &events[stale[at]];
        let described = format!(
            "{} event {} ({:?} at schema {})",
            event.stream(),
            event.version,
            event.event_type,
            event.schema
        );
        UpcastError { index: stale[at], event: described, error }
    })
}
