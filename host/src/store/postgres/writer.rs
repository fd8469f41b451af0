//! The writer task: every write request of the host, committed in groups, one transaction
//! per group with its statements pipelined on one connection (tokio-postgres sends the
//! statements of futures polled together without waiting for each answer).
//!
//! A group takes the log head's row first (`FOR UPDATE`, held until COMMIT), reads the
//! versions of the streams it appends to, decides each batch against them in memory as
//! the embedded writer does, then writes every table with one statement each (arrays
//! unnested), moves the head and notifies followers, and commits.

use super::ownership::Ownership;
use super::{big, connection};
use crate::store::export::ExportRecord;
use crate::store::queue::{self, Failure, QueuedWriter, Request, RequestSink};
use crate::store::{
    AppendError, Committed, CursorStart, OutcomeKey, Position, Record, Snapshot, StoreError, StoredEvent,
    StreamId, Version, Writer,
};
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Pool};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Statement};
use tokio_util::sync::CancellationToken;

/// How long the outcome of a COMMIT whose answer was lost is looked for before it is
/// reported unknown.
const RESOLVE_FOR: Duration = Duration::from_secs(10);

/// How long a group's statements, and then its COMMIT, may take before the group fails
/// (before COMMIT: nothing is stored; at it: its outcome is read).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most a group's arrays may carry (PostgreSQL takes at most 1 GiB in one field).
const MAX_STATEMENT_BYTES: usize = 512 << 20;

/// Move the head watch to `to` if that is further on: this host's commits and the
/// listener's reads of the head both move it, in whatever order they come.
pub(super) fn advance(head: &watch::Sender<Position>, to: Position) {
    head.send_if_modified(|current| {
        let moved = to > *current;
        if moved {
            *current = to;
        }
        moved
    });
}

/// The channel every commit notifies with the new head.
pub(super) const LOG_CHANNEL: &str = "cairn_log";

/// Start the writer task and the listener that follows other commits of the database.
pub(super) fn start(
    pool: Pool,
    config: tokio_postgres::Config,
    ownership: Ownership,
    member: Option<String>,
    head: watch::Sender<Position>,
) -> Writer {
    let (requests, queue) = mpsc::unbounded_channel();
    let health = Arc::new(Mutex::new(Health::default()));
    let listening = CancellationToken::new();
    let head = Arc::new(head);
    tokio::spawn(super::follow::listen(config.clone(), head.clone(), health.clone(), listening.clone()));
    let task = WriterTask { pool, config: config.clone(), ownership, member, head, health: health.clone() };
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
pub(super) struct Health {
    /// Why the last group commit failed; `None` once one succeeds again.
    last_failure: Option<String>,
    /// Why the listener cannot reach the database, while it cannot.
    pub(super) unreachable: Option<String>,
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

struct WriterTask {
    pool: Pool,
    /// For the connections that resolve a lost COMMIT, apart from the pool.
    config: tokio_postgres::Config,
    ownership: Ownership,
    /// In a cluster: this host's incarnation, the owner its leases are held as.
    member: Option<String>,
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
        if let Err(error) = self.ownership.hold().await {
            self.failed(requests, &error.to_string(), Failure::NotStored);
            return;
        }
        let client = match connection(&self.pool).await {
            Ok(client) => client,
            Err(error) => return self.failed(requests, &error.to_string(), Failure::NotStored),
        };
        // Two round trips: BEGIN, the head's lock and the streams' versions; then every write
        // and COMMIT. Before COMMIT is sent nothing is stored whatever happens.
        let epoch = self.ownership.epoch();
        let begun = tokio::time::timeout(
            WRITE_TIMEOUT,
            begin_group(&client, &requests, epoch, self.member.as_deref()),
        )
        .await;
        let (statements, plan, written) = match begun {
            Ok(Ok(begun)) => begun,
            Ok(Err(error)) => {
                discard(client);
                return self.failed(requests, &error.to_string(), Failure::NotStored);
            }
            Err(_) => {
                discard(client);
                let why = format!("the group's statements took longer than {} s", WRITE_TIMEOUT.as_secs());
                return self.failed(requests, &why, Failure::NotStored);
            }
        };
        let finished = tokio::time::timeout(
            WRITE_TIMEOUT,
            finish_group(&client, &statements, &plan, self.member.as_deref()),
        )
        .await;
        drop(plan);
        let mut written = written;
        let error = match finished {
            Ok(Ok(_))
                if requests.iter().any(|r| {
                    matches!(r, Request::Append(batch, _) if crate::faults::commit_answer_lost(&batch.stream.key()))
                }) =>
            {
                // Fault injection: the COMMIT landed, and its answer is taken to be lost.
                StoreError::Unavailable("fault injection: commit-answer-lost".to_owned())
            }
            Ok(Ok(forgotten)) => {
                written.forgotten = forgotten;
                return self.committed(requests, written, started);
            }
            Ok(Err(Finished::NotStored(error))) => {
                discard(client);
                return self.failed(requests, &error.to_string(), Failure::NotStored);
            }
            Ok(Err(Finished::Unknown(error))) => error,
            Err(_) => StoreError::Unavailable(format!("COMMIT was not answered within {} s", WRITE_TIMEOUT.as_secs())),
        };
        discard(client);
        match self.resolve(&written).await {
            Some(true) => {
                tracing::warn!("a COMMIT whose answer was lost had landed: {error}");
                self.committed(requests, written, started);
            }
            Some(false) => self.failed(requests, &error.to_string(), Failure::NotStored),
            None => self.failed(requests, &error.to_string(), Failure::Unknown),
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
        advance(&self.head, written.head);
        queue::answer(requests, written.answers, written.forgotten);
    }

    fn failed(&self, requests: Vec<Request>, message: &str, failure: Failure) {
        tracing::error!("group commit of {} requests failed: {message}", requests.len());
        crate::telemetry::commit_failed();
        self.health.lock().expect("writer health lock").last_failure = Some(message.to_owned());
        queue::fail(requests, message, failure);
    }

    /// Whether a group whose COMMIT lost its answer landed, read on a new connection: the
    /// commit sequence in the head's row, read `FOR SHARE`, which waits until the group's
    /// transaction has ended one way or the other (committed, replicated to a synchronous
    /// standby if there is one, and visible; or rolled back) and then shows only what
    /// committed. One more than before the group: it landed; the same: it did not. This holds
    /// across restarts and failovers of the server, where transaction ids are no witness. A
    /// backend still at the COMMIT after a grace is terminated, so that it ends. `None` when
    /// the database could not be read within [`RESOLVE_FOR`].
    async fn resolve(&self, group: &Written) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
        let terminate_after = tokio::time::Instant::now() + RESOLVE_FOR / 2;
        loop {
            let asked = async {
                // A connection of its own, closed after: one cut off mid-read is never reused.
                let (client, connection) = self.config.connect(NoTls).await?;
                let driver = tokio::spawn(connection);
                let read = async {
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '1s'")
                        .await?;
                    let row = match &self.member {
                        Some(me) => {
                            let witness = "SELECT commit_sequence FROM cairn.node_commits WHERE incarnation = $1 FOR SHARE";
                            client.query_one(witness, &[me]).await
                        }
                        None => {
                            client
                                .query_one("SELECT commit_sequence FROM cairn.log_head FOR SHARE", &[])
                                .await
                        }
                    };
                    let _ = client.batch_execute("ROLLBACK").await;
                    row?.try_get::<_, i64>(0)
                };
                let sequence = read.await;
                if sequence.is_err() && tokio::time::Instant::now() >= terminate_after {
                    // Still held: the backend is stuck at the COMMIT. End it (only that very
                    // backend: a pid is given again once one ends).
                    let (pid, started) = &group.backend;
                    let _ = client
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE pid = $1 AND backend_start::text IS NOT DISTINCT FROM $2",
                            &[pid, started],
                        )
                        .await;
                }
                driver.abort();
                Ok::<_, StoreError>(sequence?)
            };
            match tokio::time::timeout(Duration::from_secs(3), asked).await {
                Ok(Ok(sequence)) if sequence == group.sequence + 1 => return Some(true),
                Ok(Ok(sequence)) if sequence == group.sequence => return Some(false),
                Ok(Ok(sequence)) => {
                    tracing::error!(
                        before = group.sequence,
                        now = sequence,
                        "the commit sequence moved by more than one group: another writer, so a lost COMMIT cannot be told"
                    );
                    return None;
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => {
                    tracing::error!("cannot tell whether a commit landed: {other:?}");
                    return None;
                }
            }
        }
    }
}

/// Whether an error of a COMMIT proves that nothing of it is stored: the server refused it
/// (a serialization failure, a constraint checked at commit, bad data). Anything else (the
/// connection lost, the server shutting down) leaves the outcome to be read.
fn refused(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        matches!(code, "40001" | "40P01" | "40002" | "54000")
            || code.starts_with("23")
            || code.starts_with("22")
    })
}

/// A group as written: each append's answer, the head before and after, and what tells
/// whether it landed.
struct Written {
    answers: Vec<Result<Committed, AppendError>>,
    forgotten: usize,
    before: Position,
    head: Position,
    /// The commit sequence before this group (it moves by one when the group lands), and
    /// the backend that runs the group (its pid and start): what tells whether a COMMIT whose
    /// answer was lost landed.
    sequence: i64,
    backend: (i32, Option<String>),
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
    schema: Vec<i32>,
    lease_epoch: Vec<Option<i64>>,
    trace_parent: Vec<Option<String>>,
}

impl EventRows {
    fn push(&mut self, event: &StoredEvent, lease_epoch: Option<i64>) {
        self.lease_epoch.push(lease_epoch);
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
        // A component declares at most `MAX_SCHEMA_VERSION` (checked when it is loaded).
        self.schema.push(i32::try_from(event.schema).unwrap_or(i32::MAX));
        self.trace_parent.push(event.trace.map(|trace| trace.to_string()));
    }
}

/// A write of the group other than its appends, in the order it was asked for.
enum Other<'a> {
    Cursor(&'a str, Position),
    Park(&'a crate::store::DeadLetter),
    Unpark(&'a [crate::store::DeadLetterKey]),
    /// A component's registry record, by name.
    Record(&'a str, &'a [u8]),
    /// Component bytes under their digest, kept if already there.
    Blob(&'a [u8], &'a [u8]),
    /// Component bytes no version uses any more.
    DropBlob(&'a [u8]),
    /// A subscriber's cursor, set only if it has none yet.
    NewCursor(&'a str, Position),
    Forget(u64, usize),
}

const LOCK_HEAD: &str = "SELECT position, commit_sequence, owner_epoch, pg_backend_pid(), \
     (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()) \
     FROM cairn.log_head FOR UPDATE";
const STREAM_VERSIONS: &str = "SELECT stream_type, stream_id, version, last_position FROM cairn.streams \
     WHERE (stream_type, stream_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))";
const INSERT_EVENTS: &str = "INSERT INTO cairn.events (position, stream_type, stream_id, version, event_type, \
     payload, recorded_at_micros, correlation_id, causation_id, component_version, reply_to, lease_epoch, schema, \
     trace_parent) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bytea[], \
     $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bigint[], $13::integer[], $14::text[])";
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
     commit_sequence = commit_sequence + 1 RETURNING position), \
     witnessed AS (UPDATE cairn.node_commits SET commit_sequence = commit_sequence + 1 WHERE incarnation = $2) \
     SELECT pg_notify('cairn_log', position::text) FROM moved";
/// In a cluster, the commit sequence of this host's own row tells whether one of its
/// COMMITs landed (the head's moves with every host's); taken at the group's start, so a
/// resolving read waits for the group whatever point it reached.
const LOCK_WITNESS: &str = "SELECT commit_sequence FROM cairn.node_commits WHERE incarnation = $1 FOR UPDATE";
/// The partition leases the group's appends were started under that this host still holds,
/// held `FOR KEY SHARE` until COMMIT: a takeover (which takes the row `FOR UPDATE`) waits for
/// this commit, and one that came first is seen; this host's own renewals and releases
/// (which change no key) never wait for a group.
const HELD_LEASES: &str = "SELECT lease, epoch FROM cairn.leases \
     WHERE lease = ANY($1) AND owner = $2 AND expires_at > clock_timestamp() FOR KEY SHARE";

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

    async fn upsert(
        &self,
        client: &ClientWrapper,
        statement: &Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        if self.version.is_empty() {
            return Ok(0);
        }
        let params: [&(dyn ToSql + Sync); 5] =
            [&self.stream_type, &self.stream_id, &self.version, &self.digest, &self.state];
        client.execute(statement, &params).await
    }
}

/// A connection that failed a group, or whose transaction may be open: closed, never handed
/// out again (the server rolls back what it did not commit).
fn discard(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

/// The group's statements, prepared once per connection (cached).
struct Statements {
    lock: Statement,
    versions: Statement,
    insert_events: Statement,
    upsert_streams: Statement,
    upsert_outcomes: Statement,
    upsert_snapshots: Statement,
    upsert_history: Statement,
    move_head: Statement,
    lock_witness: Statement,
    held_leases: Statement,
}

impl Statements {
    /// Prepared on a connection's first group (one round trip each, once), taken from the
    /// connection's cache after.
    async fn prepare(client: &ClientWrapper) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            lock: client.prepare_cached(LOCK_HEAD).await?,
            versions: client.prepare_cached(STREAM_VERSIONS).await?,
            insert_events: client.prepare_cached(INSERT_EVENTS).await?,
            upsert_streams: client.prepare_cached(UPSERT_STREAMS).await?,
            upsert_outcomes: client.prepare_cached(UPSERT_OUTCOMES).await?,
            upsert_snapshots: client.prepare_cached(UPSERT_SNAPSHOTS).await?,
            upsert_history: client.prepare_cached(UPSERT_HISTORY).await?,
            move_head: client.prepare_cached(MOVE_HEAD).await?,
            lock_witness: client.prepare_cached(LOCK_WITNESS).await?,
            held_leases: client.prepare_cached(HELD_LEASES).await?,
        })
    }
}

/// The transaction's start, in one statement of the simple protocol: its COMMIT waits for
/// the flush, and a lock or a stall that would hold the head's row for long fails the group.
const BEGIN_GROUP: &str = "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE; SET LOCAL synchronous_commit = on; SET LOCAL lock_timeout = '10s'; \
     SET LOCAL idle_in_transaction_session_timeout = '30s'";
/// In a cluster every host's groups wait for the head's row: a host paused between a
/// group's two round trips (SIGSTOP, a long GC-like stall of the machine) holds it for two
/// seconds at most, then the server ends its session and rolls the group back.
const BEGIN_GROUP_IN_CLUSTER: &str = "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE; SET LOCAL synchronous_commit = on; SET LOCAL lock_timeout = '10s'; \
     SET LOCAL idle_in_transaction_session_timeout = '2s'";

/// What a group writes, decided: one array per column of each table, and the other writes
/// in the order they were asked for.
struct Plan<'a> {
    rows: EventRows,
    heads: BTreeMap<StreamId, (Version, Position)>,
    outcomes: BTreeMap<(&'a StreamId, String), OutcomeRow>,
    newest: SnapshotRows,
    history: SnapshotRows,
    others: Vec<Other<'a>>,
    head: Position,
}

/// Begin the group's transaction, take the head's row, read the versions of the streams it
/// appends to (one round trip), and decide every request against them.
async fn begin_group<'a>(
    client: &ClientWrapper,
    requests: &'a [Request],
    owner_epoch: Option<i64>,
    member: Option<&str>,
) -> Result<(Statements, Plan<'a>, Written), StoreError> {
    let statements = Statements::prepare(client).await?;
    let mut restored = Vec::new();
    for request in requests {
        if let Request::Restore(records, _) = request {
            restored.extend(records.iter().filter_map(|record| match record {
                ExportRecord::Event(event) => Some(event.stream()),
                _ => None,
            }));
        }
    }
    let appended: Vec<&StreamId> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Append(batch, _) => Some(&batch.stream),
            _ => None,
        })
        .chain(&restored)
        .collect();
    let types: Vec<&str> = appended.iter().map(|s| s.type_name.as_str()).collect();
    let ids: Vec<&str> = appended.iter().map(|s| s.id.as_str()).collect();
    let mut fenced: Vec<i32> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Append(batch, _) => batch.fence.map(|f| f.partition as i32),
            _ => None,
        })
        .collect();
    // The routing's writes (its cursors and dead letters) are its lease's, as an actor's
    // appends are its partition's.
    let routing_writes =
        requests.iter().any(|r| matches!(r, Request::Cursor(..) | Request::Park(..) | Request::Unpark(..)));
    if routing_writes {
        fenced.push(crate::cluster::BACKGROUND);
    }
    fenced.sort_unstable();
    fenced.dedup();
    // In this order on the server: the versions are read once the head's row is held, so
    // they are what every commit before this one left.
    let (begun, lock, versions, witness, leases) = tokio::join!(
        biased;
        client.batch_execute(if member.is_some() { BEGIN_GROUP_IN_CLUSTER } else { BEGIN_GROUP }),
        client.query_one(&statements.lock, &[]),
        async {
            if appended.is_empty() {
                return Ok(Vec::new());
            }
            client.query(&statements.versions, &[&types, &ids]).await
        },
        async {
            match member {
                Some(me) => client.query_opt(&statements.lock_witness, &[&me]).await,
                None => Ok(None),
            }
        },
        async {
            match member {
                Some(me) if !fenced.is_empty() => client.query(&statements.held_leases, &[&fenced, &me]).await,
                _ => Ok(Vec::new()),
            }
        },
    );
    let (lock, versions, witness, leases) = (begun.and(lock)?, versions?, witness?, leases?);
    let before = Position(lock.try_get::<_, i64>(0)? as u64);
    let sequence: i64 = match (member, witness) {
        (None, _) => lock.try_get(1)?,
        (Some(_), Some(witness)) => witness.try_get(0)?,
        (Some(_), None) => {
            return Err(StoreError::Unavailable(
                "this host is not a member of the cluster in the database (cairn.node_commits)".to_owned(),
            ));
        }
    };
    let mut held: HashMap<i32, i64> = HashMap::new();
    for row in leases {
        held.insert(row.try_get::<_, i32>(0)?, row.try_get(1)?);
    }
    if member.is_some() && routing_writes && !held.contains_key(&crate::cluster::BACKGROUND) {
        return Err(StoreError::CommitFailed(
            "this host no longer runs the routing (another host holds its lease): nothing of the group was stored"
                .to_owned(),
        ));
    }
    let epoch: i64 = lock.try_get(2)?;
    let backend = (lock.try_get::<_, i32>(3)?, lock.try_get::<_, Option<String>>(4)?);
    if owner_epoch.is_some_and(|ours| ours != epoch) {
        return Err(StoreError::Unavailable(
            "another cairn host took the database over, so this one takes no more writes".to_owned(),
        ));
    }
    let mut streams: HashMap<StreamId, (Version, Position)> = HashMap::new();
    for row in versions {
        let stream = StreamId { type_name: row.try_get(0)?, id: row.try_get(1)? };
        let head = (Version(row.try_get::<_, i64>(2)? as u64), Position(row.try_get::<_, i64>(3)? as u64));
        streams.insert(stream, head);
    }

    // Decide every batch in order, as the embedded writer does.
    let recorded_at_micros = crate::time::now_micros();
    let mut next = before + 1;
    let mut answers = Vec::new();
    let mut rows = EventRows::default();
    let mut heads: BTreeMap<StreamId, (Version, Position)> = BTreeMap::new();
    let mut outcomes: BTreeMap<(&StreamId, String), OutcomeRow> = BTreeMap::new();
    let mut newest: BTreeMap<&StreamId, &Snapshot> = BTreeMap::new();
    let mut history: BTreeMap<(&StreamId, Version), &Snapshot> = BTreeMap::new();
    let mut others = Vec::new();
    for request in requests {
        match request {
            Request::Append(batch, _) => {
                if crate::faults::commit_fail(&batch.stream.key()) {
                    return Err(StoreError::CommitFailed("fault injection: commit-fail".to_owned()));
                }
                if let Some(fence) = batch.fence
                    && held.get(&(fence.partition as i32)) != Some(&fence.epoch)
                {
                    answers.push(Err(AppendError::Store(StoreError::CommitFailed(format!(
                        "this host no longer holds partition {} at epoch {} (another host took it \
                         over, or the lease ran out): nothing was stored",
                        fence.partition, fence.epoch
                    )))));
                    continue;
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
                    let record = event.stored(&batch.stream, stream_version, next, recorded_at_micros);
                    rows.push(&record, batch.fence.map(|f| f.epoch));
                    stored.push(record);
                    next += 1;
                }
                if let Some(last) = stored.last() {
                    streams.insert(batch.stream.clone(), (stream_version, last.position));
                    heads.insert(batch.stream.clone(), (stream_version, last.position));
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
                others.push(Other::Record(&write.name, &write.record));
                if let Some((digest, bytes)) = &write.blob {
                    others.push(Other::Blob(digest, bytes));
                }
                if let Some(digest) = &write.drop_blob {
                    others.push(Other::DropBlob(digest));
                }
                if let Some((name, start)) = &write.cursor {
                    let position = if *start == CursorStart::Head { next - 1 } else { Position::ZERO };
                    others.push(Other::NewCursor(name, position));
                }
            }
            Request::ForgetKeys { recorded_before, limit, .. } => {
                others.push(Other::Forget(*recorded_before, *limit))
            }
            Request::Restore(records, _) => {
                for record in records {
                    match record {
                        ExportRecord::Event(event) => {
                            let stream = event.stream();
                            let (version, _) = streams.get(&stream).copied().unwrap_or_default();
                            crate::store::export::check_follows(event, next, version)?;
                            rows.push(event, None);
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
    // The streams restored events moved (appends put theirs in `heads` as they went).
    for stream in restored {
        if let Some(head) = streams.get(&stream).copied() {
            heads.insert(stream, head);
        }
    }
    let head = next - 1;
    let plan = Plan {
        rows,
        heads,
        outcomes,
        newest: SnapshotRows::of(newest.iter().map(|(s, snapshot)| (*s, *snapshot))),
        history: SnapshotRows::of(history.iter().map(|((s, _), snapshot)| (*s, *snapshot))),
        others,
        head,
    };
    let written = Written { answers, forgotten: 0, before, head, sequence, backend };
    Ok((statements, plan, written))
}

/// How finishing a group failed.
enum Finished {
    /// The server refused a statement or the COMMIT: nothing of the group is stored.
    NotStored(StoreError),
    /// The connection was lost with COMMIT sent or about to be: its outcome must be read.
    Unknown(StoreError),
}

/// Whether a write's error leaves the transaction certainly aborted (the server answered
/// with an error) or the outcome open (the connection was lost).
fn finished_by(error: tokio_postgres::Error) -> Finished {
    if error.as_db_error().is_some() {
        Finished::NotStored(error.into())
    } else {
        Finished::Unknown(error.into())
    }
}

/// Every write of the group and COMMIT, pipelined (one round trip, plus one per write that
/// is not an append, which are rare: cursors, dead letters, components, retention).
async fn finish_group(
    client: &ClientWrapper,
    statements: &Statements,
    plan: &Plan<'_>,
    member: Option<&str>,
) -> Result<usize, Finished> {
    let rows = &plan.rows;
    // A statement whose parameters cannot be encoded (PostgreSQL takes at most 1 GiB in a
    // field) would fail before it is sent while COMMIT behind it is sent: refuse the group
    // before anything goes.
    let bytes = rows.payload.iter().map(Vec::len).sum::<usize>()
        + [&plan.newest, &plan.history].iter().flat_map(|r| r.state.iter()).map(Vec::len).sum::<usize>()
        + plan.outcomes.values().map(|(o, _)| o.len()).sum::<usize>();
    if bytes > MAX_STATEMENT_BYTES {
        return Err(Finished::NotStored(StoreError::CommitFailed(format!(
            "the group holds {bytes} bytes, more than one statement may carry ({MAX_STATEMENT_BYTES})"
        ))));
    }
    let insert_events = async {
        if rows.position.is_empty() {
            return Ok(0);
        }
        let params: [&(dyn ToSql + Sync); 14] = [
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
            &rows.lease_epoch,
            &rows.schema,
            &rows.trace_parent,
        ];
        client.execute(&statements.insert_events, &params).await
    };
    let upsert_streams = async {
        if plan.heads.is_empty() {
            return Ok(0);
        }
        let types: Vec<&str> = plan.heads.keys().map(|s| s.type_name.as_str()).collect();
        let ids: Vec<&str> = plan.heads.keys().map(|s| s.id.as_str()).collect();
        let versions: Vec<i64> = plan.heads.values().map(|(v, _)| big(v.get())).collect();
        let positions: Vec<i64> = plan.heads.values().map(|(_, p)| big(p.get())).collect();
        client.execute(&statements.upsert_streams, &[&types, &ids, &versions, &positions]).await
    };
    let upsert_outcomes = async {
        if plan.outcomes.is_empty() {
            return Ok(0);
        }
        let types: Vec<&str> = plan.outcomes.keys().map(|(s, _)| s.type_name.as_str()).collect();
        let ids: Vec<&str> = plan.outcomes.keys().map(|(s, _)| s.id.as_str()).collect();
        let keys: Vec<&str> = plan.outcomes.keys().map(|(_, k)| k.as_str()).collect();
        let records: Vec<&[u8]> = plan.outcomes.values().map(|(o, _)| o.as_slice()).collect();
        let expires: Vec<Option<i64>> = plan.outcomes.values().map(|(_, e)| *e).collect();
        client.execute(&statements.upsert_outcomes, &[&types, &ids, &keys, &records, &expires]).await
    };
    // Every group moves the commit sequence (and the head, when it appended): what tells
    // whether a COMMIT whose answer was lost landed.
    let head = big(plan.head.get());
    let head_params: [&(dyn ToSql + Sync); 2] = [&head, &member];
    let move_head = client.execute(&statements.move_head, &head_params);
    let commit_now = plan.others.is_empty();
    let commit = async {
        if !commit_now {
            return Ok(());
        }
        client.batch_execute("COMMIT").await
    };
    // In this order on the server, COMMIT last: a statement that fails aborts the
    // transaction, and COMMIT then rolls it back.
    let (events, streams, outcomes, newest, history, head, committed) = tokio::join!(
        biased;
        insert_events,
        upsert_streams,
        upsert_outcomes,
        plan.newest.upsert(client, &statements.upsert_snapshots),
        plan.history.upsert(client, &statements.upsert_history),
        move_head,
        commit,
    );
    let writes = [events, streams, outcomes, newest, history, head];
    if let Some(error) = writes.into_iter().find_map(Result::err) {
        return Err(finished_by(error));
    }
    let at_commit = |error: tokio_postgres::Error| match refused(&error) {
        true => Finished::NotStored(error.into()),
        false => Finished::Unknown(error.into()),
    };
    if commit_now {
        return committed.map(|()| 0).map_err(at_commit);
    }
    let mut forgotten = 0;
    for other in &plan.others {
        forgotten += write_other(client, other).await.map_err(finished_by)?;
    }
    client.batch_execute("COMMIT").await.map_err(at_commit)?;
    Ok(forgotten)
}

/// One write that is not an append; answers how many idempotency keys it forgot.
async fn write_other(txn: &ClientWrapper, other: &Other<'_>) -> Result<usize, tokio_postgres::Error> {
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
        Other::DropBlob(digest) => {
            let statement = txn.prepare_cached("DELETE FROM cairn.component_blobs WHERE digest = $1").await?;
            txn.execute(&statement, &[digest]).await?;
        }
        Other::NewCursor(name, position) => {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.cursors (name, position) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .await?;
            txn.execute(&statement, &[name, &big(position.get())]).await?;
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
