//! wit-bindgen glue for the `aggregate` world, used by [`crate::export_aggregate!`].

use crate::Aggregate;
use crate::glue::{self, RawCommand, RawEvent};

wit_bindgen::generate!({
    world: "aggregate",
    path: "../wit",
    default_bindings_module: "cairn_guest::bindings",
    pub_export_macro: true,
});

pub use cairn::runtime::types::Decided;
pub use cairn::runtime::types::{EventSchema, StoredEvent};
use cairn::runtime::types::{InternalCommand, Subscription, SubscriptionRule};
pub use exports::cairn::runtime::policy::PolicyInfo;

/// The world's envelope type, named apart from the SDK's [`crate::EventEnvelope`].
pub type WitEnvelope = EventEnvelope;

fn raw(event: Event) -> RawEvent {
    RawEvent { event_type: event.event_type, payload: event.payload }
}

/// Route panic messages to the host (once per instance): see [`crate::panic_hook`].
pub fn report_panics() {
    crate::panic_hook::install(cairn::runtime::diagnostics::panicked);
}

pub fn describe<A: Aggregate>() -> AggregateInfo {
    report_panics();
    AggregateInfo {
        type_name: A::TYPE.to_owned(),
        subscriptions: A::subscriptions()
            .into_iter()
            .map(|s| Subscription { source_type: s.source_type, event_types: s.event_types })
            .collect(),
        snapshot_interval: A::SNAPSHOT_INTERVAL,
    }
}

pub fn policy<A: Aggregate>() -> PolicyInfo {
    report_panics();
    PolicyInfo {
        internal_commands: A::internal_commands()
            .into_iter()
            .map(|c| InternalCommand { command_type: c.command_type, source_types: c.source_types })
            .collect(),
        subscriptions: A::subscriptions()
            .into_iter()
            .map(|s| SubscriptionRule {
                source_type: s.source_type,
                event_types: s.event_types,
                replies_only: s.replies_only,
            })
            .collect(),
    }
}

pub fn process_command<A: Aggregate>(
    state: Option<Vec<u8>>,
    command: Command,
) -> Result<Vec<Event>, Rejection> {
    report_panics();
    let command = RawCommand { command_type: command.command_type, payload: command.payload };
    match glue::process_command::<A>(state.as_deref(), &command) {
        Ok(events) => {
            Ok(events.into_iter().map(|e| Event { event_type: e.event_type, payload: e.payload }).collect())
        }
        Err(r) => Err(Rejection { code: r.code, message: r.message }),
    }
}

pub fn execute<A: Aggregate>(state: Option<Vec<u8>>, command: Command) -> Result<Decided, Rejection> {
    report_panics();
    let command = RawCommand { command_type: command.command_type, payload: command.payload };
    match glue::execute::<A>(state.as_deref(), &command) {
        Ok((events, state)) => Ok(Decided {
            events: events
                .into_iter()
                .map(|e| Event { event_type: e.event_type, payload: e.payload })
                .collect(),
            state,
        }),
        Err(r) => Err(Rejection { code: r.code, message: r.message }),
    }
}

pub fn apply_event<A: Aggregate>(state: Option<Vec<u8>>, event: Event) -> Vec<u8> {
    report_panics();
    glue::apply_events::<A>(state.as_deref(), &[raw(event)]).expect("state after an event")
}

pub fn apply_events<A: Aggregate>(state: Option<Vec<u8>>, events: Vec<Event>) -> Option<Vec<u8>> {
    report_panics();
    let events: Vec<RawEvent> = events.into_iter().map(raw).collect();
    glue::apply_events::<A>(state.as_deref(), &events)
}

pub fn react<A: Aggregate>(event: WitEnvelope) -> Vec<OutgoingCommand> {
    report_panics();
    let envelope = crate::EventEnvelope {
        stream_type: event.stream_type,
        stream_id: event.stream_id,
        version: event.version,
        position: event.position,
        event_type: event.event_type,
        payload: event.payload,
        recorded_at: event.recorded_at,
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
    };
    glue::react::<A>(&envelope)
        .into_iter()
        .map(|c| OutgoingCommand {
            target_type: c.target_type,
            target_id: c.target_id,
            command: Command { command_type: c.command_type, payload: c.payload },
        })
        .collect()
}

pub fn schemas<A: Aggregate>() -> Vec<EventSchema> {
    report_panics();
    glue::schemas::<A>()
        .into_iter()
        .map(|(event_type, version)| EventSchema { event_type, version })
        .collect()
}

pub fn upcast<A: Aggregate>(events: Vec<StoredEvent>) -> Vec<StoredEvent> {
    report_panics();
    let events = events
        .into_iter()
        .map(|e| glue::RawStoredEvent { event_type: e.event_type, schema: e.schema, payload: e.payload })
        .collect();
    glue::upcast::<A>(events)
        .into_iter()
        .map(|e| StoredEvent { event_type: e.event_type, schema: e.schema, payload: e.payload })
        .collect()
}
