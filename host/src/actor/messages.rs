//! What goes into an actor's mailbox and what comes back.

use crate::runtime::GuestError;
use crate::store::{Fingerprint, StoreError, StoredEvent, StreamId, Version};
use cairn_wire::Rejection;
use tokio::sync::oneshot;

// Nearly every message is a command: boxing it would cost each command an allocation to
// save the few state reads and nudges some bytes of mailbox.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Message {
    Command(CommandRequest, oneshot::Sender<Result<CommandReply, CommandError>>),
    State(oneshot::Sender<Result<StateReply, CommandError>>),
    /// The registry is over its cap of live actors and this one was used least recently:
    /// stop if nothing else is waiting (as after the idle timeout).
    Passivate,
}

impl Message {
    /// Answer the message with `error`, whatever it asked.
    pub(crate) fn fail(self, error: CommandError) {
        // A caller that stopped waiting needs no answer.
        match self {
            Message::Command(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Message::State(reply) => {
                let _ = reply.send(Err(error));
            }
            Message::Passivate => {}
        }
    }
}

/// A command for one aggregate instance.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub command_type: String,
    /// The command's fields as a MessagePack map.
    pub payload: Vec<u8>,
    /// Append only if the stream is at this version (`If-Match`).
    pub expected_version: Option<Version>,
    /// A retry with the same key gets the first answer and stores nothing (`Idempotency-Key`).
    pub idempotency_key: Option<String>,
    /// What the key is bound to: the same key with another command is refused.
    pub fingerprint: Option<Fingerprint>,
    pub correlation_id: String,
    /// Set when the command was sent by a reaction to another event.
    pub causation: Option<Causation>,
    /// The command's span (type, id, correlation id): the actor enters it while it decides,
    /// so what the actor and the guest log carries them.
    pub span: tracing::Span,
    /// The trace its events are stored with (see [`crate::traces::continue_trace`]).
    pub trace: Option<crate::traces::TraceParent>,
}

/// Where a routed command came from; its `dedup_key` makes its effect happen once.
#[derive(Debug, Clone)]
pub struct Causation {
    /// Carried by every event the command causes.
    pub causation_id: String,
    /// Unique per (triggering event, index in the reaction).
    pub dedup_key: String,
    /// The stream whose event the reaction answered: what internal commands are checked
    /// against, and what the events the command causes are replies to.
    pub source: StreamId,
}

/// A command's answer: the stream's version after it and the events it caused (none
/// when the aggregate accepted it without change).
#[derive(Debug, Clone)]
pub struct CommandReply {
    pub stream: StreamId,
    pub version: Version,
    pub events: Vec<StoredEvent>,
    /// The answer was recorded earlier (idempotent retry or redelivery), not made now.
    pub replayed: bool,
}

/// The current state of a stream (`state` is `None` while it has no events).
#[derive(Debug, Clone)]
pub struct StateReply {
    pub version: Version,
    pub state: Option<Vec<u8>>,
}

/// Why a command has no events. Each variant names its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The aggregate refused the command: 400 for `unknown_command`/`invalid_command`,
    /// 422 for a business rule. Retrying the same command gets the same answer.
    #[error("{0}")]
    Rejected(Rejection),
    /// `If-Match` did not match (409): read the stream again and decide anew.
    #[error("expected version {expected}, but the stream is at version {actual}")]
    VersionConflict { expected: Version, actual: Version },
    /// The actor's mailbox is full (429): retry after a moment.
    #[error("this aggregate has too many commands waiting; retry shortly")]
    Overloaded,
    /// No component is deployed for this aggregate type (404).
    #[error("no aggregate type {0:?} is deployed")]
    UnknownType(String),
    /// The component trapped or ran out of time; nothing was stored (422 / 500).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The store failed; nothing was stored (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host is stopping (503).
    #[error("the host is shutting down")]
    ShuttingDown,
    /// In a cluster: no live host holds the stream's partition now, or this one was asked
    /// as its owner and is not (503, with Retry-After): a takeover is due.
    #[error("no live host holds partition {0} of this stream now; retry shortly")]
    NotHere(u32),
    /// The actor failed while it held the command (a host defect, 500): whether the
    /// command took effect is unknown, so retry it with an `Idempotency-Key`. The next
    /// command to the stream gets a fresh actor.
    #[error("the actor of this aggregate failed while handling the command; it has been restarted")]
    ActorFailed,
    /// A fold the host ran for the request stopped before it ended: its task failed (a host
    /// defect, 500), or the request that wanted it went away.
    #[error("{0}")]
    Interrupted(String),
}

impl From<crate::replay::ReplayError> for CommandError {
    fn from(error: crate::replay::ReplayError) -> Self {
        match error {
            crate::replay::ReplayError::Store(e) => CommandError::Store(e),
            cancelled @ crate::replay::ReplayError::Cancelled => {
                CommandError::Interrupted(cancelled.to_string())
            }
            crate::replay::ReplayError::Guest { error, .. } => CommandError::Guest(error),
            // A trap says which stored event the upcasters failed on.
            crate::replay::ReplayError::Upcast(upcast) => CommandError::Guest(match &upcast.error {
                crate::runtime::GuestError::Trap(_) => crate::runtime::GuestError::Trap(upcast.to_string()),
                _ => upcast.error,
            }),
        }
    }
}

impl CommandError {
    /// The same error for another waiting caller (store errors keep only their message).
    pub(crate) fn duplicate(&self) -> CommandError {
        match self {
            CommandError::Rejected(r) => CommandError::Rejected(r.clone()),
            CommandError::VersionConflict { expected, actual } => {
                CommandError::VersionConflict { expected: *expected, actual: *actual }
            }
            CommandError::Overloaded => CommandError::Overloaded,
            CommandError::UnknownType(t) => CommandError::UnknownType(t.clone()),
            CommandError::Guest(g) => CommandError::Guest(g.clone()),
            CommandError::Store(e) => CommandError::Store(StoreError::Unavailable(e.to_string())),
            CommandError::ShuttingDown => CommandError::ShuttingDown,
            CommandError::NotHere(p) => CommandError::NotHere(*p),
            CommandError::ActorFailed => CommandError::ActorFailed,
            CommandError::Interrupted(why) => CommandError::Interrupted(why.clone()),
        }
    }
}
