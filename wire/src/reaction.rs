//! What choreography hands to and takes from an aggregate: committed events of other
//! aggregates, commands to send, and rejections handed back.

use crate::codec::{self, CodecError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Events of another aggregate type that an aggregate reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub source_type: String,
    /// Event type names; empty means every event of `source_type`.
    pub event_types: Vec<String>,
    /// Only replies reach `react`: events caused by a command that a reaction sent for an
    /// event of the subscriber's own type (see [`Subscription::replies_only`]).
    pub replies_only: bool,
}

impl Subscription {
    /// Whether an event `event_type` of an aggregate of type `stream_type` is subscribed
    /// (whatever caused it).
    pub fn matches(&self, stream_type: &str, event_type: &str) -> bool {
        self.source_type == stream_type
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }

    /// Whether such an event reaches `react`: `is_reply` tells whether it was caused by a
    /// command a reaction sent for an event of the subscriber's own type.
    pub fn accepts(&self, stream_type: &str, event_type: &str, is_reply: bool) -> bool {
        self.matches(stream_type, event_type) && (is_reply || !self.replies_only)
    }

    /// Every event of `source_type` whose type is one of `event_types` (all when empty).
    pub fn to<I, S>(source_type: &str, event_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            source_type: source_type.to_owned(),
            event_types: event_types.into_iter().map(Into::into).collect(),
            replies_only: false,
        }
    }

    /// Only the replies to this aggregate's own saga steps: events caused by a command that
    /// a reaction sent for one of this aggregate type's events. The host knows what caused
    /// every routed command, so an event a client caused (a `DebitAccount` naming someone
    /// else's transfer, say) never wakes this reaction, whatever its fields claim.
    pub fn replies_only(mut self) -> Self {
        self.replies_only = true;
        self
    }
}

/// A command of this aggregate that only reactions may send. The host refuses it from
/// clients (HTTP, the CLI, the console: 403 `internal_command`) and accepts it when a
/// reaction routes it, carrying its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalCommand {
    pub command_type: String,
    /// The aggregate types whose events' reactions may send it; empty: any reaction. A
    /// routed command from another source is handed back as rejected (`internal_command`).
    pub source_types: Vec<String>,
}

impl InternalCommand {
    /// `command_type` (a variant name of the aggregate's command enum), from any reaction.
    pub fn named(command_type: &str) -> Self {
        InternalCommand { command_type: command_type.to_owned(), source_types: Vec::new() }
    }

    /// Only reactions to events of these aggregate types may send it.
    pub fn only_from<I, S>(mut self, source_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source_types = source_types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether a reaction to an event of a `source_type` stream may send it.
    pub fn allows_source(&self, source_type: &str) -> bool {
        self.source_types.is_empty() || self.source_types.iter().any(|t| t == source_type)
    }
}

/// A committed event, as the host delivers it to a reaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    pub stream_type: String,
    pub stream_id: String,
    pub version: u64,
    pub position: u64,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub recorded_at: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
}

impl EventEnvelope {
    /// Decode the event's fields into a type of the reacting aggregate's own: aggregates
    /// share field names, not Rust types.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        codec::decode(&self.payload)
    }

    /// Whether this is an event `event_type` of an aggregate of type `stream_type`.
    pub fn is(&self, stream_type: &str, event_type: &str) -> bool {
        self.stream_type == stream_type && self.event_type == event_type
    }
}

/// A command a reaction asks the host to deliver to another aggregate instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingCommand {
    pub target_type: String,
    pub target_id: String,
    pub command_type: String,
    pub payload: Vec<u8>,
}

impl OutgoingCommand {
    /// A command `command_type` with the fields of `data` (a struct or map).
    pub fn new<T: Serialize>(target_type: &str, target_id: &str, command_type: &str, data: &T) -> Self {
        OutgoingCommand {
            target_type: target_type.to_owned(),
            target_id: target_id.to_owned(),
            command_type: command_type.to_owned(),
            payload: codec::encode(data),
        }
    }

    /// `command`, a variant of the target type's own command enum, to the aggregate
    /// `target_id` of `target_type`: the variant names the command, its fields are the data.
    /// Authors reach it as `Aggregate::command_to`, which fills in the type.
    pub fn command<C: Serialize>(target_type: &str, target_id: &str, command: &C) -> Self {
        let (command_type, payload) = codec::encode_variant(command);
        OutgoingCommand {
            target_type: target_type.to_owned(),
            target_id: target_id.to_owned(),
            command_type,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    enum Command {
        Move { amount: i64, note: Option<String> },
        Stop,
    }

    #[test]
    fn a_typed_command_is_the_command_its_variant_names_with_its_fields() {
        #[derive(Serialize)]
        struct Move {
            amount: i64,
            note: Option<String>,
        }
        #[derive(Serialize)]
        struct NoFields {}
        assert_eq!(
            OutgoingCommand::command("t", "i", &Command::Move { amount: 5, note: None }),
            OutgoingCommand::new("t", "i", "Move", &Move { amount: 5, note: None })
        );
        assert_eq!(
            OutgoingCommand::command("t", "i", &Command::Stop),
            OutgoingCommand::new("t", "i", "Stop", &NoFields {})
        );
    }
}

/// The host-made command (type [`crate::COMMAND_REJECTED`]) that tells an aggregate a
/// command sent by a reaction to one of its events was refused by the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRejected {
    pub command_type: String,
    pub target_type: String,
    pub target_id: String,
    pub code: String,
    pub message: String,
}
