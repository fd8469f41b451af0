//! The redb tables of the event store, in one place.

use redb::{TableDefinition, TableError, WriteTransaction};

/// position → [`super::StoredEvent`]: the global log.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// stream key (`type/id`) → (version, position of its newest event).
pub const STREAMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("streams");
/// (stream key, version) → position, complete up to `meta`'s `stream_index_through`; the
/// newer entries are in the writer's tail (`stream_tail.rs`).
pub const STREAM_INDEX: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_index");
/// stream key → [`super::Snapshot`] (the newest).
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (stream key, outcome key) → [`super::StoredOutcome`]. Outcome keys are `idem:<key>`
/// for an `Idempotency-Key` and `cause:<...>` for a routed command's causation.
pub const OUTCOMES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("outcomes");
/// (stream key, version) → [`super::Snapshot`]: a snapshot at every snapshot interval a
/// stream passed (one a version: a newer component's replaces an older one's), so a temporal
/// read of any version folds at most about one interval from the nearest older one.
pub const SNAPSHOT_HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshot_history");
/// (commit time in µs, stream key, outcome key) → (): when each `idem:` outcome was
/// recorded, so the retention sweep reads only what has expired. Routed commands' `cause:`
/// outcomes are not here: they are kept as long as the stream (see ARCHITECTURE.md).
pub const IDEMPOTENCY_TIMES: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("idempotency_times");
/// (correlation id, position) → (): the saga index.
pub const CORRELATIONS: TableDefinition<(&str, u64), ()> = TableDefinition::new("correlations");
/// component name → its registry record.
pub const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");
/// sha-256 digest → component bytes.
pub const COMPONENT_BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("component_blobs");
/// subscriber name → position handled up to.
pub const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");

/// (subscriber, source stream key, position) → [`super::DeadLetter`]: parked events, in
/// stream order per subscriber, so a parked sequence is one range.
pub const PARKED: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("parked");

/// subscriber → how many dead letters it has in `parked`, kept by the writer with every park
/// and unpark, so counting never scans the letters.
pub const PARKED_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("parked_counts");

/// name → number: the store's own bookkeeping (`stream_index_through`, `parked_counted`).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Open every table once so that read transactions find them even in a new file.
pub fn create_all(txn: &WriteTransaction) -> Result<(), TableError> {
    txn.open_table(EVENTS)?;
    txn.open_table(STREAMS)?;
    txn.open_table(STREAM_INDEX)?;
    txn.open_table(SNAPSHOTS)?;
    txn.open_table(SNAPSHOT_HISTORY)?;
    txn.open_table(OUTCOMES)?;
    txn.open_table(IDEMPOTENCY_TIMES)?;
    txn.open_table(CORRELATIONS)?;
    txn.open_table(COMPONENTS)?;
    txn.open_table(COMPONENT_BLOBS)?;
    txn.open_table(CURSORS)?;
    txn.open_table(PARKED)?;
    txn.open_table(PARKED_COUNTS)?;
    txn.open_table(META)?;
    Ok(())
}
