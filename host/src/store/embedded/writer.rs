//! The single writer thread and its group commit.
//!
//! Appends from every actor queue on one channel. The thread takes everything queued,
//! writes it in one redb transaction and commits once (one fsync), then answers each
//! request. Under load this turns thousands of small appends into a few large commits:
//! DESIGN.md measured 3 600–4 600 single-row commits/s against 115 000+ rows/s in
//! batches of 64.

use super::file::{StoreFile, needs_reopen};
use super::stream_tail::StreamTail;
use super::tables::*;
use crate::store::export::ExportRecord;
use crate::store::queue::{self, Failure, Request, RequestSink};
use crate::store::records::{OutcomeKey, Record};
use crate::store::{AppendBatch, AppendError, Committed, DeadLetter, Position, StoreError, Version};
use crate::store::{CursorStart, Reopening};
use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::watch;

/// The handle actors append through. [`StoreWrites::shutdown`] stops the thread after it
/// has committed everything queued before it; appends after that fail with `Closed`.
#[derive(Clone)]
pub(super) struct EmbeddedWriter {
    requests: mpsc::Sender<Request>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    health: Arc<std::sync::Mutex<Health>>,
    file: Arc<StoreFile>,
}

/// How the writer's commits have gone, for `/readyz`.
#[derive(Debug, Default)]
struct Health {
    /// Why the last group commit failed; `None` once one succeeds again.
    last_failure: Option<String>,
    /// The last time the file failed with an I/O error and was (or is being) reopened.
    reopen: Option<Reopening>,
    /// Why the writer takes no more writes (an fsync failed on a commit that landed).
    stopped: Option<String>,
}

impl EmbeddedWriter {
    pub(super) fn start(
        file: Arc<StoreFile>,
        head: Position,
        sequence: u64,
        head_tx: watch::Sender<Position>,
        tail: Arc<StreamTail>,
    ) -> Result<Self, StoreError> {
        let (requests, queue) = mpsc::channel();
        let health = Arc::new(std::sync::Mutex::new(Health::default()));
        let state = WriterThread {
            file: file.clone(),
            head,
            head_tx,
            tail,
            health: health.clone(),
            reopens_seen: 0,
            sequence,
            unresolved: None,
            stopped: None,
        };
        let thread = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || state.run(queue))
            .map_err(|e| StoreError::from(redb::Error::Io(e)))?;
        Ok(EmbeddedWriter { requests, thread: Arc::new(std::sync::Mutex::new(Some(thread))), health, file })
    }
}

#[async_trait]
impl RequestSink for EmbeddedWriter {
    fn send(&self, request: Request) -> Result<(), StoreError> {
        self.requests.send(request).map_err(|_| StoreError::Closed)
    }

    /// Why the writer cannot take appends now, if it cannot: its thread has stopped, the
    /// file is closed after an I/O error and not open again yet, or its last group commit
    /// failed (until one succeeds again).
    fn problem(&self) -> Option<String> {
        let alive =
            self.thread.lock().expect("writer thread lock").as_ref().is_some_and(|t| !t.is_finished());
        if !alive {
            return Some("the writer thread has stopped".to_owned());
        }
        let health = self.health.lock().expect("writer health lock");
        if let Some(stopped) = &health.stopped {
            return Some(stopped.clone());
        }
        if !self.file.is_open() {
            let since = health.reopen.as_ref().map_or(String::new(), |r| format!(" since {}", r.failed_at));
            return Some(format!("the store failed with an I/O error{since} and is being opened again"));
        }
        health.last_failure.as_ref().map(|e| format!("the last commit failed: {e}"))
    }

    fn last_reopening(&self) -> Option<Reopening> {
        self.health.lock().expect("writer health lock").reopen.clone()
    }

    /// Finish the queued appends and wait for the thread to end (the store file is then
    /// closed cleanly once the last reader is dropped).
    async fn stop(&self) {
        let thread = self.thread.lock().expect("writer thread lock").take();
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// What the writer thread owns.
struct WriterThread {
    file: Arc<StoreFile>,
    /// The position of the newest committed event.
    head: Position,
    head_tx: watch::Sender<Position>,
    tail: Arc<StreamTail>,
    health: Arc<std::sync::Mutex<Health>>,
    /// How many reopens of the file this thread has taken into account.
    reopens_seen: u64,
    /// The commit sequence of the last group committed (kept in `meta`).
    sequence: u64,
    /// A group whose commit failed and whose outcome no reopened file has told yet: the
    /// sequence before it, and its error.
    unresolved: Option<(u64, String)>,
    /// Why this thread refuses to write, after an fsync failed on a commit that landed.
    stopped: Option<String>,
}

impl WriterThread {
    fn run(mut self, queue: mpsc::Receiver<Request>) {
        let mut stopping = false;
        while !stopping {
            let first = if self.file.is_open() {
                match queue.recv() {
                    Ok(first) => first,
                    Err(_) => break,
                }
            } else {
                // Closed by an I/O error that reopening could not get past: try again now and
                // then, so readers get the file back even while nothing is written.
                match queue.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(first) => first,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.stopped.is_none()
                            && let Err(error) = self.reopen_if_closed()
                        {
                            tracing::warn!("the store still cannot be opened: {error}");
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let (requests, stop) = queue::gather(first, || queue.try_recv().ok());
            stopping = stop;
            let Some(requests) = queue::only_barriers(requests) else { continue };
            if let Some(stopped) = &self.stopped {
                // Refused before anything is written: truly not stored.
                let reason = format!("the store takes no more writes until the host restarts: {stopped}");
                queue::fail(requests, &reason, Failure::NotStored);
                continue;
            }
            // A file closed by an I/O error that could not be opened again yet: try now.
            let db = match self.file.get() {
                Ok(db) => db,
                Err(_) => match self.reopen_if_closed().and_then(|()| self.file.get()) {
                    Ok(db) => db,
                    Err(error) => {
                        queue::fail(requests, &error.to_string(), Failure::NotStored);
                        continue;
                    }
                },
            };
            // Opened again by a reader since this thread last looked: what the file holds is
            // the truth (a commit whose outcome was unknown may be in it).
            if self.file.reopens() != self.reopens_seen
                && let Err(error) = self.resync(&db)
            {
                queue::fail(requests, &error.to_string(), Failure::NotStored);
                continue;
            }
            self.commit_group(db, requests);
        }
        tracing::debug!("writer thread stopped");
    }

    /// Close the file and open it again after an I/O error, and take what it holds as the
    /// truth: its head, and its streams' newest events. A file that holds a group whose
    /// commit failed is sealed instead (see [`WriterThread::landed`]).
    fn reopen(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let unresolved = self.unresolved.clone();
        let reopened = self.file.reopen(&|db| landed(db, unresolved.as_ref()));
        self.stop_if_sealed();
        reopened?;
        let db = self.file.get()?;
        self.resync(&db)?;
        let head = self.head;
        let mut health = self.health.lock().expect("writer health lock");
        if let Some(reopen) = &mut health.reopen {
            let now = crate::time::now_micros();
            reopen.reopened_at = Some(crate::time::rfc3339_micros(now));
            reopen.unavailable_ms = Some(now.saturating_sub(reopen.failed_at_micros) / 1000);
        }
        tracing::warn!(
            took_ms = started.elapsed().as_millis() as u64,
            head = head.get(),
            "opened the store again after an I/O error"
        );
        Ok(())
    }

    /// Open a file an earlier reopen left closed, and take what it holds.
    fn reopen_if_closed(&mut self) -> Result<(), StoreError> {
        let unresolved = self.unresolved.clone();
        let opened = self.file.open_if_closed(&|db| landed(db, unresolved.as_ref()));
        self.stop_if_sealed();
        opened?;
        let db = self.file.get()?;
        self.resync(&db)?;
        let mut health = self.health.lock().expect("writer health lock");
        if let Some(reopen) = &mut health.reopen
            && reopen.reopened_at.is_none()
        {
            let now = crate::time::now_micros();
            reopen.reopened_at = Some(crate::time::rfc3339_micros(now));
            reopen.unavailable_ms = Some(now.saturating_sub(reopen.failed_at_micros) / 1000);
        }
        Ok(())
    }

    /// After the file was sealed (a group whose commit failed had landed): take no more writes.
    fn stop_if_sealed(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        if let Some(reason) = self.file.sealed() {
            tracing::error!("{reason}");
            self.health.lock().expect("writer health lock").stopped = Some(reason.clone());
            self.stopped = Some(reason);
        }
    }

    /// Take the head, the commit sequence and the streams' newest events from the file as it
    /// is now.
    fn resync(&mut self, db: &Database) -> Result<(), StoreError> {
        let reopens = self.file.reopens();
        let read = db.begin_read()?;
        let head = Position(read.open_table(EVENTS)?.last()?.map_or(0, |(position, _)| position.value()));
        self.sequence = read.open_table(META)?.get(COMMIT_SEQUENCE)?.map_or(0, |v| v.value());
        drop(read);
        // The gate let this file through: a group whose outcome was open did not land.
        self.unresolved = None;
        self.tail.reload(db, head)?;
        if head != self.head {
            self.head = head;
            self.head_tx.send_replace(head);
        }
        self.reopens_seen = reopens;
        Ok(())
    }

    /// Note an I/O failure of the file (the start of an unavailable interval).
    fn failed(&self, error: &StoreError) {
        let now = crate::time::now_micros();
        let mut health = self.health.lock().expect("writer health lock");
        health.reopen = Some(Reopening {
            error: error.to_string(),
            failed_at: crate::time::rfc3339_micros(now),
            reopened_at: None,
            unavailable_ms: None,
            failed_at_micros: now,
        });
    }
}

/// A group written into its transaction, not committed yet: the transaction, each append's
/// answer, and how many idempotency keys it forgets.
type Prepared = (WriteTransaction, Vec<Result<Committed, AppendError>>, usize);

impl WriterThread {
    /// Write every request in one transaction, publish the new head, then answer each (so a
    /// caller that sees its answer also sees the head past its events).
    ///
    /// A commit that fails with an I/O error may still have landed (an fsync that failed
    /// after the data reached the disk): the file is opened again and its head tells, and
    /// the requests are answered by what it says, never by a guess.
    fn commit_group(&mut self, db: Arc<Database>, requests: Vec<Request>) {
        // Dropped before a reopen: the file closes only once no handle holds it.
        let mut db = Some(db);
        let head = self.head;
        let sequence = self.sequence;
        let tail = self.tail.clone();
        let recorded_at_micros = crate::time::now_micros();
        let started = std::time::Instant::now();
        let mut next = head + 1;
        // The group's stream-index entries, for the tail (see stream_tail.rs).
        let mut indexed = Vec::new();
        let mut flush = None;
        let prepared = (|| -> Result<Prepared, StoreError> {
            let mut txn = db.as_ref().expect("held until a reopen").begin_write()?;
            txn.set_durability(Durability::Immediate).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
            let mut answers = Vec::with_capacity(requests.len());
            let mut forgotten = 0;
            let mut tables = None;
            for request in &requests {
                let answer = match request {
                    Request::Append(batch, _) => {
                        let tables = match &mut tables {
                            Some(open) => open,
                            None => tables.insert(AppendTables::open(&txn)?),
                        };
                        write_batch(tables, batch, &mut next, recorded_at_micros, &mut indexed)
                    }
                    Request::Cursor(name, position, _) => {
                        txn.open_table(CURSORS)?.insert(name.as_str(), position.get())?;
                        Ok(Committed::default())
                    }
                    Request::Park(letter, _) => {
                        park(&txn, letter)?;
                        Ok(Committed::default())
                    }
                    Request::Unpark(keys, _) => {
                        let mut removed: std::collections::HashMap<&str, i64> = Default::default();
                        let mut parked = txn.open_table(PARKED)?;
                        for key in keys {
                            let stream = key.stream.key();
                            let key_parts = (key.subscriber.as_str(), stream.as_str(), key.position.get());
                            if parked.remove(key_parts)?.is_some() {
                                *removed.entry(key.subscriber.as_str()).or_default() -= 1;
                            }
                        }
                        drop(parked);
                        for (subscriber, change) in removed {
                            count_parked(&txn, subscriber, change)?;
                        }
                        Ok(Committed::default())
                    }
                    Request::Component(write, _) => {
                        txn.open_table(COMPONENTS)?.insert(write.name.as_str(), write.record.as_slice())?;
                        if let Some((digest, bytes)) = &write.blob {
                            txn.open_table(COMPONENT_BLOBS)?.insert(digest.as_slice(), bytes.as_slice())?;
                        }
                        if let Some(digest) = &write.drop_blob {
                            txn.open_table(COMPONENT_BLOBS)?.remove(digest.as_slice())?;
                        }
                        if let Some((cursor, start)) = &write.cursor {
                            let mut cursors = txn.open_table(CURSORS)?;
                            if cursors.get(cursor.as_str())?.is_none() {
                                // `next - 1`: the head as of this transaction, appends before it included.
                                let position = if *start == CursorStart::Head { (next - 1).get() } else { 0 };
                                cursors.insert(cursor.as_str(), position)?;
                            }
                        }
                        Ok(Committed::default())
                    }
                    Request::ForgetKeys { recorded_before, limit, .. } => {
                        // It opens the outcome tables itself: no table may be open twice.
                        tables = None;
                        forgotten = forget_keys(&txn, *recorded_before, *limit)?;
                        Ok(Committed::default())
                    }
                    Request::Barrier(_) => Ok(Committed::default()),
                    Request::KeepSnapshots(stream, snapshots, _) => {
                        // The append tables may hold the history open: no table may be open twice.
                        tables = None;
                        let stream = stream.key();
                        let mut history = txn.open_table(SNAPSHOT_HISTORY)?;
                        for snapshot in snapshots {
                            history.insert(
                                (stream.as_str(), snapshot.version.get()),
                                snapshot.encode().as_slice(),
                            )?;
                        }
                        Ok(Committed::default())
                    }
                    Request::Restore(records, _) => {
                        // It opens the tables it writes: no table may be open twice.
                        tables = None;
                        restore(&txn, records, &mut next, &mut indexed)?;
                        Ok(Committed::default())
                    }
                    // Never queued: the thread stops at it.
                    Request::Stop => continue,
                };
                // A storage failure may have left part of a batch written: abort everything.
                if let Err(AppendError::Store(e)) = answer {
                    return Err(e);
                }
                if let Request::Append(..) = request {
                    answers.push(answer);
                }
            }
            let stall = requests.iter().find_map(|r| match r {
                Request::Append(batch, _) => crate::faults::commit_stall(&batch.stream.key()),
                _ => None,
            });
            if let Some(stall) = stall {
                std::thread::sleep(stall);
            }
            let faulted = requests.iter().any(
                |r| matches!(r, Request::Append(batch, _) if crate::faults::commit_fail(&batch.stream.key())),
            );
            if faulted {
                return Err(StoreError::CommitFailed("fault injection: commit-fail".to_owned()));
            }
            drop(tables);
            tail.add(&indexed);
            flush = tail.due(next - 1);
            if let Some(flush) = &flush {
                tail.write(&txn, flush)?;
            }
            // Every group moves the commit sequence, so a reopened file tells whether a
            // commit whose outcome was lost landed, whatever the group held.
            txn.open_table(META)?.insert(COMMIT_SEQUENCE, sequence + 1)?;
            Ok((txn, answers, forgotten))
        })();
        let faulted = |fault: fn(&str) -> bool| {
            requests.iter().any(|r| matches!(r, Request::Append(batch, _) if fault(&batch.stream.key())))
        };
        let (io_error, fsync_error) = (faulted(crate::faults::io_error), faulted(crate::faults::fsync_error));
        let committed = match prepared {
            Err(error) => Err((error, Failure::NotStored, false)),
            Ok((txn, answers, forgotten)) => {
                crate::faults::arm_disk_faults(io_error, fsync_error);
                let outcome = txn.commit().map_err(StoreError::from);
                crate::faults::arm_disk_faults(false, false);
                match outcome {
                    Ok(()) => {
                        self.sequence = sequence + 1;
                        Ok((answers, forgotten))
                    }
                    Err(error) if needs_reopen(&error) => {
                        db.take();
                        self.failed(&error);
                        self.unresolved = Some((sequence, error.to_string()));
                        match self.reopen() {
                            // The reopened file does not hold the group: the commit never
                            // reached its header, nothing of it is stored, and the disk took
                            // no write it may have dropped. Go on.
                            Ok(()) => Err((error, Failure::NotStored, true)),
                            // It holds it, or it could not be read to tell (the next reopen
                            // tells, and seals the file if it holds it): never acknowledged.
                            Err(reopen) => {
                                if self.stopped.is_none() {
                                    tracing::error!("the store could not be opened again: {reopen}");
                                }
                                Err((error, Failure::Unknown, true))
                            }
                        }
                    }
                    Err(error) => Err((error, Failure::NotStored, false)),
                }
            }
        };
        match committed {
            Ok((answers, forgotten)) => {
                if let Some(flush) = flush {
                    tail.moved(flush);
                }
                self.health.lock().expect("writer health lock").last_failure = None;
                let appends = requests.iter().filter(|r| matches!(r, Request::Append(..))).count();
                crate::telemetry::group_commit(appends, (next - 1).saturating_sub(head), started.elapsed());
                self.head = next - 1;
                self.head_tx.send_replace(next - 1);
                queue::answer(requests, answers, forgotten);
            }
            Err((error, failure, reopened)) => {
                // A reopen rebuilt the tail from the file; otherwise take the group's entries back.
                if !reopened {
                    tail.undo(&indexed, head, flush);
                }
                if !reopened && needs_reopen(&error) {
                    // An I/O failure before the commit: redb refuses everything after it until
                    // the file is opened again, so open it now, for the next group.
                    db.take();
                    self.failed(&error);
                    if let Err(reopen) = self.reopen() {
                        tracing::error!("the store could not be opened again: {reopen}");
                    }
                }
                tracing::error!("group commit of {} requests failed: {error}", requests.len());
                crate::telemetry::commit_failed();
                self.health.lock().expect("writer health lock").last_failure = Some(error.to_string());
                queue::fail(requests, &error.to_string(), failure);
            }
        }
    }
}

/// The tables appends write, opened once per group commit rather than once per batch: in
/// redb every open and close of a table rewrites its root in the transaction's table tree.
struct AppendTables<'txn> {
    txn: &'txn WriteTransaction,
    streams: Table<'txn, &'static str, (u64, u64)>,
    events: Table<'txn, u64, &'static [u8]>,
    correlations: Table<'txn, (&'static str, u64), ()>,
    /// Opened when a batch first needs them (keyed commands, snapshots).
    outcomes: Option<(OutcomeTable<'txn>, IdempotencyTimes<'txn>)>,
    snapshots: Option<(SnapshotTable<'txn>, SnapshotHistory<'txn>)>,
}

type OutcomeTable<'txn> = Table<'txn, (&'static str, &'static str), &'static [u8]>;
type IdempotencyTimes<'txn> = Table<'txn, (u64, &'static str, &'static str), ()>;
type SnapshotTable<'txn> = Table<'txn, &'static str, &'static [u8]>;
type SnapshotHistory<'txn> = Table<'txn, (&'static str, u64), &'static [u8]>;

impl<'txn> AppendTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(AppendTables {
            txn,
            streams: txn.open_table(STREAMS)?,
            events: txn.open_table(EVENTS)?,
            correlations: txn.open_table(CORRELATIONS)?,
            outcomes: None,
            snapshots: None,
        })
    }
}

/// Write one actor's batch inside the group's transaction, or refuse it whole: the
/// version check happens before anything of the batch is written.
fn write_batch(
    tables: &mut AppendTables<'_>,
    batch: &AppendBatch,
    next: &mut Position,
    recorded_at_micros: u64,
    indexed: &mut Vec<(String, Version, Position)>,
) -> Result<Committed, AppendError> {
    let key = batch.stream.key();
    let (version, last_position) =
        tables.streams.get(key.as_str()).map_err(StoreError::from)?.map(|v| v.value()).unwrap_or((0, 0));
    let (version, last_position) = (Version(version), Position(last_position));
    if version != batch.expected_version {
        return Err(AppendError::VersionConflict { expected: batch.expected_version, actual: version });
    }
    let mut stream_version = version;
    let mut stream_last = last_position;
    let mut stored = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        stream_version += 1;
        let position = *next;
        *next += 1;
        let record = event.stored(&batch.stream, stream_version, position, recorded_at_micros);
        tables.events.insert(position.get(), record.encode().as_slice()).map_err(StoreError::from)?;
        indexed.push((key.clone(), stream_version, position));
        tables
            .correlations
            .insert((event.correlation_id.as_str(), position.get()), ())
            .map_err(StoreError::from)?;
        stream_last = position;
        stored.push(record);
    }
    if !batch.events.is_empty() {
        tables
            .streams
            .insert(key.as_str(), (stream_version.get(), stream_last.get()))
            .map_err(StoreError::from)?;
    }
    if !batch.outcomes.is_empty() {
        let (outcomes, times) = match &mut tables.outcomes {
            Some(open) => open,
            None => tables.outcomes.insert((
                tables.txn.open_table(OUTCOMES).map_err(StoreError::from)?,
                tables.txn.open_table(IDEMPOTENCY_TIMES).map_err(StoreError::from)?,
            )),
        };
        for (outcome_key, outcome) in &batch.outcomes {
            let stored_key = outcome_key.stored();
            outcomes
                .insert((key.as_str(), stored_key.as_str()), outcome.encode().as_slice())
                .map_err(StoreError::from)?;
            // Only a client's keys expire; a routed command's is kept as long as its stream.
            if let OutcomeKey::Idempotency(_) = outcome_key {
                times
                    .insert((recorded_at_micros, key.as_str(), stored_key.as_str()), ())
                    .map_err(StoreError::from)?;
            }
        }
    }
    if batch.snapshot.is_some() || !batch.history.is_empty() {
        let (snapshots, history) = match &mut tables.snapshots {
            Some(open) => open,
            None => tables.snapshots.insert((
                tables.txn.open_table(SNAPSHOTS).map_err(StoreError::from)?,
                tables.txn.open_table(SNAPSHOT_HISTORY).map_err(StoreError::from)?,
            )),
        };
        for snapshot in &batch.history {
            history
                .insert((key.as_str(), snapshot.version.get()), snapshot.encode().as_slice())
                .map_err(StoreError::from)?;
        }
        if let Some(snapshot) = &batch.snapshot {
            snapshots.insert(key.as_str(), snapshot.encode().as_slice()).map_err(StoreError::from)?;
        }
    }
    Ok(Committed { events: stored })
}

/// The [`Gate`](super::file::Gate) of a reopened log: a file that holds the group whose
/// commit failed (`unresolved`: the sequence before it, and its error) is sealed. Its
/// header reached the file and then its fsync failed, and after a failed fsync the kernel
/// may have dropped pages it reported written: nothing more is read from or built on that
/// file in this run, and the next start writes it anew (PostgreSQL likewise panics on a
/// failed fsync rather than retrying it).
fn landed(db: &Database, unresolved: Option<&(u64, String)>) -> Result<Option<String>, StoreError> {
    let Some((before, error)) = unresolved else { return Ok(None) };
    let read = db.begin_read()?;
    let sequence = read.open_table(META)?.get(COMMIT_SEQUENCE)?.map_or(0, |v| v.value());
    Ok((sequence != *before).then(|| {
        format!(
            "an fsync failed ({error}) on a commit that had reached the file; the disk may have \
             dropped writes it reported done, so the store takes no more reads or writes until \
             the host restarts (check the disk first; the restart writes the file anew)"
        )
    }))
}

/// The `meta` key of the number of group commits the file holds.
pub(super) const COMMIT_SEQUENCE: &str = "commit_sequence";

/// Record a dead letter, replacing one with the same key, and count it if it is new.
fn park(txn: &WriteTransaction, letter: &DeadLetter) -> Result<(), StoreError> {
    let stream = letter.stream.key();
    let key = (letter.subscriber.as_str(), stream.as_str(), letter.position.get());
    let replaced = txn.open_table(PARKED)?.insert(key, letter.encode().as_slice())?.is_some();
    if !replaced {
        count_parked(txn, &letter.subscriber, 1)?;
    }
    Ok(())
}

/// Move `subscriber`'s count of dead letters by `change`.
fn count_parked(txn: &WriteTransaction, subscriber: &str, change: i64) -> Result<(), StoreError> {
    let mut counts = txn.open_table(PARKED_COUNTS)?;
    let count = counts.get(subscriber)?.map_or(0, |v| v.value());
    let count = count.saturating_add_signed(change);
    if count == 0 {
        counts.remove(subscriber)?;
    } else {
        counts.insert(subscriber, count)?;
    }
    Ok(())
}

/// Count the dead letters of a store written before their counts were kept, once.
pub(super) fn count_parked_if_uncounted(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(PARKED_COUNTED)?.is_some() {
        return Ok(());
    }
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for entry in txn.open_table(PARKED)?.iter()? {
        *counts.entry(entry?.0.value().0.to_owned()).or_default() += 1;
    }
    let mut table = txn.open_table(PARKED_COUNTS)?;
    for (subscriber, count) in counts {
        table.insert(subscriber.as_str(), count)?;
    }
    meta.insert(PARKED_COUNTED, 1)?;
    Ok(())
}

/// The `meta` entry that says `parked_counts` is kept.
const PARKED_COUNTED: &str = "parked_counted";

/// Remove up to `limit` idempotency outcomes recorded before `recorded_before`, oldest first.
fn forget_keys(txn: &WriteTransaction, recorded_before: u64, limit: usize) -> Result<usize, StoreError> {
    let mut times = txn.open_table(IDEMPOTENCY_TIMES)?;
    let mut outcomes = txn.open_table(OUTCOMES)?;
    let expired: Vec<(u64, String, String)> = times
        .range(..(recorded_before, "", ""))?
        .take(limit)
        .map(|entry| {
            entry.map(|(key, _)| {
                let (time, stream, outcome) = key.value();
                (time, stream.to_owned(), outcome.to_owned())
            })
        })
        .collect::<Result<_, _>>()?;
    for (time, stream, outcome) in &expired {
        times.remove((*time, stream.as_str(), outcome.as_str()))?;
        outcomes.remove((stream.as_str(), outcome.as_str()))?;
    }
    Ok(expired.len())
}

/// Write records of an export: events at their positions (each must follow the head and its
/// stream's version), outcomes with their recorded times, components, cursors, dead letters.
fn restore(
    txn: &WriteTransaction,
    records: &[ExportRecord],
    next: &mut Position,
    indexed: &mut Vec<(String, Version, Position)>,
) -> Result<(), StoreError> {
    let mut tables = AppendTables::open(txn)?;
    let mut outcomes = txn.open_table(OUTCOMES)?;
    let mut times = txn.open_table(IDEMPOTENCY_TIMES)?;
    for record in records {
        match record {
            ExportRecord::Event(event) => {
                let key = event.stream().key();
                let version = tables.streams.get(key.as_str())?.map_or(0, |v| v.value().0);
                crate::store::export::check_follows(event, *next, Version(version))?;
                tables.events.insert(event.position.get(), event.encode().as_slice())?;
                tables.correlations.insert((event.correlation_id.as_str(), event.position.get()), ())?;
                tables.streams.insert(key.as_str(), (event.version.get(), event.position.get()))?;
                indexed.push((key, event.version, event.position));
                *next += 1;
            }
            ExportRecord::Outcome { stream, key, outcome, recorded_at_micros } => {
                let stream = stream.key();
                outcomes.insert((stream.as_str(), key.as_str()), outcome.as_slice())?;
                if let Some(recorded_at) = recorded_at_micros {
                    times.insert((*recorded_at, stream.as_str(), key.as_str()), ())?;
                }
            }
            ExportRecord::Blob { digest, bytes } => {
                txn.open_table(COMPONENT_BLOBS)?.insert(digest.as_slice(), bytes.as_slice())?;
            }
            ExportRecord::Component { name, record } => {
                txn.open_table(COMPONENTS)?.insert(name.as_str(), record.as_slice())?;
            }
            ExportRecord::Cursor { name, position } => {
                txn.open_table(CURSORS)?.insert(name.as_str(), position.get())?;
            }
            ExportRecord::DeadLetter(letter) => park(txn, letter)?,
            ExportRecord::Header { .. } | ExportRecord::End { .. } => {}
        }
    }
    Ok(())
}
