//! The writer task: every write request of the host, committed in groups, one transaction
//! per group with its statements pipelined on one connection (tokio-postgres sends the
//! statements of futures polled together without waiting for each answer).
//!
//! A group takes the log head's row first (`FOR UPDATE`, held until COMMIT), reads the
//! versions of the streams it appends to, decides each batch against them in memory as
//! the embedded writer does, then writes every table with one statement each (arrays
//! unnested), moves the head and notifies followers, and commits.

use super::{big, connection};
use crate::store::export::ExportRecord;
use crate::store::queue::{self, ComponentWrite, Failure, QueuedWriter, Request, RequestSink};
use crate::store::{
    AppendError, Committed, CursorStart, OutcomeKey, Position, Record, Snapshot, StoreError, StoredEvent,
    StreamId, Version, Writer,
};
use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

/// How long the outcome of a COMMIT whose answer was lost is looked for before it is
/// reported unknown.
const RESOLVE_FOR: Duration = Duration::from_secs(10);

/// The channel every commit notifies with the new head.
pub(super) const LOG_CHANNEL: &str = "cairn_log";

/// Start the writer task and the listener that follows other commits of the database.
pub(super) fn start(pool: Pool, config: tokio_postgres::Config, head: watch::Sender<Position>) -> Writer {
    let (requests, queue) = mpsc::unbounded_channel();
    let health = Arc::new(Mutex::new(Health::default()));
    let listening = CancellationToken::new();
    let head = Arc::new(head);
    tokio::spawn(listen(config, head.clone(), health.clone(), listening.clone()));
    let task = WriterTask { pool, head, health: health.clone() };
    let done = tokio::spawn(task.run(queue));
    Arc::new(QueuedWriter(PostgresWriter {
        requests,
        done: tokio::sync::Mutex::new(Some(done)),
        health,
        listening,
    }))
}

/// How the writer's commits and the database connection have gone, for `/readyz`.
#[derive(Debug, Default)]
struct Health {
    /// Why the last group commit failed; `None` once one succeeds again.
    last_failure: Option<String>,
    /// Why the listener cannot reach the database, while it cannot.
    unreachable: Option<String>,
}

struct PostgresWriter {
    requests: mpsc::UnboundedSender<Request>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    health: Arc<Mutex<Health>>,
    listening: CancellationToken,
}

#[async_trait]
impl RequestSink for PostgresWriter {
    fn send(&self, request: Request) -> Result<(), StoreError> {
        self.requests.send(request).map_err(|_| StoreError::Closed)
    }

    fn problem(&self) -> Option<String> {
        if self.requests.is_closed() {
            return Some("the writer has stopped".to_owned());
        }
        let health = self.health.lock().expect("writer health lock");
        if let Some(unreachable) = &health.unreachable {
            return Some(format!("the database cannot be reached: {unreachable}"));
        }
        health.last_failure.as_ref().map(|e| format!("the last commit failed: {e}"))
    }

    async fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(done) = self.done.lock().await.take()
            && done.await.is_err()
        {
            tracing::error!("the writer task panicked");
        }
        self.listening.cancel();
    }
}

/// Follow the database's commits: move the head on every notification, and read it once a
/// second in case one was lost.
async fn listen(
    config: tokio_postgres::Config,
    head: Arc<watch::Sender<Position>>,
    health: Arc<Mutex<Health>>,
    stop: CancellationToken,
) {
    let advance = |position: i64| {
        head.send_if_modified(|current| {
            let moved = position as u64 > current.get();
            if moved {
                *current = Position(position as u64);
            }
            moved
        });
    };
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            connected = config.connect(tokio_postgres::NoTls) => connected,
            _ = stop.cancelled() => return,
        };
        let (client, mut connection) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                health.lock().expect("writer health lock").unreachable = Some(super::with_causes(&error));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let (notified, mut notifications) = mpsc::unbounded_channel();
        let mut driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                        let _ = notified.send(note.payload().parse::<i64>().unwrap_or(0));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return error.to_string(),
                    None => return "the connection closed".to_owned(),
                }
            }
        });
        if let Err(error) = client.batch_execute(&format!("LISTEN {LOG_CHANNEL}")).await {
            health.lock().expect("writer health lock").unreachable = Some(error.to_string());
            driver.abort();
            continue;
        }
        health.lock().expect("writer health lock").unreachable = None;
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        let lost = loop {
            tokio::select! {
                Some(position) = notifications.recv() => advance(position),
                _ = every_second.tick() => {
                    match client.query_one("SELECT position FROM cairn.log_head", &[]).await {
                        Ok(row) => advance(row.get(0)),
                        Err(error) => break error.to_string(),
                    }
                }
                ended = &mut driver => break ended.unwrap_or_else(|e| e.to_string()),
                _ = stop.cancelled() => { driver.abort(); return; }
            }
        };
        tracing::warn!("lost the connection that follows the log: {lost}");
        health.lock().expect("writer health lock").unreachable = Some(lost);
        driver.abort();
    }
}

struct WriterTask {
    pool: Pool,
    head: Arc<watch::Sender<Position>>,
    health: Arc<Mutex<Health>>,
}

impl WriterTask {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = queue.recv().await {
            let (requests, stop) = queue::gather(first, || queue.try_recv().ok());
            if let Some(requests) = queue::only_barriers(requests) {
                self.commit_group(requests).await;
            }
            if stop {
                break;
            }
        }
        queue.close();
        tracing::debug!("writer task stopped");
    }

    /// Write every request in one transaction, publish the new head, then answer each.
    async fn commit_group(&self, requests: Vec<Request>) {
        let started = std::time::Instant::now();
        let stall = requests.iter().find_map(|r| match r {
            Request::Append(batch, _) => crate::faults::commit_stall(&batch.stream.key()),
            _ => None,
        });
        if let Some(stall) = stall {
            tokio::time::sleep(stall).await;
        }
        let written = match connection(&self.pool).await {
            Ok(mut client) => write_group(&mut client, &requests).await,
            Err(error) => Err(GroupError::NotStored(error)),
        };
        match written {
            Ok(written) => self.committed(requests, written, started),
            Err(GroupError::NotStored(error)) => {
                self.failed(requests, &error.to_string(), Failure::NotStored)
            }
            Err(GroupError::AtCommit { error, group }) => match self.resolve(&group).await {
                Some(true) => {
                    tracing::warn!("a COMMIT whose answer was lost had landed: {error}");
                    self.committed(requests, group, started);
                }
                Some(false) => self.failed(requests, &error.to_string(), Failure::NotStored),
                None => self.failed(requests, &error.to_string(), Failure::Unknown),
            },
        }
    }

    fn committed(&self, requests: Vec<Request>, written: Written, started: std::time::Instant) {
        self.health.lock().expect("writer health lock").last_failure = None;
        let appends = requests.iter().filter(|r| matches!(r, Request::Append(..))).count();
        crate::telemetry::group_commit(
            appends,
            written.head.saturating_sub(written.before),
            started.elapsed(),
        );
        self.head.send_if_modified(|current| {
            let moved = written.head > *current;
            if moved {
                *current = written.head;
            }
            moved
        });
        queue::answer(requests, written.answers, written.forgotten);
    }

    fn failed(&self, requests: Vec<Request>, message: &str, failure: Failure) {
        tracing::error!("group commit of {} requests failed: {message}", requests.len());
        crate::telemetry::commit_failed();
        self.health.lock().expect("writer health lock").last_failure = Some(message.to_owned());
        queue::fail(requests, message, failure);
    }

    /// Whether a group whose COMMIT lost its answer landed, read on a new connection:
    /// `None` when the database could not be read within [`RESOLVE_FOR`].
    async fn resolve(&self, group: &Written) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
        loop {
            let answer = async {
                let client = connection(&self.pool).await?;
                let landed = match &group.first_event {
                    // The group's first event at its position: it landed (positions are given
                    // under the head's lock, so no other commit holds that position and stream).
                    Some((position, stream, version)) => client
                        .query_opt(
                            "SELECT 1 FROM cairn.events WHERE position = $1 AND stream_type = $2 \
                             AND stream_id = $3 AND version = $4",
                            &[&big(position.get()), &stream.type_name, &stream.id, &big(version.get())],
                        )
                        .await?
                        .is_some(),
                    None => {
                        let row = client.query_one("SELECT commit_sequence FROM cairn.log_head", &[]).await?;
                        row.try_get::<_, i64>(0)? > group.sequence
                    }
                };
                Ok::<bool, StoreError>(landed)
            }
            .await;
            match answer {
                Ok(landed) => return Some(landed),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!("cannot tell whether a commit landed: {error}");
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// A group as written: each append's answer, the head before and after, and what tells
/// whether it landed.
struct Written {
    answers: Vec<Result<Committed, AppendError>>,
    forgotten: usize,
    before: Position,
    head: Position,
    /// The commit sequence before this group.
    sequence: i64,
    first_event: Option<(Position, StreamId, Version)>,
}

enum GroupError {
    /// Nothing of the group is stored: it failed before its COMMIT, or the COMMIT was refused.
    NotStored(StoreError),
    /// The COMMIT was sent and its answer lost.
    AtCommit { error: StoreError, group: Written },
}

impl From<tokio_postgres::Error> for GroupError {
    fn from(error: tokio_postgres::Error) -> Self {
        GroupError::NotStored(error.into())
    }
}

/// The rows a group writes, one array per column.
#[derive(Default)]
struct EventRows {
    position: Vec<i64>,
    stream_type: Vec<String>,
    stream_id: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    payload: Vec<Vec<u8>>,
    recorded_at: Vec<i64>,
    correlation_id: Vec<String>,
    causation_id: Vec<Option<String>>,
    component_version: Vec<i64>,
    reply_to: Vec<Option<String>>,
}

impl EventRows {
    fn push(&mut self, event: &StoredEvent) {
        self.position.push(big(event.position.get()));
        self.stream_type.push(event.stream_type.clone());
        self.stream_id.push(event.stream_id.clone());
        self.version.push(big(event.version.get()));
        self.event_type.push(event.event_type.clone());
        self.payload.push(event.payload.clone());
        self.recorded_at.push(big(event.recorded_at_micros));
        self.correlation_id.push(event.correlation_id.clone());
        self.causation_id.push(event.causation_id.clone());
        self.component_version.push(i64::from(event.component_version.get()));
        self.reply_to.push(event.reply_to.as_ref().map(StreamId::key));
    }
}

/// A write of the group other than its appends, in the order it was asked for.
enum Other<'a> {
    Cursor(&'a str, Position),
    Park(&'a crate::store::DeadLetter),
    Unpark(&'a [crate::store::DeadLetterKey]),
    Component(&'a ComponentWrite, Option<(&'a str, Position)>),
    /// An imported component's bytes and record.
    Blob(&'a [u8], &'a [u8]),
    Record(&'a str, &'a [u8]),
    Forget(u64, usize),
}

const LOCK_HEAD: &str = "SELECT position, commit_sequence FROM cairn.log_head FOR UPDATE";
const STREAM_VERSIONS: &str = "SELECT stream_type, stream_id, version, last_position FROM cairn.streams \
     WHERE (stream_type, stream_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))";
const INSERT_EVENTS: &str = "INSERT INTO cairn.events (position, stream_type, stream_id, version, event_type, \
     payload, recorded_at_micros, correlation_id, causation_id, component_version, reply_to) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bytea[], \
     $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[])";
const UPSERT_STREAMS: &str = "INSERT INTO cairn.streams (stream_type, stream_id, version, last_position) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
     ON CONFLICT (stream_type, stream_id) DO UPDATE SET version = EXCLUDED.version, \
     last_position = EXCLUDED.last_position";
const UPSERT_OUTCOMES: &str = "INSERT INTO cairn.outcomes (stream_type, stream_id, key, outcome, expires_from) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[]) \
     ON CONFLICT (stream_type, stream_id, key) DO UPDATE SET outcome = EXCLUDED.outcome, \
     expires_from = EXCLUDED.expires_from";
const UPSERT_SNAPSHOTS: &str = "INSERT INTO cairn.snapshots (stream_type, stream_id, version, digest, state) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bytea[]) \
     ON CONFLICT (stream_type, stream_id) DO UPDATE SET version = EXCLUDED.version, \
     digest = EXCLUDED.digest, state = EXCLUDED.state";
const UPSERT_HISTORY: &str = "INSERT INTO cairn.snapshot_history (stream_type, stream_id, version, digest, state) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bytea[]) \
     ON CONFLICT (stream_type, stream_id, version) DO UPDATE SET digest = EXCLUDED.digest, state = EXCLUDED.state";
const MOVE_HEAD: &str = "WITH moved AS (UPDATE cairn.log_head SET position = $1, \
     commit_sequence = commit_sequence + 1 RETURNING position) \
     SELECT pg_notify('cairn_log', position::text) FROM moved";

/// An outcome's record, and from when it may expire (a client's idempotency key only).
type OutcomeRow = (Vec<u8>, Option<i64>);

/// Snapshot rows, one array per column.
#[derive(Default)]
struct SnapshotRows {
    stream_type: Vec<String>,
    stream_id: Vec<String>,
    version: Vec<i64>,
    digest: Vec<Vec<u8>>,
    state: Vec<Vec<u8>>,
}

impl SnapshotRows {
    fn of<'a>(snapshots: impl IntoIterator<Item = (&'a StreamId, &'a Snapshot)>) -> Self {
        let mut rows = SnapshotRows::default();
        for (stream, snapshot) in snapshots {
            rows.stream_type.push(stream.type_name.clone());
            rows.stream_id.push(stream.id.clone());
            rows.version.push(big(snapshot.version.get()));
            rows.digest.push(snapshot.digest.clone());
            rows.state.push(snapshot.state.clone());
        }
        rows
    }

    async fn upsert(&self, txn: &Transaction<'_>, sql: &str) -> Result<u64, tokio_postgres::Error> {
        if self.version.is_empty() {
            return Ok(0);
        }
        let statement = txn.prepare_cached(sql).await?;
        txn.execute(
            &statement,
            &[&self.stream_type, &self.stream_id, &self.version, &self.digest, &self.state],
        )
        .await
    }
}

/// Write the group in one transaction and commit it.
async fn write_group(
    client: &mut deadpool_postgres::Object,
    requests: &[Request],
) -> Result<Written, GroupError> {
    let txn = client.transaction().await?;
    let (lock, durable) = tokio::join!(
        async {
            let statement = txn.prepare_cached(LOCK_HEAD).await?;
            txn.query_one(&statement, &[]).await
        },
        txn.batch_execute("SET LOCAL synchronous_commit = on")
    );
    let (lock, ()) = (lock?, durable?);
    let before = Position(lock.try_get::<_, i64>(0)? as u64);
    let sequence: i64 = lock.try_get(1)?;

    // The versions of the streams the group appends to, as committed.
    let mut streams: HashMap<StreamId, (Version, Position)> = HashMap::new();
    let mut restored = Vec::new();
    let appended: Vec<&StreamId> = requests
        .iter()
        .flat_map(|r| match r {
            Request::Append(batch, _) => vec![&batch.stream],
            Request::Restore(records, _) => records
                .iter()
                .filter_map(|record| match record {
                    ExportRecord::Event(event) => {
                        restored.push(event.stream());
                        None
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let appended: Vec<&StreamId> = appended.into_iter().chain(&restored).collect();
    if !appended.is_empty() {
        let types: Vec<&str> = appended.iter().map(|s| s.type_name.as_str()).collect();
        let ids: Vec<&str> = appended.iter().map(|s| s.id.as_str()).collect();
        let statement = txn.prepare_cached(STREAM_VERSIONS).await?;
        for row in txn.query(&statement, &[&types, &ids]).await? {
            let stream = StreamId { type_name: row.try_get(0)?, id: row.try_get(1)? };
            let head =
                (Version(row.try_get::<_, i64>(2)? as u64), Position(row.try_get::<_, i64>(3)? as u64));
            streams.insert(stream, head);
        }
    }

    // Decide every batch in order, as the embedded writer does.
    let recorded_at_micros = crate::time::now_micros();
    let mut next = before + 1;
    let mut answers = Vec::new();
    let mut rows = EventRows::default();
    let mut heads: BTreeMap<&StreamId, (Version, Position)> = BTreeMap::new();
    let mut outcomes: BTreeMap<(&StreamId, String), OutcomeRow> = BTreeMap::new();
    let mut newest: BTreeMap<&StreamId, &Snapshot> = BTreeMap::new();
    let mut history: BTreeMap<(&StreamId, Version), &Snapshot> = BTreeMap::new();
    let mut others = Vec::new();
    let mut first_event = None;
    for request in requests {
        match request {
            Request::Append(batch, _) => {
                if crate::faults::commit_fail(&batch.stream.key()) {
                    return Err(GroupError::NotStored(StoreError::CommitFailed(
                        "fault injection: commit-fail".to_owned(),
                    )));
                }
                let (version, _) = streams.get(&batch.stream).copied().unwrap_or_default();
                if version != batch.expected_version {
                    answers.push(Err(AppendError::VersionConflict {
                        expected: batch.expected_version,
                        actual: version,
                    }));
                    continue;
                }
                let mut stored = Vec::with_capacity(batch.events.len());
                let mut stream_version = version;
                for event in &batch.events {
                    stream_version += 1;
                    let record = StoredEvent {
                        stream_type: batch.stream.type_name.clone(),
                        stream_id: batch.stream.id.clone(),
                        version: stream_version,
                        position: next,
                        event_type: event.event_type.clone(),
                        payload: event.payload.clone(),
                        recorded_at_micros,
                        correlation_id: event.correlation_id.clone(),
                        causation_id: event.causation_id.clone(),
                        component_version: event.component_version,
                        reply_to: event.reply_to.clone(),
                    };
                    first_event.get_or_insert_with(|| (next, batch.stream.clone(), stream_version));
                    rows.push(&record);
                    stored.push(record);
                    next += 1;
                }
                if let Some(last) = stored.last() {
                    streams.insert(batch.stream.clone(), (stream_version, last.position));
                    heads.insert(&batch.stream, (stream_version, last.position));
                }
                for (key, outcome) in &batch.outcomes {
                    // Only a client's keys expire; a routed command's is kept as long as its stream.
                    let expires =
                        matches!(key, OutcomeKey::Idempotency(_)).then_some(big(recorded_at_micros));
                    outcomes.insert((&batch.stream, key.stored()), (outcome.encode(), expires));
                }
                for snapshot in &batch.history {
                    history.insert((&batch.stream, snapshot.version), snapshot);
                }
                if let Some(snapshot) = &batch.snapshot {
                    newest.insert(&batch.stream, snapshot);
                }
                answers.push(Ok(Committed { events: stored }));
            }
            Request::KeepSnapshots(stream, snapshots, _) => {
                for snapshot in snapshots {
                    history.insert((stream, snapshot.version), snapshot);
                }
            }
            Request::Cursor(name, position, _) => others.push(Other::Cursor(name, *position)),
            Request::Park(letter, _) => others.push(Other::Park(letter)),
            Request::Unpark(keys, _) => others.push(Other::Unpark(keys)),
            Request::Component(write, _) => {
                // The head as of this request: the appends before it in the group included.
                let cursor = write.cursor.as_ref().map(|(name, start)| {
                    (name.as_str(), if *start == CursorStart::Head { next - 1 } else { Position::ZERO })
                });
                others.push(Other::Component(write, cursor));
            }
            Request::ForgetKeys { recorded_before, limit, .. } => {
                others.push(Other::Forget(*recorded_before, *limit))
            }
            Request::Restore(records, _) => {
                for record in records {
                    match record {
                        ExportRecord::Event(event) => {
                            if event.position != next {
                                return Err(GroupError::NotStored(StoreError::Corrupt(format!(
                                    "an imported event at position {} does not follow the head at {}",
                                    event.position,
                                    next - 1
                                ))));
                            }
                            let stream = event.stream();
                            let (version, _) = streams.get(&stream).copied().unwrap_or_default();
                            if event.version != version + 1 {
                                return Err(GroupError::NotStored(StoreError::Corrupt(format!(
                                    "an imported event of {stream} is version {}, after version {version}",
                                    event.version
                                ))));
                            }
                            rows.push(event);
                            streams.insert(stream, (event.version, event.position));
                            next += 1;
                        }
                        ExportRecord::Outcome { stream, key, outcome, recorded_at_micros } => {
                            outcomes.insert(
                                (stream, key.clone()),
                                (outcome.clone(), recorded_at_micros.map(big)),
                            );
                        }
                        ExportRecord::Blob { digest, bytes } => others.push(Other::Blob(digest, bytes)),
                        ExportRecord::Component { name, record } => others.push(Other::Record(name, record)),
                        ExportRecord::Cursor { name, position } => {
                            others.push(Other::Cursor(name, *position))
                        }
                        ExportRecord::DeadLetter(letter) => others.push(Other::Park(letter)),
                        ExportRecord::Header { .. } | ExportRecord::End { .. } => {}
                    }
                }
            }
            Request::Barrier(_) | Request::Stop => {}
        }
    }
    // The streams restored events moved (appends put theirs in `heads` as they went).
    for stream in &restored {
        if let Some(head) = streams.get(stream) {
            heads.insert(stream, *head);
        }
    }
    let head = next - 1;

    // Write every table at once: the statements are pipelined.
    let insert_events = async {
        if rows.position.is_empty() {
            return Ok(0);
        }
        let statement = txn.prepare_cached(INSERT_EVENTS).await?;
        let params: [&(dyn ToSql + Sync); 11] = [
            &rows.position,
            &rows.stream_type,
            &rows.stream_id,
            &rows.version,
            &rows.event_type,
            &rows.payload,
            &rows.recorded_at,
            &rows.correlation_id,
            &rows.causation_id,
            &rows.component_version,
            &rows.reply_to,
        ];
        txn.execute(&statement, &params).await
    };
    let upsert_streams = async {
        if heads.is_empty() {
            return Ok(0);
        }
        let types: Vec<&str> = heads.keys().map(|s| s.type_name.as_str()).collect();
        let ids: Vec<&str> = heads.keys().map(|s| s.id.as_str()).collect();
        let versions: Vec<i64> = heads.values().map(|(v, _)| big(v.get())).collect();
        let positions: Vec<i64> = heads.values().map(|(_, p)| big(p.get())).collect();
        let statement = txn.prepare_cached(UPSERT_STREAMS).await?;
        txn.execute(&statement, &[&types, &ids, &versions, &positions]).await
    };
    let upsert_outcomes = async {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let types: Vec<&str> = outcomes.keys().map(|(s, _)| s.type_name.as_str()).collect();
        let ids: Vec<&str> = outcomes.keys().map(|(s, _)| s.id.as_str()).collect();
        let keys: Vec<&str> = outcomes.keys().map(|(_, k)| k.as_str()).collect();
        let records: Vec<&[u8]> = outcomes.values().map(|(o, _)| o.as_slice()).collect();
        let expires: Vec<Option<i64>> = outcomes.values().map(|(_, e)| *e).collect();
        let statement = txn.prepare_cached(UPSERT_OUTCOMES).await?;
        txn.execute(&statement, &[&types, &ids, &keys, &records, &expires]).await
    };
    let newest_rows = SnapshotRows::of(newest.iter().map(|(s, snapshot)| (*s, *snapshot)));
    let history_rows = SnapshotRows::of(history.iter().map(|((s, _), snapshot)| (*s, *snapshot)));
    let move_head = async {
        if head == before {
            // Nothing appended: the commit sequence still moves, to tell a lost COMMIT's outcome.
            let statement =
                txn.prepare_cached("UPDATE cairn.log_head SET commit_sequence = commit_sequence + 1").await?;
            return txn.execute(&statement, &[]).await;
        }
        let statement = txn.prepare_cached(MOVE_HEAD).await?;
        txn.execute(&statement, &[&big(head.get())]).await
    };
    tokio::try_join!(
        insert_events,
        upsert_streams,
        upsert_outcomes,
        newest_rows.upsert(&txn, UPSERT_SNAPSHOTS),
        history_rows.upsert(&txn, UPSERT_HISTORY),
        move_head,
    )?;
    let mut forgotten = 0;
    for other in &others {
        forgotten += write_other(&txn, other).await?;
    }

    let group = Written { answers, forgotten, before, head, sequence, first_event };
    match txn.commit().await {
        Ok(()) => Ok(group),
        // The server answered: it refused the COMMIT, and nothing is stored.
        Err(error) if error.as_db_error().is_some() => Err(GroupError::NotStored(error.into())),
        Err(error) => Err(GroupError::AtCommit { error: error.into(), group }),
    }
}

/// One write that is not an append; answers how many idempotency keys it forgot.
async fn write_other(txn: &Transaction<'_>, other: &Other<'_>) -> Result<usize, tokio_postgres::Error> {
    match other {
        Other::Cursor(name, position) => {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.cursors (name, position) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                )
                .await?;
            txn.execute(&statement, &[name, &big(position.get())]).await?;
        }
        Other::Park(letter) => {
            let statement = txn
                .prepare_cached(
                    "WITH parked AS (INSERT INTO cairn.dead_letters (subscriber, stream, position, letter) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (subscriber, stream, position) \
                     DO UPDATE SET letter = EXCLUDED.letter RETURNING (xmax = 0) AS new) \
                     INSERT INTO cairn.dead_letter_counts (subscriber, count) \
                     SELECT $1, 1 FROM parked WHERE new \
                     ON CONFLICT (subscriber) DO UPDATE SET count = cairn.dead_letter_counts.count + 1",
                )
                .await?;
            let params: [&(dyn ToSql + Sync); 4] =
                [&letter.subscriber, &letter.stream.key(), &big(letter.position.get()), &letter.encode()];
            txn.execute(&statement, &params).await?;
        }
        Other::Unpark(keys) => {
            let subscribers: Vec<&str> = keys.iter().map(|k| k.subscriber.as_str()).collect();
            let streams: Vec<String> = keys.iter().map(|k| k.stream.key()).collect();
            let positions: Vec<i64> = keys.iter().map(|k| big(k.position.get())).collect();
            let statement = txn
                .prepare_cached(
                    "WITH gone AS (DELETE FROM cairn.dead_letters d \
                     USING unnest($1::text[], $2::text[], $3::bigint[]) AS k(subscriber, stream, position) \
                     WHERE d.subscriber = k.subscriber AND d.stream = k.stream AND d.position = k.position \
                     RETURNING d.subscriber), \
                     counted AS (SELECT subscriber, count(*) AS n FROM gone GROUP BY subscriber) \
                     UPDATE cairn.dead_letter_counts c SET count = c.count - counted.n \
                     FROM counted WHERE c.subscriber = counted.subscriber",
                )
                .await?;
            txn.execute(&statement, &[&subscribers, &streams, &positions]).await?;
            let statement =
                txn.prepare_cached("DELETE FROM cairn.dead_letter_counts WHERE count <= 0").await?;
            txn.execute(&statement, &[]).await?;
        }
        Other::Component(write, cursor) => {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.components (name, record) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                )
                .await?;
            txn.execute(&statement, &[&write.name, &write.record]).await?;
            if let Some((digest, bytes)) = &write.blob {
                let statement = txn
                    .prepare_cached(
                        "INSERT INTO cairn.component_blobs (digest, bytes) VALUES ($1, $2) \
                         ON CONFLICT (digest) DO NOTHING",
                    )
                    .await?;
                txn.execute(&statement, &[digest, bytes]).await?;
            }
            if let Some(digest) = &write.drop_blob {
                let statement =
                    txn.prepare_cached("DELETE FROM cairn.component_blobs WHERE digest = $1").await?;
                txn.execute(&statement, &[digest]).await?;
            }
            if let Some((name, position)) = cursor {
                let statement = txn
                    .prepare_cached(
                        "INSERT INTO cairn.cursors (name, position) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    )
                    .await?;
                txn.execute(&statement, &[name, &big(position.get())]).await?;
            }
        }
        Other::Blob(digest, bytes) => {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.component_blobs (digest, bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                )
                .await?;
            txn.execute(&statement, &[digest, bytes]).await?;
        }
        Other::Record(name, record) => {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.components (name, record) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                )
                .await?;
            txn.execute(&statement, &[name, record]).await?;
        }
        Other::Forget(recorded_before, limit) => {
            let statement = txn
                .prepare_cached(
                    "WITH expired AS (SELECT stream_type, stream_id, key FROM cairn.outcomes \
                     WHERE expires_from < $1 ORDER BY expires_from LIMIT $2) \
                     DELETE FROM cairn.outcomes o USING expired e \
                     WHERE o.stream_type = e.stream_type AND o.stream_id = e.stream_id AND o.key = e.key",
                )
                .await?;
            let forgotten = txn.execute(&statement, &[&big(*recorded_before), &big(*limit as u64)]).await?;
            return Ok(forgotten as usize);
        }
    }
    Ok(0)
}
