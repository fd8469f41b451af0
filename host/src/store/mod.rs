//! The event store: the global log and everything that must commit with it (stream heads,
//! snapshots, idempotency and dedup outcomes, the correlation index, component versions,
//! cursors, dead letters).
//!
//! What the host needs of a store is [`contract`]: the rest of the host holds an
//! [`EventStore`] to read and a [`Writer`] to append and never knows which store runs. The
//! records they pass are defined here ([`records`], [`ids`]); [`embedded`] is the redb
//! store in one file that a host runs by default.

mod contract;
pub mod embedded;
mod error;
pub mod export;
mod follow;
mod ids;
pub mod postgres;
mod queue;
mod records;
mod retention;

pub use contract::{CursorStart, EventStore, Receipt, Reopening, StoreReads, StoreWrites, Writer};
pub use error::{AppendError, StoreError};
pub use follow::LogFollower;
pub use ids::{ComponentVersion, Position, Version};
pub use records::{
    AppendBatch, Committed, DeadLetter, DeadLetterKey, Fence, Fingerprint, NewEvent, OutcomeKey, Snapshot,
    StoredEvent, StoredOutcome, StreamId, StreamIdError,
};
pub use retention::forget_expired_idempotency_keys;

pub(crate) use records::Record;

/// The durable cursor's name of the subscriber of component `component`.
pub fn reaction_cursor(component: &str) -> String {
    format!("reactions/{component}")
}

/// How much one read of events may return: at most `events` events, and no more events once
/// their stored bytes reach `bytes` (the first event always comes, so a page is never empty
/// while there is something to read). A count alone would let one page of 1 MiB events hold
/// gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub events: usize,
    pub bytes: usize,
}

impl Page {
    pub const fn new(events: usize, bytes: usize) -> Self {
        Page { events, bytes }
    }
}

impl From<usize> for Page {
    /// A count alone: no byte budget (for reads whose events are bounded elsewhere).
    fn from(events: usize) -> Self {
        Page { events, bytes: usize::MAX }
    }
}

/// Filling a [`Page`]: whether the next event still fits.
pub(crate) struct PageFill {
    page: Page,
    events: usize,
    bytes: usize,
}

impl PageFill {
    pub(crate) fn new(page: Page) -> Self {
        PageFill { page, events: 0, bytes: 0 }
    }

    /// Whether another event may be read at all.
    pub(crate) fn has_room(&self) -> bool {
        self.events < self.page.events && (self.events == 0 || self.bytes < self.page.bytes)
    }

    /// Count an event of `bytes` in.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.events += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}
