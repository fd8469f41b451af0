//! The deploy's consumer check: when a new version of an aggregate changes the schema of
//! some of its event types (or renames them), every other component that reads them must
//! still read them. A bounded sample of stored events of those types is upcast twice, by
//! the running version (what the consumers read today) and by the new one; every
//! subscribing aggregate's `react` and every reading projection's `handle` runs on both.
//!
//! - A consumer that traps (or runs out of fuel, or answers too much) on an event as the new
//!   version upcasts it, but not as the running one does, would break: the deploy is refused
//!   naming the consumer, the event and the guest's message.
//! - A reaction that sends other commands for the new shape than for the old reads it
//!   differently: a saga would go another way. The deploy is refused unless whoever deploys
//!   says they expect it (`allow_changed_reactions`).
//! - A projection that writes other documents is counted: a view is rebuilt from the log.
//!
//! Projections run against an empty view (each `get` finds nothing) and their writes are
//! thrown away: the check reads, it never changes a view.

use super::deploy::DeployError;
use super::{ActiveAggregate, ComponentRegistry};
use crate::replay::wait_for;
use crate::runtime::{AggregateComponent, DocumentReader, GuestError, ProjectionComponent};
use crate::store::{EventStore, Page, StoredEvent, StreamId, Version};
use crate::upcast::upcast_with;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Events of the changed types the check runs every consumer on, at most.
pub const CONSUMER_SAMPLE: usize = 200;
/// Events read from one sampled stream at a time.
const READ: Page = Page::new(512, 4 << 20);

/// What one consumer did with the sampled events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerReport {
    pub name: String,
    /// `reaction` (an aggregate's `react`) or `projection`.
    pub kind: &'static str,
    /// Sampled events it reads, in either shape.
    pub events: u64,
    /// Of those, the ones it answers differently in the new shape: other commands for a
    /// reaction, other documents for a projection.
    pub changed: u64,
}

/// What the consumer check found; empty when the new version changes no schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumersReport {
    /// The event types whose schema the new version changes, by their stored names.
    pub changed_types: Vec<String>,
    /// Stored events of those types that were sampled.
    pub sampled: u64,
    pub consumers: Vec<ConsumerReport>,
}

/// A consumer the check runs: another aggregate's reaction or a projection.
pub(super) enum Consumer {
    Reaction(String, Arc<ActiveAggregate>),
    Projection(String, Arc<ProjectionComponent>),
}

impl Consumer {
    fn name(&self) -> &str {
        match self {
            Consumer::Reaction(name, _) | Consumer::Projection(name, _) => name,
        }
    }
}

/// A view with no documents: what a projection reads during the check.
struct EmptyView;

impl DocumentReader for EmptyView {
    fn get(&mut self, _key: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// The event types whose schema `new` reads in another version than `running` does
/// (renamed types included: the old name is declared by the version that renames it).
fn changed_types(running: Option<&AggregateComponent>, new: &AggregateComponent) -> BTreeSet<String> {
    let running_schemas = running.map(|r| &r.info().schemas);
    let mut types: BTreeSet<&String> = new.info().schemas.keys().collect();
    types.extend(running_schemas.into_iter().flat_map(|s| s.keys()));
    types
        .into_iter()
        .filter(|t| {
            running.map_or(cairn_wire::FIRST_SCHEMA, |r| r.info().schema_of(t)) != new.info().schema_of(t)
        })
        .cloned()
        .collect()
}

/// Stored events from `streams`, in stream order, at most [`CONSUMER_SAMPLE`]: those of
/// `types` and those the running version upcasts (which may become one of `types`, renamed).
/// Each stored type has an equal share, so a frequent one does not crowd out a rare one.
fn sample(
    store: &EventStore,
    streams: &[StreamId],
    running: Option<&AggregateComponent>,
    types: &BTreeSet<String>,
) -> Result<Vec<StoredEvent>, DeployError> {
    let share = (CONSUMER_SAMPLE / types.len().max(1)).max(1);
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let mut sampled = Vec::new();
    for stream in streams {
        let mut from = Version(1);
        loop {
            let events = wait_for(store.read_stream(stream, from, READ))?;
            let Some(last) = events.last().map(|e| e.version) else { break };
            for event in events {
                let changed = types.contains(&event.event_type)
                    || running.is_some_and(|running| crate::upcast::is_stale(running, &event));
                let count = taken.entry(event.event_type.clone()).or_default();
                if changed && *count < share {
                    *count += 1;
                    sampled.push(event);
                    if sampled.len() >= CONSUMER_SAMPLE {
                        return Ok(sampled);
                    }
                }
            }
            from = last + 1;
        }
    }
    Ok(sampled)
}

/// Every component that reads events of `type_name`'s streams, but itself: the other
/// aggregates' reactions and the projections, their active versions.
pub(super) fn consumers_of(registry: &ComponentRegistry, type_name: &str) -> Vec<Consumer> {
    let mut consumers: Vec<Consumer> = registry
        .all_active()
        .into_iter()
        .filter(|(name, active)| {
            name != type_name
                && active.component.info().subscriptions.iter().any(|s| s.source_type == type_name)
        })
        .map(|(name, active)| Consumer::Reaction(name, active))
        .collect();
    for name in registry.projection_names() {
        if let Some(active) = registry.active_projection(&name)
            && active.component.info().subscriptions.iter().any(|s| s.source_type == type_name)
        {
            consumers.push(Consumer::Projection(name, active.component.clone()));
        }
    }
    consumers
}

/// Run the consumer check of `new`, a version of an aggregate whose `running` version is
/// read by `consumers`, over the events of the `sample` streams of its type written most
/// recently (those of the replay check).
pub(super) fn consumer_check(
    consumers: &[Consumer],
    running: Option<&ActiveAggregate>,
    new: &AggregateComponent,
    store: &EventStore,
    sample_streams: usize,
    allow_changed_reactions: bool,
) -> Result<ConsumersReport, DeployError> {
    let running = running.map(|r| &r.component);
    let types = changed_types(running, new);
    if types.is_empty() {
        return Ok(ConsumersReport::default());
    }
    let streams = wait_for(store.recent_streams(&new.info().type_name, sample_streams))?;
    let stored = sample(store, &streams, running, &types)?;
    let mut report = ConsumersReport {
        changed_types: types.into_iter().collect(),
        sampled: stored.len() as u64,
        consumers: consumers
            .iter()
            .map(|c| ConsumerReport {
                name: c.name().to_owned(),
                kind: match c {
                    Consumer::Reaction(..) => "reaction",
                    Consumer::Projection(..) => "projection",
                },
                events: 0,
                changed: 0,
            })
            .collect(),
    };
    for event in stored {
        let mut old = [event.clone()];
        if let Some(running) = running
            && upcast_with(running, &mut old).is_err()
        {
            // The running version cannot read it either: nobody reads it today.
            continue;
        }
        let mut new_shape = [event.clone()];
        if let Err(error) = upcast_with(new, &mut new_shape) {
            if error.is_transient() {
                return Err(DeployError::Interrupted(error.to_string()));
            }
            return Err(DeployError::ReplayFailed { stream: event.stream(), detail: error.to_string() });
        }
        let [old] = old;
        let [new_shape] = new_shape;
        for (consumer, counts) in consumers.iter().zip(&mut report.consumers) {
            let outcome = match consumer {
                Consumer::Reaction(name, active) => {
                    let is_reply = wait_for(store.is_reply_to(&event, name))?;
                    react_both(&active.component, &old, &new_shape, is_reply)
                }
                Consumer::Projection(_, component) => handle_both(component, &old, &new_shape),
            };
            match outcome {
                Outcome::NotRead => {}
                Outcome::Same => counts.events += 1,
                Outcome::Changed => {
                    counts.events += 1;
                    counts.changed += 1;
                    if counts.kind == "reaction" && !allow_changed_reactions {
                        let why = "its reaction sends other commands for the event as the new version \
                                   upcasts it than as the running version reads it (deploy with \
                                   allow_changed_reactions=true if that is intended)";
                        return Err(breaks(consumer, &event, why));
                    }
                }
                Outcome::Fails(error) if error.is_transient() => {
                    return Err(DeployError::Interrupted(error.to_string()));
                }
                Outcome::Fails(error) => {
                    return Err(breaks(consumer, &event, &error.to_string()));
                }
            }
        }
    }
    Ok(report)
}

fn breaks(consumer: &Consumer, event: &StoredEvent, why: &str) -> DeployError {
    DeployError::ConsumerBreaks {
        consumer: consumer.name().to_owned(),
        detail: format!(
            "{} event {} ({:?}) in the new version's schema: {why}",
            event.stream(),
            event.version,
            event.event_type
        ),
    }
}

/// How a consumer took one sampled event in its two shapes.
enum Outcome {
    /// It reads neither.
    NotRead,
    Same,
    Changed,
    /// It fails on the new shape (and not on the old).
    Fails(GuestError),
}

fn react_both(
    consumer: &AggregateComponent,
    old: &StoredEvent,
    new: &StoredEvent,
    is_reply: bool,
) -> Outcome {
    let info = consumer.info();
    let reads = |e: &StoredEvent| info.reacts_to(&e.stream_type, &e.event_type, is_reply);
    let (reads_old, reads_new) = (reads(old), reads(new));
    if !reads_old && !reads_new {
        return Outcome::NotRead;
    }
    let before = if reads_old { consumer.react(&old.envelope()) } else { Ok(Vec::new()) };
    let Ok(before) = before else {
        // It fails on the event as it is read today: this deploy does not change that.
        return Outcome::Same;
    };
    let after = if reads_new { consumer.react(&new.envelope()) } else { Ok(Vec::new()) };
    match after {
        Err(error) => Outcome::Fails(error),
        Ok(after) if after == before => Outcome::Same,
        Ok(_) => Outcome::Changed,
    }
}

fn handle_both(consumer: &ProjectionComponent, old: &StoredEvent, new: &StoredEvent) -> Outcome {
    let info = consumer.info();
    let reads = |e: &StoredEvent| info.wants(&e.stream_type, &e.event_type);
    let (reads_old, reads_new) = (reads(old), reads(new));
    if !reads_old && !reads_new {
        return Outcome::NotRead;
    }
    let handle = |e: &StoredEvent, reads: bool| {
        if !reads {
            return Ok(Default::default());
        }
        let outcome = consumer.handle_batch(&[e.envelope()], Box::new(EmptyView));
        match outcome.failure {
            Some(error) => Err(error),
            None => Ok(outcome.writes),
        }
    };
    let Ok(before) = handle(old, reads_old) else { return Outcome::Same };
    match handle(new, reads_new) {
        Err(error) => Outcome::Fails(error),
        Ok(after) if after == before => Outcome::Same,
        Ok(_) => Outcome::Changed,
    }
}
