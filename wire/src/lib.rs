//! # cairn-wire: what crosses Cairn's component boundary
//!
//! Commands and events travel between the host and a component as a type name and a
//! MessagePack map of named fields ([`codec`]). This crate holds those shapes (raw commands
//! and events, the envelope a reaction or projection receives, the commands a reaction
//! sends, rejections) and the rules both sides share (what an aggregate id may be). The host
//! and the guest SDK both depend on it; authors meet its types through `cairn-guest`.

pub mod codec;
mod id;
mod reaction;

pub use id::{InvalidId, MAX_ID_LEN, check_aggregate_id};
pub use reaction::{CommandRejected, EventEnvelope, InternalCommand, OutgoingCommand, Subscription};
use serde::Serialize;

/// The command type the host uses to hand a rejection back to the aggregate whose event
/// caused the rejected command. Users cannot send it.
pub const COMMAND_REJECTED: &str = "CommandRejected";

/// Rejection code the host maps to HTTP 400: the component has no such command.
pub const UNKNOWN_COMMAND: &str = "unknown_command";
/// Rejection code the host maps to HTTP 400: the command's fields are malformed.
pub const INVALID_COMMAND: &str = "invalid_command";

/// Why a command was refused: a machine `code` and a `message` for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    /// A business rejection (HTTP 422), e.g. `Rejection::new("account_closed", "...")`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection { code: code.into(), message: message.into() }
    }

    /// The command's fields are malformed (HTTP 400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Rejection::new(INVALID_COMMAND, message)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// An event as it crosses the boundary: type name + MessagePack fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub event_type: String,
    pub payload: Vec<u8>,
}

/// The schema version of an event type that declares none, and of every event stored
/// before schema versions existed.
pub const FIRST_SCHEMA: u32 = 1;

/// An event as the store holds it, in the schema version its data was written in: what an
/// upcaster reads and answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStoredEvent {
    pub event_type: String,
    pub schema: u32,
    pub payload: Vec<u8>,
}

impl RawStoredEvent {
    /// The event as folds, reactions and projections take it.
    pub fn into_raw(self) -> RawEvent {
        RawEvent { event_type: self.event_type, payload: self.payload }
    }
}

/// A command as it crosses the boundary: type name + MessagePack fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCommand {
    pub command_type: String,
    pub payload: Vec<u8>,
}

impl RawEvent {
    pub fn from_typed<E: Serialize>(event: &E) -> Self {
        let (event_type, payload) = codec::encode_variant(event);
        RawEvent { event_type, payload }
    }
}

impl RawCommand {
    pub fn from_typed<C: Serialize>(command: &C) -> Self {
        let (command_type, payload) = codec::encode_variant(command);
        RawCommand { command_type, payload }
    }
}
