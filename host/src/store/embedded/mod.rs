//! The embedded store: one redb file holding the global log and everything that must commit
//! with it (stream heads, snapshots, idempotency and dedup outcomes, the correlation
//! index, component versions, cursors, dead letters).
//!
//! One writer thread owns all write transactions of the log ([`writer`]): it drains every
//! pending append into one transaction and one fsync (group commit), re-checks each
//! stream's expected version, and assigns global positions. Reads run on redb's MVCC read
//! transactions and never wait for the writer.
//!
//! # Durability
//! Every commit uses [`redb::Durability::Immediate`]: when an append is answered `Ok`, its
//! events, outcome records and snapshot are on disk. A crash loses only appends that were
//! never answered, and never half of one (a transaction commits whole or not at all).

pub(crate) mod file;
mod stream_tail;
pub mod tables;
mod writer;

use super::export::ExportRecord;
use super::records::{self, Record};
use super::{
    DeadLetter, DeadLetterKey, EventStore, OutcomeKey, Page, PageFill, Position, Snapshot, StoreError,
    StoreReads, StoredEvent, StoredOutcome, StreamId, Version, Writer,
};
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tables::*;
use tokio::sync::{mpsc, watch};
use writer::EmbeddedWriter;

/// The `meta` key of the head at the first open by a Cairn that records `reply_to`.
const REPLIES_RECORDED_AFTER: &str = "replies_recorded_after";

/// At open: note where the log starts recording what each routed command answered.
fn record_replies_recorded_after_if_missing(
    txn: &redb::WriteTransaction,
    head: Position,
) -> Result<Position, StoreError> {
    let mut meta = txn.open_table(META)?;
    if let Some(after) = meta.get(REPLIES_RECORDED_AFTER)?.map(|v| v.value()) {
        return Ok(Position(after));
    }
    meta.insert(REPLIES_RECORDED_AFTER, head.get())?;
    Ok(head)
}

/// The embedded store's reads: redb's MVCC read transactions, which never wait for the writer.
struct EmbeddedReads {
    /// Every event after this position records the stream its command answered
    /// (`reply_to`); events at or before it were written by a Cairn that did not.
    replies_recorded_after: Position,
    file: Arc<file::StoreFile>,
    head: watch::Receiver<Position>,
    tail: Arc<stream_tail::StreamTail>,
}

/// Open (or create) the store at `path` and start its writer thread.
///
/// # Errors
/// The file cannot be opened or created, or it is not a Cairn store.
pub fn open(path: &Path) -> Result<(EventStore, Writer), StoreError> {
    let file = Arc::new(file::StoreFile::open(path)?);
    let db = file.get()?;
    let txn = db.begin_write()?;
    tables::create_all(&txn)?;
    let head_position = Position(txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value()).unwrap_or(0));
    stream_tail::record_indexed_through_if_missing(&txn, head_position)?;
    let replies_recorded_after = record_replies_recorded_after_if_missing(&txn, head_position)?;
    let sequence = txn.open_table(META)?.get(writer::COMMIT_SEQUENCE)?.map_or(0, |v| v.value());
    writer::count_parked_if_uncounted(&txn)?;
    txn.commit()?;
    let tail = Arc::new(stream_tail::StreamTail::load(&db, head_position)?);
    let (head_tx, head_rx) = watch::channel(head_position);
    drop(db);
    let writer = EmbeddedWriter::start(file.clone(), head_position, sequence, head_tx, tail.clone())?;
    let reads = EmbeddedReads { file, head: head_rx, tail, replies_recorded_after };
    Ok((Arc::new(reads), Arc::new(super::queue::QueuedWriter(writer))))
}

#[async_trait]
impl StoreReads for EmbeddedReads {
    /// Events written before Cairn recorded `reply_to` carry only their causation (the
    /// triggering event's position): for those, the triggering event is read.
    async fn is_reply_to(&self, event: &StoredEvent, type_name: &str) -> Result<bool, StoreError> {
        if event.reply_to.is_some() || event.position > self.replies_recorded_after {
            return Ok(event.is_reply_to(type_name));
        }
        let Some(cause) = event.causation_id.as_deref().and_then(|c| c.parse::<Position>().ok()) else {
            return Ok(false);
        };
        match self.read_event(cause).await {
            Ok(found) => Ok(found.is_some_and(|cause| cause.stream_type == type_name)),
            // A cause that cannot be read names no one: the event is not a reply, and the
            // subscriber goes on rather than stopping at it for good.
            Err(StoreError::Corrupt(reason)) => {
                tracing::warn!(
                    position = event.position.get(),
                    cause = cause.get(),
                    "the cause of an event cannot be read: {reason}"
                );
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    fn head_position(&self) -> Position {
        *self.head.borrow()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn stream_head(&self, stream: &StreamId) -> Result<Option<(Version, Position)>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let streams = read.open_table(STREAMS)?;
        Ok(streams.get(stream.key().as_str())?.map(|v| {
            let (version, position) = v.value();
            (Version(version), Position(position))
        }))
    }

    async fn read_stream_range(
        &self,
        stream: &StreamId,
        from: Version,
        to: Version,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        stream_tail::read_range(&*self.file.get()?, &self.tail, stream, from, to, page)
    }

    async fn read_all(&self, after: Position, page: Page) -> Result<Vec<StoredEvent>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let events = read.open_table(EVENTS)?;
        let mut fill = PageFill::new(page);
        let mut out = Vec::new();
        for entry in events.range(after.get().saturating_add(1)..)? {
            if !fill.has_room() {
                break;
            }
            let (_, record) = entry?;
            fill.add(record.value().len());
            out.push(StoredEvent::decode(record.value())?);
        }
        Ok(out)
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let snapshots = read.open_table(SNAPSHOTS)?;
        snapshots.get(stream.key().as_str())?.map(|v| Snapshot::decode(v.value())).transpose()
    }

    async fn snapshot_at_or_before(
        &self,
        stream: &StreamId,
        version: Version,
        digest: &[u8],
    ) -> Result<Option<Snapshot>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let history = read.open_table(SNAPSHOT_HISTORY)?;
        let key = stream.key();
        for entry in history.range((key.as_str(), 0)..=(key.as_str(), version.get()))?.rev() {
            let (_, record) = entry?;
            // Another version's snapshots (the whole history, right after a deploy) are
            // passed by their digest alone, without copying their states.
            if records::snapshot_digest(record.value()).is_some_and(|d| d != digest) {
                continue;
            }
            let snapshot = Snapshot::decode(record.value())?;
            if snapshot.digest == digest {
                return Ok(Some(snapshot));
            }
        }
        Ok(None)
    }

    async fn outcome(
        &self,
        stream: &StreamId,
        key: &OutcomeKey,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let outcomes = read.open_table(OUTCOMES)?;
        let key = key.stored();
        outcomes
            .get((stream.key().as_str(), key.as_str()))?
            .map(|v| StoredOutcome::decode(v.value()))
            .transpose()
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        after: Position,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let index = read.open_table(CORRELATIONS)?;
        let events = read.open_table(EVENTS)?;
        let mut fill = PageFill::new(page);
        let mut out = Vec::new();
        let range = (correlation_id, after.get().saturating_add(1))..=(correlation_id, u64::MAX);
        for entry in index.range(range)? {
            if !fill.has_room() {
                break;
            }
            let (key, _) = entry?;
            let position = key.value().1;
            if let Some(record) = events.get(position)? {
                fill.add(record.value().len());
                out.push(StoredEvent::decode(record.value())?);
            }
        }
        Ok(out)
    }

    /// Scans the type's streams once.
    async fn recent_streams(&self, type_name: &str, limit: usize) -> Result<Vec<StreamId>, StoreError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let read = self.file.get()?.begin_read()?;
        let streams = read.open_table(STREAMS)?;
        let prefix = format!("{type_name}/");
        let mut newest: BinaryHeap<Reverse<(Position, String)>> = BinaryHeap::new();
        for entry in streams.range(prefix.as_str()..)? {
            let (key, head) = entry?;
            let Some(id) = key.value().strip_prefix(&prefix) else { break };
            newest.push(Reverse((Position(head.value().1), id.to_owned())));
            if newest.len() > limit {
                newest.pop();
            }
        }
        let mut streams: Vec<_> = newest.into_iter().map(|Reverse(entry)| entry).collect();
        streams.sort_by_key(|&(position, _)| std::cmp::Reverse(position));
        Ok(streams.into_iter().map(|(_, id)| StreamId { type_name: type_name.to_owned(), id }).collect())
    }

    async fn read_event(&self, position: Position) -> Result<Option<StoredEvent>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let events = read.open_table(EVENTS)?;
        events.get(position.get())?.map(|record| StoredEvent::decode(record.value())).transpose()
    }

    async fn dead_letters(
        &self,
        subscriber: Option<&str>,
        stream: Option<&StreamId>,
        after: Option<&DeadLetterKey>,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, u64)>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(PARKED)?;
        // The key ranges to read, in key order: a stream without its subscriber is one range
        // per subscriber that has letters (their kept counts name them), never a scan.
        let subscribers: Vec<String> = match subscriber {
            Some(subscriber) => vec![subscriber.to_owned()],
            None if stream.is_some() => {
                let counts = read.open_table(PARKED_COUNTS)?;
                counts
                    .iter()?
                    .map(|entry| entry.map(|(s, _)| s.value().to_owned()))
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        let after_key = after.map(|a| (a.subscriber.as_str(), a.stream.key(), a.position.get()));
        let after = after_key
            .as_ref()
            .map(|(subscriber, stream, position)| (*subscriber, stream.as_str(), *position));
        let mut out = Vec::new();
        // Read keys from `from` on while `within` holds; `false` once the page is full.
        let mut read_from = |from: (&str, &str, u64), within: &dyn Fn(&str, &str) -> bool| {
            let from = match after {
                Some(after) if after > from => after,
                _ => from,
            };
            for entry in table.range(from..)? {
                let (key, record) = entry?;
                let (key_subscriber, key_stream, position) = key.value();
                if !within(key_subscriber, key_stream) {
                    break;
                }
                if after.is_some_and(|a| a >= (key_subscriber, key_stream, position)) {
                    continue;
                }
                let stored_bytes = record.value().len() + key_subscriber.len() + key_stream.len() + 8;
                out.push((DeadLetter::decode(record.value())?, stored_bytes as u64));
                if out.len() >= limit {
                    return Ok::<bool, StoreError>(false);
                }
            }
            Ok(true)
        };
        let stream = stream.map(StreamId::key);
        let stream = stream.as_deref();
        if subscriber.is_none() && stream.is_none() {
            read_from(("", "", 0), &|_, _| true)?;
        } else {
            for name in &subscribers {
                let more = match stream {
                    Some(stream) => read_from((name, stream, 0), &|s, st| s == name && st == stream)?,
                    None => read_from((name, "", 0), &|s, _| s == name)?,
                };
                if !more {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn dead_letter(&self, key: &DeadLetterKey) -> Result<Option<DeadLetter>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(PARKED)?;
        let stream = key.stream.key();
        let letter = table.get((key.subscriber.as_str(), stream.as_str(), key.position.get()))?;
        letter.map(|record| DeadLetter::decode(record.value())).transpose()
    }

    /// A kept count, not a scan.
    async fn dead_letter_count(&self, subscriber: &str) -> Result<u64, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let counts = read.open_table(PARKED_COUNTS)?;
        Ok(counts.get(subscriber)?.map_or(0, |v| v.value()))
    }

    async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let counts = read.open_table(PARKED_COUNTS)?;
        let mut out = BTreeMap::new();
        for entry in counts.iter()? {
            let (subscriber, count) = entry?;
            out.insert(subscriber.value().to_owned(), count.value());
        }
        Ok(out)
    }

    /// A range of that stream's keys.
    async fn stream_dead_letter_count(&self, subscriber: &str, stream: &StreamId) -> Result<u64, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(PARKED)?;
        let stream = stream.key();
        let stream = stream.as_str();
        let mut count = 0;
        for entry in table.range((subscriber, stream, 0)..=(subscriber, stream, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    async fn parked_streams(&self, subscriber: &str) -> Result<BTreeMap<StreamId, Position>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(PARKED)?;
        // One seek per parked stream, to its first letter: the letters waiting behind it (which
        // can be many) are not read.
        let mut out = BTreeMap::new();
        let mut after = (String::new(), 0);
        loop {
            let Some(entry) = table.range((subscriber, after.0.as_str(), after.1)..)?.next() else { break };
            let (key, _) = entry?;
            let (key_subscriber, stream, position) = key.value();
            if key_subscriber != subscriber {
                break;
            }
            let parked = StreamId::from_key(stream)
                .ok_or_else(|| StoreError::Corrupt(format!("dead letter key {stream:?} names no stream")))?;
            out.insert(parked, Position(position));
            // Positions are below u64::MAX: this passes the rest of the stream's letters.
            after = (stream.to_owned(), u64::MAX);
        }
        Ok(out)
    }

    async fn cursor(&self, name: &str) -> Result<Position, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let cursors = read.open_table(CURSORS)?;
        Ok(Position(cursors.get(name)?.map(|v| v.value()).unwrap_or(0)))
    }

    async fn component_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(COMPONENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, record) = entry?;
            out.push((name.value().to_owned(), record.value().to_vec()));
        }
        Ok(out)
    }

    async fn component_bytes(&self, digest: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let blobs = read.open_table(COMPONENT_BLOBS)?;
        Ok(blobs.get(digest)?.map(|bytes| bytes.value().to_vec()))
    }

    /// One redb read transaction is the snapshot, read on a blocking thread.
    fn export(&self, out: mpsc::Sender<Result<ExportRecord, StoreError>>) {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = export_snapshot(&file, &out) {
                let _ = out.blocking_send(Err(error));
            }
        });
    }
}

fn export_snapshot(
    file: &file::StoreFile,
    out: &mpsc::Sender<Result<ExportRecord, StoreError>>,
) -> Result<(), StoreError> {
    let read = file.get()?.begin_read()?;
    let send = |record| out.blocking_send(Ok(record)).map_err(|_| StoreError::Closed);
    let events = read.open_table(EVENTS)?;
    send(super::export::header(Position(events.last()?.map_or(0, |(k, _)| k.value()))))?;
    for entry in events.iter()? {
        send(ExportRecord::Event(StoredEvent::decode(entry?.1.value())?))?;
    }
    for entry in read.open_table(COMPONENT_BLOBS)?.iter()? {
        let (digest, bytes) = entry?;
        send(ExportRecord::Blob { digest: digest.value().to_vec(), bytes: bytes.value().to_vec() })?;
    }
    for entry in read.open_table(COMPONENTS)?.iter()? {
        let (name, record) = entry?;
        send(ExportRecord::Component { name: name.value().to_owned(), record: record.value().to_vec() })?;
    }
    // When each client key was recorded: the retention window goes on from there.
    let mut recorded = std::collections::HashMap::new();
    for entry in read.open_table(IDEMPOTENCY_TIMES)?.iter()? {
        let (key, _) = entry?;
        let (time, stream, outcome) = key.value();
        recorded.insert((stream.to_owned(), outcome.to_owned()), time);
    }
    for entry in read.open_table(OUTCOMES)?.iter()? {
        let (key, outcome) = entry?;
        let (stream, outcome_key) = key.value();
        let recorded_at_micros = recorded.get(&(stream.to_owned(), outcome_key.to_owned())).copied();
        let stream = StreamId::from_key(stream)
            .ok_or_else(|| StoreError::Corrupt(format!("outcome key {stream:?} names no stream")))?;
        send(ExportRecord::Outcome {
            stream,
            key: outcome_key.to_owned(),
            outcome: outcome.value().to_vec(),
            recorded_at_micros,
        })?;
    }
    for entry in read.open_table(CURSORS)?.iter()? {
        let (name, position) = entry?;
        send(ExportRecord::Cursor { name: name.value().to_owned(), position: Position(position.value()) })?;
    }
    for entry in read.open_table(PARKED)?.iter()? {
        send(ExportRecord::DeadLetter(DeadLetter::decode(entry?.1.value())?))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AppendBatch, ComponentVersion, NewEvent};

    /// A stream keeps a snapshot at every interval; a temporal read finds the newest one at
    /// or before the version it wants that the active component made.
    #[tokio::test]
    async fn a_stream_keeps_its_recent_snapshots_for_temporal_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = open(&dir.path().join("events.redb")).unwrap();
        let stream = StreamId::new("account", "1").unwrap();
        for version in 1..=40u64 {
            let event = NewEvent {
                event_type: "Credited".to_owned(),
                payload: vec![0x80],
                correlation_id: "c".to_owned(),
                causation_id: None,
                component_version: ComponentVersion(1),
                reply_to: None,
                schema: cairn_wire::FIRST_SCHEMA,
                trace: None,
            };
            // A new component version (digest 2) made the last five.
            let digest = vec![if version <= 35 { 1 } else { 2 }];
            let snapshot = Snapshot { version: Version(version), digest, state: vec![version as u8] };
            let batch = AppendBatch {
                stream: stream.clone(),
                expected_version: Version(version - 1),
                events: vec![event],
                outcomes: Vec::new(),
                snapshot: Some(snapshot.clone()),
                history: vec![snapshot],
                fence: None,
            };
            writer.append(batch).await.unwrap();
        }
        let at = async |version, digest: u8| {
            store
                .snapshot_at_or_before(&stream, Version(version), &[digest])
                .await
                .unwrap()
                .map(|s| (s.version.get(), s.state))
        };
        assert_eq!(at(20, 1).await, Some((20, vec![20])));
        assert_eq!(at(40, 1).await, Some((35, vec![35])), "another version's snapshots are skipped");
        assert_eq!(at(40, 2).await, Some((40, vec![40])));
        assert_eq!(at(1, 1).await, Some((1, vec![1])), "every one is kept, the oldest too");
        assert_eq!(at(0, 1).await, None);
        // Snapshots a fold left behind join the history.
        let kept = Snapshot { version: Version(38), digest: vec![3], state: vec![99] };
        writer.keep_snapshots(&stream, vec![kept]).await.unwrap();
        assert_eq!(at(40, 3).await, Some((38, vec![99])));
        assert_eq!(at(38, 2).await, Some((37, vec![37])), "another version's at the same place was replaced");
        writer.shutdown().await;
    }

    /// Events written by a Cairn before `reply_to` existed carry only their causation: a
    /// replies-only subscriber still gets the ones its own type's reactions caused (the
    /// triggering event is read), and nothing else. Events after the upgrade are judged by
    /// `reply_to` alone.
    #[tokio::test]
    async fn events_from_before_reply_to_are_told_apart_by_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        let event = |causation: Option<&str>| NewEvent {
            event_type: "Happened".to_owned(),
            payload: vec![0x80],
            correlation_id: "c".to_owned(),
            causation_id: causation.map(str::to_owned),
            component_version: ComponentVersion(1),
            reply_to: None,
            schema: cairn_wire::FIRST_SCHEMA,
            trace: None,
        };
        let append = |stream: &str, event: NewEvent| AppendBatch {
            stream: StreamId::new(stream.split_once('/').unwrap().0, stream.split_once('/').unwrap().1)
                .unwrap(),
            expected_version: Version::ZERO,
            events: vec![event],
            outcomes: Vec::new(),
            snapshot: None,
            history: Vec::new(),
            fence: None,
        };
        {
            let (store, writer) = open(&path).unwrap();
            writer.append(append("money-transfer/t", event(None))).await.unwrap();
            writer.append(append("account/a", event(Some("1")))).await.unwrap();
            writer.append(append("account/b", event(None))).await.unwrap();
            writer.shutdown().await;
            drop((store, writer));
            // As a store of that earlier Cairn: no mark of where `reply_to` starts.
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(REPLIES_RECORDED_AFTER).unwrap();
            txn.commit().unwrap();
        }
        let (store, writer) = open(&path).unwrap();
        let read = async |position| store.read_event(position).await.unwrap().unwrap();
        assert!(
            store.is_reply_to(&read(Position(2)).await, "money-transfer").await.unwrap(),
            "caused by a transfer's event"
        );
        assert!(!store.is_reply_to(&read(Position(2)).await, "order").await.unwrap());
        assert!(!store.is_reply_to(&read(Position(3)).await, "money-transfer").await.unwrap(), "a client's");
        let mut later = append("account/c", event(Some("1")));
        later.expected_version = Version(0);
        writer.append(later).await.unwrap();
        assert!(
            !store.is_reply_to(&read(Position(4)).await, "money-transfer").await.unwrap(),
            "after the upgrade, reply_to tells"
        );
        writer.shutdown().await;
    }
}
