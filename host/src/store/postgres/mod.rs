//! The store on PostgreSQL: the same contract as the embedded store, in tables of the
//! `cairn` schema (`migrations/`), for hosts whose operators back up, replicate and watch
//! PostgreSQL, and for several hosts sharing one database.
//!
//! One writer task per host takes every write request ([`super::queue`]) and commits them
//! in groups, one transaction each, its statements pipelined on one connection
//! ([`writer`]). Reads take a connection of the pool and never wait for the writer.
//!
//! # Positions
//! A group commit takes the one row of `cairn.log_head` `FOR UPDATE` before it gives
//! positions, and holds it until COMMIT. Positions are therefore dense and given in commit
//! order: a reader that has seen position p never afterwards sees a new event below it.
//! The price is that commits of the whole database are serialized on that row, which one
//! host's group commit never notices (it has one transaction open at a time) and several
//! hosts share (docs/ARCHITECTURE.md measures the ceiling).
//!
//! # Durability
//! Every group commits with `synchronous_commit = on`: an append is answered `Ok` only once
//! PostgreSQL has flushed its commit. A COMMIT whose answer was lost (the connection dropped
//! during it) is resolved by reading the log on a new connection before anyone is answered.
//!
//! # Following the log
//! Each commit notifies channel `cairn_log` with the new head. A listener connection
//! moves the head watch on every notification (other hosts' commits too) and, should one
//! be lost, reads the head once a second, so a lost notification delays a follower, never
//! loses it anything.

mod follow;
mod ownership;

pub(crate) use ownership::HOST_LOCK;
mod schema;
mod writer;

pub use schema::{SCHEMA_VERSION, SchemaError};

use super::export::ExportRecord;
use super::{
    DeadLetter, DeadLetterKey, EventStore, OutcomeKey, Page, Position, Record, Snapshot, StoreError,
    StoreReads, StoredEvent, StoredOutcome, StreamId, Version, Writer,
};
use crate::store::ComponentVersion;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{IsolationLevel, NoTls, Row};

/// How long a request waits for a connection of the pool, and a new connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a start waits for the database to be let go by a host that held it.
const HOLDER_GONE: Duration = Duration::from_secs(5);

/// Connections the reads' pool keeps at most.
const POOL_SIZE: usize = 16;
/// Connections the views' pool keeps at most (a projection batch holds one while its guest
/// reads documents).
const VIEWS_POOL_SIZE: usize = 8;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0} is not a PostgreSQL URL: {1}")]
    BadUrl(String, String),
    #[error("cannot connect to PostgreSQL at {0}: {1}")]
    Unreachable(String, String),
    #[error("PostgreSQL at {0}: {1}")]
    Schema(String, SchemaError),
    #[error("PostgreSQL at {0} cannot hold a Cairn store: {1}")]
    Unsupported(String, String),
    #[error(
        "PostgreSQL at {0} is in use by another cairn host (or an import, or a cluster of hosts \
         started with --advertise): one host writes a database unless all are started with \
         --advertise (stop the other, or give this one a database of its own)"
    )]
    InUse(String),
}

/// A connected store: what the host reads and writes through, and the pool for its views.
pub struct Opened {
    pub store: EventStore,
    pub writer: Writer,
    pub views_pool: Pool,
}

/// `url` with its password, if it has one, replaced by `***`: what errors and logs show.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // The `key=value` form: `host=db user=c password=…`.
        return url
            .split(' ')
            .map(|pair| if pair.starts_with("password=") { "password=***" } else { pair })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}");
    if let Some(tail) = tail {
        out.push('/');
        match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => pair.to_owned(),
                    })
                    .collect();
                out.push_str(&format!("{path}?{}", query.join("&")));
            }
            None => out.push_str(tail),
        }
    }
    out
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Hold the database for this host alone (a session advisory lock, for as long as the
    /// store is open), as the embedded store holds its file: two hosts writing one database
    /// would each deliver, project and cache on their own. Only tests that write one
    /// database from several stores at once turn it off.
    pub exclusive: bool,
    /// In a cluster (not exclusive): this host's incarnation, the owner of its leases in the
    /// database. Every append of an actor then carries its lease, checked at commit.
    pub member: Option<String>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { exclusive: true, member: None }
    }
}

/// Connect to the database at `url`, hold it for this host, create or migrate the schema,
/// and start the writer.
///
/// # Errors
/// The URL does not parse, the database cannot be reached, another host holds it, it is
/// not UTF-8, or its schema is newer than this Cairn's.
pub async fn open(url: &str) -> Result<Opened, OpenError> {
    open_with(url, OpenOptions::default()).await
}

/// [`open`], with options.
pub async fn open_with(url: &str, options: OpenOptions) -> Result<Opened, OpenError> {
    let shown = redacted(url);
    let config = connect_config(url)?;
    let ownership = ownership::Ownership::new(config.clone(), options.exclusive);
    let reads_pool = pool(&config, &shown, POOL_SIZE)?;
    let mut client =
        reads_pool.get().await.map_err(|e| OpenError::Unreachable(shown.clone(), pool_error(e)))?;
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .map_err(|e| OpenError::Unreachable(shown.clone(), with_causes(&e)))?
        .get(0);
    if encoding != "UTF8" {
        return Err(OpenError::Unsupported(
            shown,
            format!(
                "its encoding is {encoding}; Cairn needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8')"
            ),
        ));
    }
    schema::migrate(&mut client).await.map_err(|e| OpenError::Schema(shown.clone(), e))?;
    // A host killed a moment ago may still hold it: its session ends once the server sees its
    // connection gone, which takes a moment. Wait that long before calling it in use.
    let deadline = tokio::time::Instant::now() + HOLDER_GONE;
    loop {
        match ownership.hold().await {
            Ok(()) => break,
            Err(StoreError::Unavailable(why)) if why.contains("another cairn host") => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(OpenError::InUse(shown));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => return Err(OpenError::Unreachable(shown, other.to_string())),
        }
    }
    let head: i64 = client
        .query_one("SELECT position FROM cairn.log_head", &[])
        .await
        .map_err(|e| OpenError::Unreachable(shown.clone(), with_causes(&e)))?
        .get(0);
    drop(client);
    let (head_tx, head_rx) = watch::channel(Position(head as u64));
    // The writer's connection comes from a pool of its own, so no load of reads can keep it
    // waiting; the views too have theirs.
    let writer = writer::start(pool(&config, &shown, 1)?, config.clone(), ownership, options.member, head_tx);
    let reads = PostgresReads { pool: reads_pool, head: head_rx };
    Ok(Opened { store: Arc::new(reads), writer, views_pool: pool(&config, &shown, VIEWS_POOL_SIZE)? })
}

/// A pool for a view store on the database at `url` alone, its schema made as [`open`]
/// makes it (for tests of the view store).
pub async fn views_pool(url: &str) -> Result<Pool, OpenError> {
    let shown = redacted(url);
    let config = connect_config(url)?;
    let views = pool(&config, &shown, VIEWS_POOL_SIZE)?;
    let mut client = views.get().await.map_err(|e| OpenError::Unreachable(shown.clone(), pool_error(e)))?;
    schema::migrate(&mut client).await.map_err(|e| OpenError::Schema(shown, e))?;
    Ok(views)
}

/// The connection settings of `url`, with Cairn's defaults for what it does not say: a
/// connect timeout, and TCP keepalives and a user timeout, so a database that vanished from
/// the network fails the connection in seconds instead of a quarter of an hour.
pub(crate) fn connect_config(url: &str) -> Result<tokio_postgres::Config, OpenError> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| OpenError::BadUrl(redacted(url), e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(30));
    // Writes, locks and the commit sequence must all be on the primary, whichever host of a
    // list answers first.
    config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    if config.get_application_name().is_none() {
        config.application_name("cairn");
    }
    Ok(config)
}

fn pool(config: &tokio_postgres::Config, shown: &str, size: usize) -> Result<Pool, OpenError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| OpenError::BadUrl(shown.to_owned(), e.to_string()))
}

/// An error with the errors that caused it: tokio-postgres says "error connecting to
/// server" and keeps the reason (connection refused, a bad password) in its source.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = error.source();
    }
    message
}

/// The message of a pool's failure to hand out a connection.
pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(error) => with_causes(&error),
        deadpool_postgres::PoolError::Timeout(_) => "no connection to the database within 5 s".to_owned(),
        other => other.to_string(),
    }
}

/// A pooled connection, or `Unavailable` naming why there is none.
pub(crate) async fn connection(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("the database cannot be reached: {}", pool_error(e))))
}

struct PostgresReads {
    pool: Pool,
    head: watch::Receiver<Position>,
}

/// The columns of an event, in the order [`event`] reads them.
macro_rules! event_columns {
    () => {
        "position, stream_type, stream_id, version, event_type, payload, recorded_at_micros, \
         correlation_id, causation_id, component_version, reply_to, schema, trace_parent"
    };
}

/// A page of events: those `$where` selects, in `$order`, at most `$limit` of them and no more
/// once their payloads reach `$bytes` bytes (the first always comes).
macro_rules! event_page {
    ($where:literal, $order:literal, $limit:literal, $bytes:literal) => {
        concat!(
            "SELECT ",
            event_columns!(),
            " FROM (SELECT ",
            event_columns!(),
            ", sum(octet_length(payload)) OVER (ORDER BY ",
            $order,
            ") AS running FROM cairn.events WHERE ",
            $where,
            " ORDER BY ",
            $order,
            " LIMIT ",
            $limit,
            "::bigint) page WHERE running - octet_length(payload) < GREATEST(",
            $bytes,
            "::bigint, 1) ORDER BY ",
            $order
        )
    };
}

fn event(row: &Row) -> Result<StoredEvent, StoreError> {
    let reply_to: Option<String> = row.try_get(10)?;
    let reply_to = reply_to
        .map(|key| {
            StreamId::from_key(&key)
                .ok_or_else(|| StoreError::Corrupt(format!("reply_to {key:?} names no stream")))
        })
        .transpose()?;
    Ok(StoredEvent {
        position: Position(row.try_get::<_, i64>(0)? as u64),
        stream_type: row.try_get(1)?,
        stream_id: row.try_get(2)?,
        version: Version(row.try_get::<_, i64>(3)? as u64),
        event_type: row.try_get(4)?,
        payload: row.try_get(5)?,
        recorded_at_micros: row.try_get::<_, i64>(6)? as u64,
        correlation_id: row.try_get(7)?,
        causation_id: row.try_get(8)?,
        component_version: ComponentVersion(row.try_get::<_, i64>(9)? as u32),
        reply_to,
        schema: u32::try_from(row.try_get::<_, i32>(11)?)
            .ok()
            .filter(|&schema| schema >= cairn_wire::FIRST_SCHEMA)
            .ok_or_else(|| StoreError::Corrupt("an event's schema is below 1".to_owned()))?,
        // Written by the host from a parsed one; anything else reads as no trace.
        trace: row.try_get::<_, Option<String>>(12)?.as_deref().and_then(crate::traces::TraceParent::parse),
    })
}

fn events(rows: Vec<Row>) -> Result<Vec<StoredEvent>, StoreError> {
    rows.iter().map(event).collect()
}

/// A count or position as PostgreSQL's `bigint` (ours stay far below its largest).
pub(crate) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn page_limits(page: Page) -> (i64, i64) {
    (big(page.events as u64), big(page.bytes as u64))
}

fn snapshot(row: &Row) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        version: Version(row.try_get::<_, i64>(0)? as u64),
        digest: row.try_get(1)?,
        state: row.try_get(2)?,
    })
}

#[async_trait]
impl StoreReads for PostgresReads {
    fn head_position(&self) -> Position {
        *self.head.borrow()
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn read_all(&self, after: Position, page: Page) -> Result<Vec<StoredEvent>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client.prepare_cached(event_page!("position > $1", "position", "$2", "$3")).await?;
        let (limit, bytes) = page_limits(page);
        events(client.query(&statement, &[&big(after.get()), &limit, &bytes]).await?)
    }

    async fn read_event(&self, position: Position) -> Result<Option<StoredEvent>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(concat!("SELECT ", event_columns!(), " FROM cairn.events WHERE position = $1"))
            .await?;
        client.query_opt(&statement, &[&big(position.get())]).await?.as_ref().map(event).transpose()
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        after: Position,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(event_page!("correlation_id = $1 AND position > $2", "position", "$3", "$4"))
            .await?;
        let (limit, bytes) = page_limits(page);
        events(client.query(&statement, &[&correlation_id, &big(after.get()), &limit, &bytes]).await?)
    }

    /// Every event records `reply_to` here: the store never held events from before it.
    async fn is_reply_to(&self, event: &StoredEvent, type_name: &str) -> Result<bool, StoreError> {
        Ok(event.is_reply_to(type_name))
    }

    async fn stream_head(&self, stream: &StreamId) -> Result<Option<(Version, Position)>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT version, last_position FROM cairn.streams WHERE stream_type = $1 AND stream_id = $2",
            )
            .await?;
        let row = client.query_opt(&statement, &[&stream.type_name, &stream.id]).await?;
        row.map(|row| {
            Ok((Version(row.try_get::<_, i64>(0)? as u64), Position(row.try_get::<_, i64>(1)? as u64)))
        })
        .transpose()
    }

    async fn read_stream_range(
        &self,
        stream: &StreamId,
        from: Version,
        to: Version,
        page: Page,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(event_page!(
                "stream_type = $1 AND stream_id = $2 AND version >= $3 AND version <= $4",
                "version",
                "$5",
                "$6"
            ))
            .await?;
        let (limit, bytes) = page_limits(page);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&stream.type_name, &stream.id, &big(from.get()), &big(to.get()), &limit, &bytes];
        events(client.query(&statement, &params).await?)
    }

    async fn recent_streams(&self, type_name: &str, limit: usize) -> Result<Vec<StreamId>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT stream_id FROM cairn.streams WHERE stream_type = $1 ORDER BY last_position DESC LIMIT $2",
            )
            .await?;
        let rows = client.query(&statement, &[&type_name, &big(limit as u64)]).await?;
        rows.iter().map(|row| Ok(StreamId { type_name: type_name.to_owned(), id: row.try_get(0)? })).collect()
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT version, digest, state FROM cairn.snapshots WHERE stream_type = $1 AND stream_id = $2",
            )
            .await?;
        client
            .query_opt(&statement, &[&stream.type_name, &stream.id])
            .await?
            .as_ref()
            .map(snapshot)
            .transpose()
    }

    async fn load_snapshot_for(
        &self,
        stream: &StreamId,
        digest: &[u8],
    ) -> Result<Option<Snapshot>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT version, digest, state FROM cairn.snapshots \
                 WHERE stream_type = $1 AND stream_id = $2 AND digest = $3",
            )
            .await?;
        let row = client.query_opt(&statement, &[&stream.type_name, &stream.id, &digest]).await?;
        row.as_ref().map(snapshot).transpose()
    }

    async fn snapshot_at_or_before(
        &self,
        stream: &StreamId,
        version: Version,
        digest: &[u8],
    ) -> Result<Option<Snapshot>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT version, digest, state FROM cairn.snapshot_history \
                 WHERE stream_type = $1 AND stream_id = $2 AND version <= $3 AND digest = $4 \
                 ORDER BY version DESC LIMIT 1",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&stream.type_name, &stream.id, &big(version.get()), &digest])
            .await?;
        row.as_ref().map(snapshot).transpose()
    }

    async fn outcome(
        &self,
        stream: &StreamId,
        key: &OutcomeKey,
    ) -> Result<Option<StoredOutcome>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT outcome FROM cairn.outcomes WHERE stream_type = $1 AND stream_id = $2 AND key = $3",
            )
            .await?;
        let row = client.query_opt(&statement, &[&stream.type_name, &stream.id, &key.stored()]).await?;
        row.map(|row| StoredOutcome::decode(row.try_get(0)?)).transpose()
    }

    async fn cursor(&self, name: &str) -> Result<Position, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client.prepare_cached("SELECT position FROM cairn.cursors WHERE name = $1").await?;
        let row = client.query_opt(&statement, &[&name]).await?;
        Ok(Position(row.map(|row| row.try_get::<_, i64>(0)).transpose()?.unwrap_or(0) as u64))
    }

    async fn dead_letters(
        &self,
        subscriber: Option<&str>,
        stream: Option<&StreamId>,
        after: Option<&DeadLetterKey>,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, u64)>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT letter, octet_length(letter) + octet_length(subscriber) + octet_length(stream) + 8 \
                 FROM cairn.dead_letters \
                 WHERE ($1::text IS NULL OR subscriber = $1) AND ($2::text IS NULL OR stream = $2) \
                 AND ($3::text IS NULL OR (subscriber, stream, position) > ($3, $4, $5)) \
                 ORDER BY subscriber, stream, position LIMIT $6",
            )
            .await?;
        let stream = stream.map(StreamId::key);
        let after_stream = after.map(|a| a.stream.key());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &subscriber,
            &stream,
            &after.map(|a| a.subscriber.as_str()),
            &after_stream,
            &after.map_or(0, |a| big(a.position.get())),
            &big(limit as u64),
        ];
        let rows = client.query(&statement, &params).await?;
        rows.iter()
            .map(|row| Ok((DeadLetter::decode(row.try_get(0)?)?, row.try_get::<_, i32>(1)? as u64)))
            .collect()
    }

    async fn dead_letter(&self, key: &DeadLetterKey) -> Result<Option<DeadLetter>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT letter FROM cairn.dead_letters WHERE subscriber = $1 AND stream = $2 AND position = $3",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&key.subscriber, &key.stream.key(), &big(key.position.get())])
            .await?;
        row.map(|row| DeadLetter::decode(row.try_get(0)?)).transpose()
    }

    /// A kept count, not a scan.
    async fn dead_letter_count(&self, subscriber: &str) -> Result<u64, StoreError> {
        let client = connection(&self.pool).await?;
        let statement =
            client.prepare_cached("SELECT count FROM cairn.dead_letter_counts WHERE subscriber = $1").await?;
        let row = client.query_opt(&statement, &[&subscriber]).await?;
        Ok(row.map(|row| row.try_get::<_, i64>(0)).transpose()?.unwrap_or(0) as u64)
    }

    async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement =
            client.prepare_cached("SELECT subscriber, count FROM cairn.dead_letter_counts").await?;
        let rows = client.query(&statement, &[]).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get::<_, i64>(1)? as u64))).collect()
    }

    async fn stream_dead_letter_count(&self, subscriber: &str, stream: &StreamId) -> Result<u64, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached("SELECT count(*) FROM cairn.dead_letters WHERE subscriber = $1 AND stream = $2")
            .await?;
        let row = client.query_one(&statement, &[&subscriber, &stream.key()]).await?;
        Ok(row.try_get::<_, i64>(0)? as u64)
    }

    async fn parked_streams(&self, subscriber: &str) -> Result<BTreeMap<StreamId, Position>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT stream, min(position) FROM cairn.dead_letters WHERE subscriber = $1 GROUP BY stream",
            )
            .await?;
        let rows = client.query(&statement, &[&subscriber]).await?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get(0)?;
                let stream = StreamId::from_key(&key)
                    .ok_or_else(|| StoreError::Corrupt(format!("dead letter key {key:?} names no stream")))?;
                Ok((stream, Position(row.try_get::<_, i64>(1)? as u64)))
            })
            .collect()
    }

    async fn component_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement =
            client.prepare_cached("SELECT name, record FROM cairn.components ORDER BY name").await?;
        let rows = client.query(&statement, &[]).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    async fn component_bytes(&self, digest: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement =
            client.prepare_cached("SELECT bytes FROM cairn.component_blobs WHERE digest = $1").await?;
        let row = client.query_opt(&statement, &[&digest]).await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// One read-only `REPEATABLE READ` transaction is the snapshot; each table is read
    /// through a portal, a page at a time, so a large log never sits in memory.
    fn export(&self, out: mpsc::Sender<Result<ExportRecord, StoreError>>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(error) = export_snapshot(&pool, &out).await {
                let _ = out.send(Err(error)).await;
            }
        });
    }
}

/// Rows fetched per round trip of an export.
const EXPORT_PAGE: i32 = 1000;

/// How one table's rows become export records.
type ToRecord = fn(&Row) -> Result<ExportRecord, StoreError>;

async fn export_snapshot(
    pool: &Pool,
    out: &mpsc::Sender<Result<ExportRecord, StoreError>>,
) -> Result<(), StoreError> {
    let mut client = connection(pool).await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let head: i64 = txn.query_one("SELECT position FROM cairn.log_head", &[]).await?.try_get(0)?;
    let send = async |record| out.send(Ok(record)).await.map_err(|_| StoreError::Closed);
    send(super::export::header(Position(head as u64))).await?;
    let tables: [(&str, ToRecord); 6] = [
        (concat!("SELECT ", event_columns!(), " FROM cairn.events ORDER BY position"), |row| {
            Ok(ExportRecord::Event(event(row)?))
        }),
        ("SELECT digest, bytes FROM cairn.component_blobs", |row| {
            Ok(ExportRecord::Blob { digest: row.try_get(0)?, bytes: row.try_get(1)? })
        }),
        ("SELECT name, record FROM cairn.components ORDER BY name", |row| {
            Ok(ExportRecord::Component { name: row.try_get(0)?, record: row.try_get(1)? })
        }),
        ("SELECT stream_type, stream_id, key, outcome, expires_from FROM cairn.outcomes", |row| {
            Ok(ExportRecord::Outcome {
                stream: StreamId { type_name: row.try_get(0)?, id: row.try_get(1)? },
                key: row.try_get(2)?,
                outcome: row.try_get(3)?,
                recorded_at_micros: row.try_get::<_, Option<i64>>(4)?.map(|t| t as u64),
            })
        }),
        ("SELECT name, position FROM cairn.cursors ORDER BY name", |row| {
            Ok(ExportRecord::Cursor {
                name: row.try_get(0)?,
                position: Position(row.try_get::<_, i64>(1)? as u64),
            })
        }),
        ("SELECT letter FROM cairn.dead_letters ORDER BY subscriber, stream, position", |row| {
            Ok(ExportRecord::DeadLetter(DeadLetter::decode(row.try_get(0)?)?))
        }),
    ];
    for (sql, record) in tables {
        let statement = txn.prepare(sql).await?;
        let portal = txn.bind(&statement, &[]).await?;
        loop {
            let rows = txn.query_portal(&portal, EXPORT_PAGE).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                send(record(row)?).await?;
            }
        }
    }
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redacted("postgres://cairn:secret@db:5432/cairn"), "postgres://cairn:***@db:5432/cairn");
        assert_eq!(redacted("postgres://cairn@db/cairn"), "postgres://cairn@db/cairn");
        assert_eq!(
            redacted("postgresql://db/cairn?user=c&password=secret&sslmode=disable"),
            "postgresql://db/cairn?user=c&password=***&sslmode=disable"
        );
        assert_eq!(redacted("host=db user=c"), "host=db user=c");
        assert_eq!(redacted("host=db password=secret user=c"), "host=db password=*** user=c");
    }
}
