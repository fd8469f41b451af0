//! The byte-level functions behind every export: what `process-command`, `apply-event`
//! and `react` do, independent of wit-bindgen, so the native test kit runs exactly the
//! code the component runs.

use crate::codec::{self, is_unknown_variant};
use crate::{
    Aggregate, COMMAND_REJECTED, CommandRejected, EventEnvelope, OutgoingCommand, Rejection, UNKNOWN_COMMAND,
};

pub use cairn_wire::{RawCommand, RawEvent, RawStoredEvent};

fn decode_state<A: Aggregate>(state: Option<&[u8]>) -> Option<A::State> {
    // State bytes only ever come from this aggregate's own `apply`; if they do not decode,
    // the host replays from events with the active version, so failing loudly is right.
    state.map(|bytes| {
        codec::decode(bytes).unwrap_or_else(|e| panic!("{} state does not decode: {e}", A::TYPE))
    })
}

fn decode_event<A: Aggregate>(event: &RawEvent) -> A::Event {
    codec::decode_variant(&event.event_type, &event.payload)
        .unwrap_or_else(|e| panic!("{} event {} does not decode: {e}", A::TYPE, event.event_type))
}

pub fn process_command<A: Aggregate>(
    state: Option<&[u8]>,
    command: &RawCommand,
) -> Result<Vec<RawEvent>, Rejection> {
    decide::<A>(decode_state::<A>(state).as_ref(), command)
}

fn decide<A: Aggregate>(state: Option<&A::State>, command: &RawCommand) -> Result<Vec<RawEvent>, Rejection> {
    let events = if command.command_type == COMMAND_REJECTED {
        let rejected: CommandRejected = codec::decode(&command.payload)
            .map_err(|e| Rejection::invalid(format!("{COMMAND_REJECTED} does not decode: {e}")))?;
        A::on_rejected(state, rejected)?
    } else {
        let typed =
            codec::decode_variant::<A::Command>(&command.command_type, &command.payload).map_err(|e| {
                if is_unknown_variant(&e) {
                    Rejection::new(
                        UNKNOWN_COMMAND,
                        format!("{} has no command {}", A::TYPE, command.command_type),
                    )
                } else {
                    Rejection::invalid(format!("{} is malformed: {e}", command.command_type))
                }
            })?;
        A::handle(state, typed)?
    };
    Ok(events.iter().map(RawEvent::from_typed).collect())
}

/// Decide, then fold the events into the state: one crossing instead of two, and the state
/// decoded once. The events are folded from their encoded form, exactly as a replay folds
/// them, so a live state never differs from a rebuilt one.
pub fn execute<A: Aggregate>(
    state: Option<&[u8]>,
    command: &RawCommand,
) -> Result<(Vec<RawEvent>, Option<Vec<u8>>), Rejection> {
    let decoded = decode_state::<A>(state);
    let events = decide::<A>(decoded.as_ref(), command)?;
    if events.is_empty() {
        return Ok((events, state.map(<[u8]>::to_vec)));
    }
    let mut folded = decoded;
    for event in &events {
        folded = Some(A::apply(folded, &decode_event::<A>(event)));
    }
    Ok((events, folded.map(|s| codec::encode(&s))))
}

pub fn apply_events<A: Aggregate>(state: Option<&[u8]>, events: &[RawEvent]) -> Option<Vec<u8>> {
    if events.is_empty() {
        return state.map(<[u8]>::to_vec);
    }
    let mut typed = decode_state::<A>(state);
    for event in events {
        typed = Some(A::apply(typed, &decode_event::<A>(event)));
    }
    typed.map(|s| codec::encode(&s))
}

pub fn react<A: Aggregate>(event: &EventEnvelope) -> Vec<OutgoingCommand> {
    A::react(event)
}

/// Each event type's current schema version, past the first (see [`crate::upcast`]).
pub fn schemas<A: Aggregate>() -> std::collections::BTreeMap<String, u32> {
    crate::upcast::schemas(&A::upcasters())
}

/// `events` as the current schemas have them, each through every step from its own schema.
pub fn upcast<A: Aggregate>(events: Vec<RawStoredEvent>) -> Vec<RawStoredEvent> {
    let upcasters = A::upcasters();
    events.into_iter().map(|event| crate::upcast::upcast(&upcasters, event)).collect()
}
