//! What the host needs of an event store, as two traits: [`StoreReads`] for everything it
//! reads and [`StoreWrites`] for everything it makes durable. The embedded redb store
//! ([`super::embedded`]) implements both; a second store is a second implementation of the
//! same two, and nothing above this module knows which one runs.
//!
//! The rules every implementation keeps (the store TCK, `host/tests/store_tck.rs`, checks
//! them): an append is answered `Ok` only once it is durable, whole or not at all, and only
//! if the stream is at the batch's expected version; its outcome records commit with its
//! events; global positions grow with every commit and are never reused; reads see only
//! committed data; [`StoreReads::subscribe_head`] moves after the commit that moved it.

use super::export::ExportRecord;
use super::{
    AppendBatch, AppendError, Committed, DeadLetter, DeadLetterKey, OutcomeKey, Page, Position, Snapshot,
    StoreError, StoredEvent, StoredOutcome, StreamId, Version,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Read access to the store, cheap to clone.
pub type EventStore = Arc<dyn StoreReads>;

/// Write access to the store, cheap to clone: the group commit every actor appends through.
pub type Writer = Arc<dyn StoreWrites>;

/// Where a new subscriber starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// After the last event committed before its component was stored.
    Head,
    /// At the first event of the log.
    Beginning,
}

/// A submitted batch's answer, to await.
pub struct Receipt(pub(crate) oneshot::Receiver<Result<Committed, AppendError>>);

impl Receipt {
    /// A receipt already answered (for work that needs no commit, or could not be queued).
    pub fn ready(result: Result<Committed, AppendError>) -> Receipt {
        let (reply, answer) = oneshot::channel();
        let _ = reply.send(result);
        Receipt(answer)
    }
}

impl std::future::Future for Receipt {
    type Output = Result<Committed, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Closed.into())))
    }
}

/// The store failed with an I/O error and the writer opened its file again.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reopening {
    /// The I/O error.
    pub error: String,
    pub failed_at: String,
    /// When the file was open again (`None`: not yet).
    pub reopened_at: Option<String>,
    /// How long the store could not take commits, in milliseconds.
    pub unavailable_ms: Option<u64>,
    #[serde(skip)]
    pub(crate) failed_at_micros: u64,
}

/// Everything the host reads from its store.
#[async_trait]
pub trait StoreReads: Send + Sync + 'static {
    /// The position of the newest committed event (0 for an empty log).
    fn head_position(&self) -> Position;

    /// Wakes whenever a commit moves the head of the log.
    fn subscribe_head(&self) -> watch::Receiver<Position>;

    /// Events of the global log with `position > after`, a page of them, in order.
    async fn read_all(&self, after: Position, page: Page) -> Result<Vec<StoredEvent>, StoreError>;

    /// One event of the global log, if there is one at `position`.
    async fn read_event(&self, position: Position) -> Result<Option<StoredEvent>, StoreError>;

    /// The events of one correlation (a saga's chain) after position `after`, in global
    /// order, a page of them.
    async fn read_correlation(
        &self,
        correlation_id: &str,
        after: Position,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Whether `event` answers a command a reaction sent for an event of `type_name`'s
    /// streams (its `reply_to`; a store that holds events from before `reply_to` was
    /// recorded tells those by their cause).
    async fn is_reply_to(&self, event: &StoredEvent, type_name: &str) -> Result<bool, StoreError>;

    /// The stream's version and its newest event's position; `None` for a stream with no events.
    async fn stream_head(&self, stream: &StreamId) -> Result<Option<(Version, Position)>, StoreError>;

    /// Events of one stream with `from <= version <= to`, a page of them, in version order.
    async fn read_stream_range(
        &self,
        stream: &StreamId,
        from: Version,
        to: Version,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events of one stream with `from <= version`, a page of them, in version order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: Version,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_stream_range(stream, from, Version::MAX, page).await
    }

    /// The streams of `type_name` written most recently (by their newest event's
    /// position), newest first, at most `limit`.
    async fn recent_streams(&self, type_name: &str, limit: usize) -> Result<Vec<StreamId>, StoreError>;

    /// The newest snapshot of a stream, whoever made it; the caller checks the digest.
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// The newest snapshot of a stream if `digest` made it: a snapshot is only valid while
    /// the component version that built it is active (DESIGN.md, durability rule 4).
    async fn load_snapshot_for(
        &self,
        stream: &StreamId,
        digest: &[u8],
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.load_snapshot(stream).await?.filter(|s| s.digest == digest))
    }

    /// The newest snapshot in a stream's history at or before `version` that `digest` made:
    /// where a temporal read starts folding.
    async fn snapshot_at_or_before(
        &self,
        stream: &StreamId,
        version: Version,
        digest: &[u8],
    ) -> Result<Option<Snapshot>, StoreError>;

    /// The recorded outcome of a keyed command (idempotency key or routed causation).
    async fn outcome(&self, stream: &StreamId, key: &OutcomeKey)
    -> Result<Option<StoredOutcome>, StoreError>;

    /// A subscriber's durable cursor: every event at or below it has been handled.
    async fn cursor(&self, name: &str) -> Result<Position, StoreError>;

    /// Dead letters in (subscriber, stream key, position) order: those of `subscriber` and
    /// `stream` when given, after the key `after`, at most `limit`; each with the bytes it
    /// takes in the store (its record and key; the parked event itself stays in the log).
    async fn dead_letters(
        &self,
        subscriber: Option<&str>,
        stream: Option<&StreamId>,
        after: Option<&DeadLetterKey>,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, u64)>, StoreError>;

    /// One dead letter, if it is kept.
    async fn dead_letter(&self, key: &DeadLetterKey) -> Result<Option<DeadLetter>, StoreError>;

    /// How many dead letters `subscriber` has (a kept count, not a scan).
    async fn dead_letter_count(&self, subscriber: &str) -> Result<u64, StoreError>;

    /// Every subscriber that has dead letters, with how many (kept counts).
    async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// How many dead letters `subscriber` has of one `stream`.
    async fn stream_dead_letter_count(&self, subscriber: &str, stream: &StreamId) -> Result<u64, StoreError>;

    /// The streams `subscriber` has parked events of, each with its first parked position.
    async fn parked_streams(&self, subscriber: &str) -> Result<BTreeMap<StreamId, Position>, StoreError>;

    /// Every component's registry record, by name.
    async fn component_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The bytes stored under a component digest.
    async fn component_bytes(&self, digest: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Send, from one snapshot of the store, everything it holds that is not derived: a
    /// header with the snapshot's head, every event in position order, component bytes and
    /// records, outcomes, cursors and dead letters ([`super::export`]). It runs on a task or
    /// thread of its own while the store keeps serving; an error ends it, sent as the last
    /// item; a receiver that goes away stops it.
    fn export(&self, out: mpsc::Sender<Result<ExportRecord, StoreError>>);
}

/// Everything the host makes durable. Each write is answered once it is durable (or
/// refused); writes are applied in the order they were made.
#[async_trait]
pub trait StoreWrites: Send + Sync + 'static {
    /// Queue a batch and answer at once; the [`Receipt`] resolves once it is durable (or
    /// refused), as [`StoreWrites::append`] would. Batches are committed in the order they
    /// were submitted, so an actor may decide its next batch while this one commits: a later
    /// batch of the same stream is refused with `VersionConflict` if an earlier one stored
    /// nothing it counted on.
    ///
    /// # Errors
    /// `Closed` when the store takes no more writes.
    fn submit(&self, batch: AppendBatch) -> Result<Receipt, StoreError>;

    /// Append a batch; answers once it is durable.
    ///
    /// # Errors
    /// `VersionConflict` when the stream is not at `expected_version`; `Store` when the
    /// commit failed (nothing of the batch is stored) or the store is closed.
    async fn append(&self, batch: AppendBatch) -> Result<Committed, AppendError> {
        self.submit(batch)?.await
    }

    /// Move a subscriber's cursor.
    async fn set_cursor(&self, name: &str, position: Position) -> Result<(), StoreError>;

    /// Record a dead letter, replacing one with the same key.
    async fn park(&self, letter: DeadLetter) -> Result<(), StoreError>;

    /// Remove dead letters; keys that are not there are ignored.
    async fn unpark(&self, keys: Vec<DeadLetterKey>) -> Result<(), StoreError>;

    /// Forget at most `limit` idempotency keys recorded before `recorded_before` (µs since
    /// the epoch): a retry with one of them afterwards runs as a new command. Answers how many
    /// were forgotten.
    async fn forget_idempotency_keys(&self, recorded_before: u64, limit: usize) -> Result<usize, StoreError>;

    /// Store a component's record, its bytes (`(digest, bytes)`) when the version is new,
    /// and, if `cursor` names a cursor that does not exist yet, that cursor at `start`.
    async fn put_component(
        &self,
        name: &str,
        record: Vec<u8>,
        blob: Option<(Vec<u8>, Vec<u8>)>,
        cursor: Option<(String, CursorStart)>,
    ) -> Result<(), StoreError>;

    /// Store a component's record after one of its versions was deleted, and remove the
    /// bytes `drop_blob` names (no version uses them any more).
    async fn delete_component_version(
        &self,
        name: &str,
        record: Vec<u8>,
        drop_blob: Option<Vec<u8>>,
    ) -> Result<(), StoreError>;

    /// Add snapshots to a stream's history (what a long fold passed), so later temporal
    /// reads near them fold little.
    async fn keep_snapshots(&self, stream: &StreamId, snapshots: Vec<Snapshot>) -> Result<(), StoreError>;

    /// Write records of an export into a store that was empty when the import began, in
    /// order, in one transaction: events keep their positions (the next must follow the
    /// head) and times, dead letters their counts. Refused whole when an event does not
    /// follow the head or its stream.
    async fn restore(&self, records: Vec<ExportRecord>) -> Result<(), StoreError>;

    /// Wait until everything submitted before this call has been committed or refused: what
    /// a stream's new actor waits for when the one before it died with batches in flight, so
    /// that it reads the stream as those batches left it.
    async fn barrier(&self) -> Result<(), StoreError>;

    /// Why the store cannot take writes now, if it cannot (for `/readyz`).
    fn problem(&self) -> Option<String>;

    /// The last time the store failed with an I/O error and was opened again, if it did.
    fn last_reopening(&self) -> Option<Reopening>;

    /// Finish the queued writes and stop taking more; writes after it fail with `Closed`.
    async fn shutdown(&self);
}
