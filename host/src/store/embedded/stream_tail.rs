//! The stream index's tail: where the newest events of each stream are found before the
//! writer moves them into `stream_index`.
//!
//! `stream_index` is keyed by (stream, version). Written with every commit, it makes each
//! commit rewrite one B-tree leaf per stream it touches: with many streams that is most of a
//! commit's pages (criterion `store`: a commit of 64 events over 64 streams goes from 0.53 ms
//! to 2.78 ms with the index). So the writer keeps each stream's newest entries here, in
//! memory, and moves a stream's entries into the table, inside a group commit, once it has
//! [`FLUSH_AT`] of them or its oldest is [`MAX_AGE`] events behind the head: a busy stream
//! then costs one leaf per [`FLUSH_AT`] events, and the work stays spread over the commits
//! (moving everything at once made the commits that did it slow enough to show in p99).
//!
//! The tail is derived data. The `meta` table records a position up to which the table is
//! complete (`stream_index_through`); opening a store scans the log after it to rebuild the
//! tail, so a crash loses nothing (entries found both in the table and the tail are the
//! same). A file written before the tail existed has no such record and a complete index.
//!
//! Readers stay consistent with their redb snapshot by a lock ordering: a reader takes the
//! tail's read lock, begins its read transaction, and copies its stream's entries before
//! letting go; the writer adds a group's entries before committing it and removes moved
//! entries only after that commit, each under the write lock. A reader therefore finds every
//! entry its snapshot can see in the table or the tail (entries of commits its snapshot
//! cannot see are past its stream head, and ignored).

use super::tables::{EVENTS, META, STREAM_INDEX, STREAMS};
use crate::store::records::Record;
use crate::store::{Page, PageFill, Position, StoreError, StoredEvent, StreamId, Version};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

/// A stream's entries are moved into the table once it has this many in the tail.
const FLUSH_AT: usize = 16;
/// ... or once its oldest is this many events behind the head, so a quiet stream's entries
/// do not stay in memory (and the scan at open stays short).
const MAX_AGE: u64 = 16_384;

/// The `meta` key of the position up to which `stream_index` holds every event.
const INDEXED_THROUGH: &str = "stream_index_through";

#[derive(Default)]
pub(super) struct StreamTail {
    inner: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    /// stream key → (version, position), in version order.
    by_stream: HashMap<String, Vec<(Version, Position)>>,
    /// (position of its oldest entry, stream) for each stream as it enters the tail, oldest
    /// first. An item may outlive its stream's stay (moved or taken back): it is checked
    /// when it comes up.
    by_age: VecDeque<(Position, String)>,
    /// Streams that reached [`FLUSH_AT`] entries.
    full: Vec<String>,
}

/// Which streams a group commit moves into the table, and the position the table is then
/// complete up to.
pub(super) struct Flush {
    streams: Vec<String>,
    through: Position,
}

/// At open: a store written before the tail existed (or a new one) indexed every event as
/// it committed; record that, so the tail is rebuilt from the right place after a crash.
pub(super) fn record_indexed_through_if_missing(
    txn: &WriteTransaction,
    head: Position,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(INDEXED_THROUGH)?.is_none() {
        meta.insert(INDEXED_THROUGH, head.get())?;
    }
    Ok(())
}

impl Entries {
    fn add(&mut self, stream: &str, version: Version, position: Position) {
        let list = self.by_stream.entry(stream.to_owned()).or_default();
        if list.is_empty() {
            self.by_age.push_back((position, stream.to_owned()));
        }
        list.push((version, position));
        if list.len() == FLUSH_AT {
            self.full.push(stream.to_owned());
        }
    }
}

impl StreamTail {
    /// The tail of a store just opened: the events after the indexed position.
    pub(super) fn load(db: &Database, head: Position) -> Result<StreamTail, StoreError> {
        let read = db.begin_read()?;
        let through = read.open_table(META)?.get(INDEXED_THROUGH)?.map_or(head, |v| Position(v.value()));
        let events = read.open_table(EVENTS)?;
        let mut entries = Entries::default();
        for entry in events.range(through.get().saturating_add(1)..=head.get())? {
            let (position, record) = entry?;
            let event = StoredEvent::decode(record.value())?;
            entries.add(&event.stream().key(), event.version, Position(position.value()));
        }
        Ok(StreamTail { inner: RwLock::new(entries) })
    }

    /// Begin a read transaction and take `stream`'s tail entries within `from..=to`
    /// consistently with it (see the module's comment).
    /// Forget every entry and rebuild them from the log, as at open: after the file was
    /// opened again, what it holds is the truth.
    pub(super) fn reload(&self, db: &Database, head: Position) -> Result<(), StoreError> {
        let fresh = StreamTail::load(db, head)?;
        let entries = fresh.inner.into_inner().expect("stream tail lock");
        *self.inner.write().expect("stream tail lock") = entries;
        Ok(())
    }

    pub(super) fn begin_read(
        &self,
        db: &Database,
        stream: &str,
        from: Version,
        to: Version,
    ) -> Result<(ReadTransaction, Vec<(Version, Position)>), StoreError> {
        let entries = self.inner.read().expect("stream tail lock");
        let read = db.begin_read()?;
        let mine = entries
            .by_stream
            .get(stream)
            .map(|e| e.iter().filter(|(version, _)| (from..=to).contains(version)).copied().collect())
            .unwrap_or_default();
        Ok((read, mine))
    }

    /// Add a group's entries, before its commit.
    pub(super) fn add(&self, group: &[(String, Version, Position)]) {
        let mut entries = self.inner.write().expect("stream tail lock");
        for (stream, version, position) in group {
            entries.add(stream, *version, *position);
        }
    }

    /// Take back a group's entries after its commit failed (its positions are above `head`),
    /// and queue again the streams its flush would have moved.
    pub(super) fn undo(&self, group: &[(String, Version, Position)], head: Position, flush: Option<Flush>) {
        let mut entries = self.inner.write().expect("stream tail lock");
        for (stream, _, _) in group {
            if let Some(list) = entries.by_stream.get_mut(stream) {
                list.retain(|(_, position)| *position <= head);
                if list.is_empty() {
                    entries.by_stream.remove(stream);
                }
            }
        }
        // The group's items were pushed last; positions above `head` will be used again,
        // and `by_age` must stay in position order.
        while entries.by_age.back().is_some_and(|(oldest, _)| *oldest > head) {
            entries.by_age.pop_back();
        }
        if let Some(flush) = flush {
            entries.full.extend(flush.streams);
        }
    }

    /// The streams due to move into the table with the commit that takes the head to `head`,
    /// if any.
    pub(super) fn due(&self, head: Position) -> Option<Flush> {
        let mut entries = self.inner.write().expect("stream tail lock");
        let mut streams = std::mem::take(&mut entries.full);
        while let Some((oldest, _)) = entries.by_age.front()
            && oldest.saturating_add(MAX_AGE) <= head
        {
            let (oldest, stream) = entries.by_age.pop_front().expect("an item");
            // Still there, with this entry first: it is due; else the item is stale.
            if entries.by_stream.get(&stream).and_then(|list| list.first()).is_some_and(|(_, p)| *p == oldest)
            {
                streams.push(stream);
            }
        }
        if streams.is_empty() {
            return None;
        }
        streams.sort_unstable();
        streams.dedup();
        streams.retain(|stream| entries.by_stream.contains_key(stream));
        // Every stream that stays has an item in `by_age` no newer than its oldest entry.
        let through = entries.by_age.front().map_or(head, |(oldest, _)| *oldest - 1);
        Some(Flush { streams, through })
    }

    /// Write the due streams' entries into the table and record the indexed position, inside
    /// the group's transaction; [`StreamTail::moved`] once it has committed.
    pub(super) fn write(&self, txn: &WriteTransaction, flush: &Flush) -> Result<(), StoreError> {
        let entries = self.inner.read().expect("stream tail lock");
        let mut index = txn.open_table(STREAM_INDEX)?;
        // In key order: neighbouring streams share leaves.
        for stream in &flush.streams {
            for (version, position) in entries.by_stream.get(stream).into_iter().flatten() {
                index.insert((stream.as_str(), version.get()), position.get())?;
            }
        }
        txn.open_table(META)?.insert(INDEXED_THROUGH, flush.through.get())?;
        Ok(())
    }

    /// Forget the entries a committed flush moved into the table.
    pub(super) fn moved(&self, flush: Flush) {
        let mut entries = self.inner.write().expect("stream tail lock");
        for stream in flush.streams {
            entries.by_stream.remove(&stream);
        }
    }
}

/// Events of `stream` with `from <= version <= to`, at most `limit`, in version order: from
/// the table, then from the tail.
pub(super) fn read_range(
    db: &Database,
    tail: &StreamTail,
    stream: &StreamId,
    from: Version,
    to: Version,
    page: Page,
) -> Result<Vec<StoredEvent>, StoreError> {
    let key = stream.key();
    let from = from.max(Version(1));
    let (read, recent) = tail.begin_read(db, &key, from, to)?;
    // Tail entries of commits this snapshot cannot see are past its stream head.
    let head = Version(read.open_table(STREAMS)?.get(key.as_str())?.map_or(0, |v| v.value().0));
    let index = read.open_table(STREAM_INDEX)?;
    let events = read.open_table(EVENTS)?;
    let mut fill = PageFill::new(page);
    let event_at = |position: Position, fill: &mut PageFill| -> Result<StoredEvent, StoreError> {
        let record = events
            .get(position.get())?
            .ok_or_else(|| StoreError::Corrupt(format!("{key} points at missing position {position}")))?;
        fill.add(record.value().len());
        StoredEvent::decode(record.value())
    };
    let mut out = Vec::new();
    let mut last = from - 1;
    if from <= to {
        for entry in index.range((key.as_str(), from.get())..=(key.as_str(), to.get()))? {
            if !fill.has_room() {
                return Ok(out);
            }
            let (version, position) = entry?;
            out.push(event_at(Position(position.value()), &mut fill)?);
            last = Version(version.value().1);
        }
    }
    // A flush that committed before this snapshot may still be in the tail: skip what the
    // table gave.
    for (version, position) in recent {
        if !fill.has_room() || version > head {
            break;
        }
        if version > last {
            out.push(event_at(position, &mut fill)?);
            last = version;
        }
    }
    Ok(out)
}
