//! What the store keeps, and how it is encoded (MessagePack, positional: these records
//! are internal and compact; the log's payloads stay as the guest wrote them).

use super::{Position, StoreError, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A value kept in one of the store's tables.
pub(crate) trait Record: Serialize + DeserializeOwned {
    /// Named in the error when a stored record does not decode.
    const KIND: &'static str;

    fn encode(&self) -> Vec<u8> {
        // Plain serde data into a Vec: cannot fail.
        rmp_serde::to_vec(self).expect("encode a store record")
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{} record: {e}", Self::KIND)))
    }
}
use std::fmt;

/// One aggregate instance's stream: `account/101`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub type_name: String,
    pub id: String,
}

/// Why a string is not usable as an aggregate id (the rule guests check too).
pub type StreamIdError = cairn_guest::InvalidId;

impl StreamId {
    /// A stream id, checking that `id` is one a user can address in a URL path.
    pub fn new(type_name: &str, id: &str) -> Result<Self, StreamIdError> {
        cairn_guest::check_aggregate_id(id)?;
        Ok(StreamId { type_name: type_name.to_owned(), id: id.to_owned() })
    }

    /// The key in the store's tables, and the `stream` field users see.
    pub fn key(&self) -> String {
        format!("{}/{}", self.type_name, self.id)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.type_name, self.id)
    }
}

/// A committed event with everything the log knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub stream_type: String,
    pub stream_id: String,
    pub version: Version,
    pub position: Position,
    pub event_type: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Microseconds since the Unix epoch, set by the writer at commit.
    pub recorded_at_micros: u64,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// The version of the component that emitted it.
    pub component_version: u32,
}

impl Record for StoredEvent {
    const KIND: &'static str = "event";
}

impl StoredEvent {
    pub fn stream(&self) -> StreamId {
        StreamId { type_name: self.stream_type.clone(), id: self.stream_id.clone() }
    }

    /// `recorded_at` in RFC 3339, as users and guests see it.
    pub fn recorded_at(&self) -> String {
        crate::time::rfc3339_micros(self.recorded_at_micros)
    }

    /// The envelope a reaction or projection receives.
    pub fn envelope(&self) -> cairn_guest::EventEnvelope {
        cairn_guest::EventEnvelope {
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            recorded_at: self.recorded_at(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
        }
    }
}

/// An event to append; the writer gives it its version, position and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: Vec<u8>,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub component_version: u32,
}

/// The answer recorded for a keyed command, so a retry or redelivery gets it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredOutcome {
    /// The command was accepted: its events are versions `first_version ..
    /// first_version + count` and the stream was at `version` after it.
    Accepted { first_version: Version, count: u64, version: Version },
    /// The aggregate rejected the command.
    Rejected { code: String, message: String },
}

impl Record for StoredOutcome {
    const KIND: &'static str = "outcome";
}

/// An aggregate's state after `version`, valid only while `digest` is the active component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: Version,
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

impl Record for Snapshot {
    const KIND: &'static str = "snapshot";
}

/// One actor's contribution to a group commit: all of it is stored, or none.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    pub stream: StreamId,
    /// The stream's version before this batch; the writer refuses the batch otherwise.
    pub expected_version: Version,
    pub events: Vec<NewEvent>,
    /// Outcomes of keyed commands, stored with the events they caused.
    pub outcomes: Vec<(String, StoredOutcome)>,
    pub snapshot: Option<Snapshot>,
}

/// A committed batch: its events as the log now holds them (version, position, time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    pub events: Vec<StoredEvent>,
}

/// An event parked for one subscriber: its reaction could not be delivered (a reaction
/// that traps, a hand-back that fails), or it waits behind an earlier parked event of the
/// same stream. Kept, visible, and delivered again by a retry; never dropped but on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub subscriber: String,
    /// The source stream's key (`type/id`).
    pub stream: String,
    /// The parked event.
    pub position: Position,
    pub event_type: String,
    /// The earlier parked event of the same stream this one waits behind (`None`: this one
    /// failed itself).
    pub behind: Option<Position>,
    /// Which command of the reaction failed (`None`: the reaction itself, or waiting).
    pub command_index: Option<u64>,
    pub target: Option<String>,
    pub command_type: Option<String>,
    pub error: String,
    pub attempts: u32,
    pub parked_at_micros: u64,
}

impl DeadLetter {
    /// Its key in the `parked` table.
    pub fn key(&self) -> DeadLetterKey {
        DeadLetterKey {
            subscriber: self.subscriber.clone(),
            stream: self.stream.clone(),
            position: self.position,
        }
    }
}

/// Where a dead letter is kept: one subscriber's parked event of one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterKey {
    pub subscriber: String,
    pub stream: String,
    pub position: Position,
}

impl fmt::Display for DeadLetterKey {
    /// `subscriber:stream:position`, the `id` users page with (subscriber names have no
    /// `:`, positions are digits, so the stream in between may contain anything).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.subscriber, self.stream, self.position)
    }
}

impl std::str::FromStr for DeadLetterKey {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (subscriber, rest) = text.split_once(':').ok_or(())?;
        let (stream, position) = rest.rsplit_once(':').ok_or(())?;
        Ok(DeadLetterKey {
            subscriber: subscriber.to_owned(),
            stream: stream.to_owned(),
            position: position.parse().map_err(|_| ())?,
        })
    }
}

impl Record for DeadLetter {
    const KIND: &'static str = "dead letter";
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_event() -> impl Strategy<Value = StoredEvent> {
        (
            ("[a-z][a-z-]{0,20}", ".{1,40}", any::<u64>(), any::<u64>(), ".{0,30}"),
            // The writer sets `recorded_at` from the clock: any time before the year 10000.
            (
                prop::collection::vec(any::<u8>(), 0..512),
                0..253_402_300_800_000_000u64,
                ".{0,40}",
                prop::option::of(".{0,40}"),
                any::<u32>(),
            ),
        )
            .prop_map(
                |(
                    (stream_type, stream_id, version, position, event_type),
                    (payload, recorded_at_micros, correlation_id, causation_id, component_version),
                )| StoredEvent {
                    stream_type,
                    stream_id,
                    version,
                    position,
                    event_type,
                    payload,
                    recorded_at_micros,
                    correlation_id,
                    causation_id,
                    component_version,
                },
            )
    }

    proptest! {
        #[test]
        fn a_stored_event_round_trips_and_its_envelope_carries_it(event in any_event()) {
            let decoded = StoredEvent::decode(&event.encode()).unwrap();
            prop_assert_eq!(&decoded, &event);
            let envelope = decoded.envelope();
            prop_assert_eq!(
                (&envelope.stream_type, &envelope.stream_id, envelope.version, envelope.position),
                (&event.stream_type, &event.stream_id, event.version, event.position)
            );
            prop_assert_eq!((&envelope.event_type, &envelope.payload), (&event.event_type, &event.payload));
            prop_assert_eq!((&envelope.correlation_id, &envelope.causation_id), (&event.correlation_id, &event.causation_id));
            prop_assert_eq!(envelope.recorded_at, event.recorded_at());
        }

        #[test]
        fn garbage_is_a_corrupt_record_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(error) = StoredEvent::decode(&bytes) {
                prop_assert!(matches!(error, StoreError::Corrupt(_)));
            }
        }
    }
}
