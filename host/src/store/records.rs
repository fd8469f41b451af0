//! What the store keeps, and how it is encoded (MessagePack, positional: these records
//! are internal and compact; the log's payloads stay as the guest wrote them).

use super::{ComponentVersion, Position, StoreError, Version};
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
use crate::traces::TraceParent;
use std::fmt;

/// The key under which a keyed command's outcome is recorded, so that the same command
/// again is answered from it instead of taking effect twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OutcomeKey {
    /// A client's `Idempotency-Key` (forgotten after the retention window).
    Idempotency(String),
    /// A routed command's dedup key (kept as long as the stream).
    Cause(String),
}

impl OutcomeKey {
    /// The key in the `outcomes` table: the kind as a prefix (`idem:`, `cause:`), then the key.
    pub fn stored(&self) -> String {
        match self {
            OutcomeKey::Idempotency(key) => format!("idem:{key}"),
            OutcomeKey::Cause(key) => format!("cause:{key}"),
        }
    }
}

/// One aggregate instance's stream: `account/101`. Ordered as its key, so streams sort as
/// the store's tables keep them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub type_name: String,
    pub id: String,
}

/// Why a string is not usable as an aggregate id (the rule guests check too).
pub type StreamIdError = cairn_wire::InvalidId;

impl StreamId {
    /// A stream id, checking that `id` is one a user can address in a URL path.
    pub fn new(type_name: &str, id: &str) -> Result<Self, StreamIdError> {
        cairn_wire::check_aggregate_id(id)?;
        Ok(StreamId { type_name: type_name.to_owned(), id: id.to_owned() })
    }

    /// The key in the store's tables, and the `stream` field users see.
    pub fn key(&self) -> String {
        format!("{}/{}", self.type_name, self.id)
    }

    /// The stream a key names (`type/id`, as [`StreamId::key`] writes it). Type names have
    /// no `/`, so the first one ends the type; the id is not checked again (it was when the
    /// key was made).
    pub fn from_key(key: &str) -> Option<StreamId> {
        let (type_name, id) = key.split_once('/')?;
        Some(StreamId { type_name: type_name.to_owned(), id: id.to_owned() })
    }
}

impl Ord for StreamId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn key(s: &StreamId) -> impl Iterator<Item = u8> + '_ {
            s.type_name.as_bytes().iter().chain(b"/").chain(s.id.as_bytes()).copied()
        }
        // Two streams with one key (a type name with a `/`, which no valid stream has) are
        // told apart by their parts, so the order agrees with `==`.
        key(self)
            .cmp(key(other))
            .then_with(|| (&self.type_name, &self.id).cmp(&(&other.type_name, &other.id)))
    }
}

impl PartialOrd for StreamId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Stored and shown as its key, `type/id`: records that held the key as a string decode
/// as a stream.
impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        StreamId::from_key(&key)
            .ok_or_else(|| serde::de::Error::custom(format!("{key:?} is no `type/id` stream key")))
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
    pub component_version: ComponentVersion,
    /// For an event caused by a routed command: the stream (`type/id`) whose event the
    /// reaction that sent the command answered. A subscription that takes only replies
    /// gets the events whose `reply_to` is of its own type. Events stored before this
    /// existed have none (and a trailing field that is absent decodes as `None`).
    #[serde(default)]
    pub reply_to: Option<StreamId>,
    /// The schema version its data was written in, as the component that wrote it declared
    /// (docs/ARCHITECTURE.md, "Schema versions and upcasting"). Events stored before schemas
    /// existed are at the first.
    #[serde(default = "first_schema")]
    pub schema: u32,
    /// The trace the command that caused it was part of (W3C trace context): a client's
    /// `traceparent`, or the trace of the event whose reaction sent the command. Events
    /// stored before traces existed, or caused without one, have none. None is not written
    /// at all, so such an event reads as it did for a Cairn before traces.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::traces::lenient")]
    pub trace: Option<TraceParent>,
}

fn first_schema() -> u32 {
    cairn_wire::FIRST_SCHEMA
}

impl Record for StoredEvent {
    const KIND: &'static str = "event";
}

impl StoredEvent {
    pub fn stream(&self) -> StreamId {
        StreamId { type_name: self.stream_type.clone(), id: self.stream_id.clone() }
    }

    /// Whether a command sent by a reaction to an event of a `type_name` stream caused it.
    pub fn is_reply_to(&self, type_name: &str) -> bool {
        self.reply_to.as_ref().is_some_and(|stream| stream.type_name == type_name)
    }

    /// `recorded_at` in RFC 3339, as users and guests see it.
    pub fn recorded_at(&self) -> String {
        crate::time::rfc3339_micros(self.recorded_at_micros)
    }

    /// The envelope a reaction or projection receives.
    pub fn envelope(&self) -> cairn_wire::EventEnvelope {
        cairn_wire::EventEnvelope {
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            version: self.version.get(),
            position: self.position.get(),
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
    pub component_version: ComponentVersion,
    /// See [`StoredEvent::reply_to`].
    pub reply_to: Option<StreamId>,
    /// See [`StoredEvent::schema`].
    pub schema: u32,
    /// See [`StoredEvent::trace`].
    pub trace: Option<TraceParent>,
}

impl NewEvent {
    /// The event as the log holds it once the writer gave it its place and time.
    pub(crate) fn stored(
        &self,
        stream: &StreamId,
        version: Version,
        position: Position,
        recorded_at_micros: u64,
    ) -> StoredEvent {
        StoredEvent {
            stream_type: stream.type_name.clone(),
            stream_id: stream.id.clone(),
            version,
            position,
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            recorded_at_micros,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            component_version: self.component_version,
            reply_to: self.reply_to.clone(),
            schema: self.schema,
            trace: self.trace,
        }
    }
}

/// The answer recorded for a keyed command, so a retry or redelivery gets it again.
///
/// An `Idempotency-Key`'s outcome also keeps the [`Fingerprint`] of the command it came
/// with, so the same key with another command is refused instead of answered. (Outcomes
/// recorded before fingerprints existed have none, and answer any command, as they did.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredOutcome {
    /// The command was accepted: its events are versions `first_version ..
    /// first_version + count` and the stream was at `version` after it.
    Accepted {
        first_version: Version,
        count: u64,
        version: Version,
        #[serde(default)]
        fingerprint: Option<Fingerprint>,
    },
    /// The aggregate rejected the command.
    Rejected {
        code: String,
        message: String,
        #[serde(default)]
        fingerprint: Option<Fingerprint>,
    },
}

impl StoredOutcome {
    /// The fingerprint of the command this outcome answers, if one was recorded.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        match self {
            StoredOutcome::Accepted { fingerprint, .. } | StoredOutcome::Rejected { fingerprint, .. } => {
                fingerprint.as_ref()
            }
        }
    }
}

impl Record for StoredOutcome {
    const KIND: &'static str = "outcome";
}

/// What identifies a client's command for its `Idempotency-Key`: a hash of its type and its
/// data, the data's object keys in sorted order (so `{"a":1,"b":2}` and `{"b":2,"a":1}` are
/// the same command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    pub fn of(command_type: &str, data: &serde_json::Value) -> Self {
        use sha2::{Digest, Sha256};
        fn feed(hash: &mut Sha256, value: &serde_json::Value) {
            use serde_json::Value;
            match value {
                Value::Object(map) => {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    hash.update([b'{']);
                    for (key, value) in entries {
                        hash.update((key.len() as u64).to_le_bytes());
                        hash.update(key.as_bytes());
                        feed(hash, value);
                    }
                    hash.update([b'}']);
                }
                Value::Array(items) => {
                    hash.update([b'[']);
                    for item in items {
                        feed(hash, item);
                    }
                    hash.update([b']']);
                }
                // Scalars by their JSON text: `1` and `1.0` differ, as they do to a guest.
                scalar => {
                    let text = scalar.to_string();
                    hash.update((text.len() as u64).to_le_bytes());
                    hash.update(text.as_bytes());
                }
            }
        }
        let mut hash = Sha256::new();
        hash.update((command_type.len() as u64).to_le_bytes());
        hash.update(command_type.as_bytes());
        feed(&mut hash, data);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.finalize()[..16]);
        Fingerprint(bytes)
    }
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

/// The digest of an encoded [`Snapshot`], read without decoding (copying) its state; `None`
/// if the bytes are not a snapshot as this version encodes them.
pub(crate) fn snapshot_digest(bytes: &[u8]) -> Option<&[u8]> {
    let mut rest = bytes;
    if rmp::decode::read_array_len(&mut rest).ok()? != 3 {
        return None;
    }
    let _version: u64 = rmp::decode::read_int(&mut rest).ok()?;
    let len = rmp::decode::read_bin_len(&mut rest).ok()? as usize;
    rest.get(..len)
}

/// One actor's contribution to a group commit: all of it is stored, or none.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    pub stream: StreamId,
    /// The stream's version before this batch; the writer refuses the batch otherwise.
    pub expected_version: Version,
    pub events: Vec<NewEvent>,
    /// Outcomes of keyed commands, stored with the events they caused.
    pub outcomes: Vec<(OutcomeKey, StoredOutcome)>,
    /// The stream's newest snapshot, if this batch takes one: where a waking actor starts.
    pub snapshot: Option<Snapshot>,
    /// Snapshots for the stream's history (a batch can cross several snapshot intervals),
    /// where temporal reads start.
    pub history: Vec<Snapshot>,
    /// In a cluster: the partition lease this host must still hold, at this epoch, for the
    /// batch to be stored (checked in the commit's own transaction); `None` on one host.
    pub fence: Option<Fence>,
}

/// A partition lease as granted to this host: a batch under it is stored only while the
/// database still shows this host holding the partition at this epoch, so a host that was
/// paused or cut off, and lost it, can never append again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub partition: u32,
    pub epoch: i64,
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
    /// The source stream.
    pub stream: StreamId,
    /// The parked event.
    pub position: Position,
    pub event_type: String,
    /// The earlier parked event of the same stream this one waits behind (`None`: this one
    /// failed itself).
    pub behind: Option<Position>,
    /// Which command of the reaction failed (`None`: the reaction itself, or waiting).
    pub command_index: Option<u64>,
    pub target: Option<StreamId>,
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
    pub stream: StreamId,
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
            stream: StreamId::from_key(stream).ok_or(())?,
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

    /// Records written before a field was added at their end still decode, with the field
    /// empty: events before `reply_to`, outcomes before fingerprints.
    #[test]
    fn records_written_before_their_last_field_existed_still_decode() {
        #[derive(Serialize)]
        struct EventBefore {
            stream_type: &'static str,
            stream_id: &'static str,
            version: u64,
            position: u64,
            event_type: &'static str,
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
            recorded_at_micros: u64,
            correlation_id: &'static str,
            causation_id: Option<&'static str>,
            component_version: u32,
        }
        let old = EventBefore {
            stream_type: "account",
            stream_id: "1",
            version: 2,
            position: 9,
            event_type: "AccountCredited",
            payload: vec![0x80],
            recorded_at_micros: 1,
            correlation_id: "c",
            causation_id: Some("7"),
            component_version: 1,
        };
        let event = StoredEvent::decode(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        assert_eq!((event.position, event.reply_to), (Position(9), None));

        #[derive(Serialize)]
        enum OutcomeBefore {
            Accepted { first_version: u64, count: u64, version: u64 },
            Rejected { code: &'static str, message: &'static str },
        }
        let accepted = OutcomeBefore::Accepted { first_version: 3, count: 1, version: 3 };
        let rejected = OutcomeBefore::Rejected { code: "nope", message: "no" };
        assert_eq!(
            StoredOutcome::decode(&rmp_serde::to_vec(&accepted).unwrap()).unwrap(),
            StoredOutcome::Accepted {
                first_version: Version(3),
                count: 1,
                version: Version(3),
                fingerprint: None
            }
        );
        let decoded = StoredOutcome::decode(&rmp_serde::to_vec(&rejected).unwrap()).unwrap();
        assert_eq!(decoded.fingerprint(), None);
    }

    /// Records kept a stream as its key string before the key was a type: they decode as the
    /// stream, are written the same way, and streams sort as the tables keep their keys.
    #[test]
    fn a_stream_is_stored_and_sorted_as_its_key() {
        let stream = StreamId::new("account", "a.b").unwrap();
        let old = rmp_serde::to_vec(&"account/a.b").unwrap();
        assert_eq!(rmp_serde::to_vec(&stream).unwrap(), old);
        assert_eq!(rmp_serde::from_slice::<StreamId>(&old).unwrap(), stream);
        assert!(rmp_serde::from_slice::<StreamId>(&rmp_serde::to_vec(&"no-slash").unwrap()).is_err());
        let mut streams =
            [StreamId::new("account", "x").unwrap(), StreamId::new("account-info", "y").unwrap()];
        streams.sort();
        let mut keys: Vec<String> = streams.iter().map(StreamId::key).collect();
        assert_eq!(keys, ["account-info/y", "account/x"]);
        keys.sort();
        assert_eq!(keys, ["account-info/y", "account/x"]);
        // One key, two streams (no valid stream has a `/` in its type): ordered, not equal.
        let one = StreamId { type_name: "a".into(), id: "b/c".into() };
        let other = StreamId { type_name: "a/b".into(), id: "c".into() };
        assert_eq!(one.key(), other.key());
        assert_ne!(one.cmp(&other), std::cmp::Ordering::Equal);
    }

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
                prop::option::of(("[a-z-]{1,10}", ".{1,20}")),
                1..u32::MAX,
                prop::option::of((1..=u128::MAX, 1..=u64::MAX, any::<bool>())),
            ),
        )
            .prop_map(
                |(
                    (stream_type, stream_id, version, position, event_type),
                    (
                        payload,
                        recorded_at_micros,
                        correlation_id,
                        causation_id,
                        component_version,
                        reply_to,
                        schema,
                        trace,
                    ),
                )| StoredEvent {
                    stream_type,
                    stream_id,
                    version: Version(version),
                    position: Position(position),
                    event_type,
                    payload,
                    recorded_at_micros,
                    correlation_id,
                    causation_id,
                    component_version: ComponentVersion(component_version),
                    reply_to: reply_to.map(|(type_name, id)| StreamId { type_name, id }),
                    schema,
                    trace: trace.map(|(trace_id, span_id, sampled): (u128, u64, bool)| TraceParent {
                        trace_id: trace_id.to_be_bytes(),
                        span_id: span_id.to_be_bytes(),
                        sampled,
                    }),
                },
            )
    }

    #[test]
    fn an_event_without_a_trace_is_written_as_a_cairn_before_traces_reads_it() {
        let mut event = StoredEvent {
            stream_type: "account".into(),
            stream_id: "1".into(),
            version: Version(1),
            position: Position(1),
            event_type: "Opened".into(),
            payload: vec![0x80],
            recorded_at_micros: 1,
            correlation_id: "c".into(),
            causation_id: None,
            component_version: ComponentVersion(1),
            reply_to: None,
            schema: 1,
            trace: None,
        };
        // A MessagePack array of the fields: twelve before traces, and still without one.
        assert_eq!(event.encode()[0], 0x90 | 12);
        event.trace = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let traced = event.encode();
        assert_eq!(traced[0], 0x90 | 13);
        assert_eq!(StoredEvent::decode(&traced).unwrap(), event);
    }

    proptest! {
        #[test]
        fn a_stored_event_round_trips_and_its_envelope_carries_it(event in any_event()) {
            let decoded = StoredEvent::decode(&event.encode()).unwrap();
            prop_assert_eq!(&decoded, &event);
            let envelope = decoded.envelope();
            prop_assert_eq!(
                (&envelope.stream_type, &envelope.stream_id, envelope.version, envelope.position),
                (&event.stream_type, &event.stream_id, event.version.get(), event.position.get())
            );
            prop_assert_eq!((&envelope.event_type, &envelope.payload), (&event.event_type, &event.payload));
            prop_assert_eq!((&envelope.correlation_id, &envelope.causation_id), (&event.correlation_id, &event.causation_id));
            prop_assert_eq!(envelope.recorded_at, event.recorded_at());
        }

        #[test]
        fn a_fingerprint_ignores_key_order_and_nothing_else(a in any::<i32>(), b in ".{0,8}") {
            let one = serde_json::json!({"a": a, "b": b, "n": {"x": 1, "y": [1, 2]}});
            let other = serde_json::json!({"n": {"y": [1, 2], "x": 1}, "b": b, "a": a});
            prop_assert_eq!(Fingerprint::of("C", &one), Fingerprint::of("C", &other));
            prop_assert_ne!(Fingerprint::of("C", &one), Fingerprint::of("D", &one));
            let changed = serde_json::json!({"a": a as i64 + 1, "b": b, "n": {"x": 1, "y": [1, 2]}});
            prop_assert_ne!(Fingerprint::of("C", &one), Fingerprint::of("C", &changed));
        }

        #[test]
        fn a_snapshots_digest_is_read_without_decoding_it(
            version in any::<u64>(),
            digest in prop::collection::vec(any::<u8>(), 0..40),
            state in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let snapshot = Snapshot { version: Version(version), digest: digest.clone(), state };
            let encoded = snapshot.encode();
            prop_assert_eq!(snapshot_digest(&encoded), Some(digest.as_slice()));
        }

        #[test]
        fn garbage_is_a_corrupt_record_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(error) = StoredEvent::decode(&bytes) {
                prop_assert!(matches!(error, StoreError::Corrupt(_)));
            }
        }
    }
}
