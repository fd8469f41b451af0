//! Joining, renewing, sharing and taking over leases: one task per host, on a connection
//! of its own, every third of the TTL.

use super::{BACKGROUND, Cluster, ClusterConfig, Held, LeaseRow, NodeJson, Table};
use crate::lifecycle::Part;
use crate::store::postgres::with_causes;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// Why a host could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach the cluster's database: {0}")]
    Unreachable(String),
    #[error(
        "the node id {node:?} is in use by a live host at {url}: give this host another \
         (--node-id, or a data directory of its own)"
    )]
    NodeIdInUse { node: String, url: String },
    #[error(
        "the database is held by a cairn host started without --advertise: stop it, or start \
         every host of the cluster with --advertise"
    )]
    HeldAlone,
}

impl From<tokio_postgres::Error> for JoinError {
    fn from(error: tokio_postgres::Error) -> Self {
        JoinError::Unreachable(with_causes(&error))
    }
}

/// A node id takes over its row only from a holder that left, or stopped renewing.
const JOIN: &str = "INSERT INTO cairn.nodes (id, url, incarnation, started_at, renewed_at) \
     VALUES ($1, $2, $3, now(), now()) \
     ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, incarnation = EXCLUDED.incarnation, \
     started_at = now(), renewed_at = now(), left_at = NULL \
     WHERE cairn.nodes.left_at IS NOT NULL \
     OR cairn.nodes.renewed_at < now() - $4::float8 * interval '1 millisecond' \
     RETURNING id";
const HEARTBEAT: &str =
    "UPDATE cairn.nodes SET renewed_at = now(), url = $2 WHERE id = $1 AND incarnation = $3";
const RENEW: &str = "UPDATE cairn.leases SET expires_at = now() + $2::float8 * interval '1 millisecond' \
     WHERE owner = $1 RETURNING lease, epoch";
/// Free partitions, in a random order so hosts that take at once take different ones; a
/// row an append holds `FOR SHARE` is skipped until that commit has ended.
const TAKE: &str = "WITH free AS (SELECT lease FROM cairn.leases \
     WHERE lease >= 0 AND (owner IS NULL OR expires_at < now()) \
     ORDER BY random() LIMIT $2 FOR UPDATE SKIP LOCKED) \
     UPDATE cairn.leases l SET owner = $1, epoch = l.epoch + 1, \
     expires_at = now() + $3::float8 * interval '1 millisecond' \
     FROM free WHERE l.lease = free.lease RETURNING l.lease, l.epoch";
const TAKE_BACKGROUND: &str = "WITH free AS (SELECT lease FROM cairn.leases \
     WHERE lease = -1 AND (owner IS NULL OR expires_at < now()) FOR UPDATE SKIP LOCKED) \
     UPDATE cairn.leases l SET owner = $1, epoch = l.epoch + 1, \
     expires_at = now() + $2::float8 * interval '1 millisecond' \
     FROM free WHERE l.lease = free.lease RETURNING l.lease, l.epoch";
const RELEASE: &str =
    "UPDATE cairn.leases SET owner = NULL, expires_at = '-infinity' WHERE owner = $1 AND lease = ANY($2)";
const RELEASE_ALL: &str = "UPDATE cairn.leases SET owner = NULL, expires_at = '-infinity' WHERE owner = $1";
const LEAVE: &str = "UPDATE cairn.nodes SET left_at = now() WHERE incarnation = $1";
const LEASE_TABLE: &str = "SELECT l.lease, n.id, n.url, l.expires_at > now() AND n.left_at IS NULL \
     FROM cairn.leases l LEFT JOIN cairn.nodes n ON n.incarnation = l.owner WHERE l.lease >= 0 ORDER BY l.lease";
const NODES: &str = "SELECT n.id, n.url, \
     to_char(n.renewed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
     n.left_at IS NULL AND n.renewed_at > now() - $1::float8 * interval '1 millisecond', \
     (SELECT count(*) FROM cairn.leases l WHERE l.owner = n.incarnation AND l.lease >= 0 AND l.expires_at > now()), \
     EXISTS (SELECT 1 FROM cairn.leases l WHERE l.owner = n.incarnation AND l.lease = -1 AND l.expires_at > now()) \
     FROM cairn.nodes n ORDER BY n.id";

/// Join the cluster on the database at `url` as `node` (incarnation `incarnation`, which
/// the store's writer was opened with), take this host's share of the partitions, and keep
/// renewing them until `part` stops; then hand every lease over at once.
///
/// # Errors
/// The database cannot be reached, or a live host already has this node id.
pub async fn join(
    url: &str,
    config: &ClusterConfig,
    node: String,
    incarnation: String,
    part: Part,
) -> Result<Arc<Cluster>, JoinError> {
    let db =
        crate::store::postgres::connect_config(url).map_err(|e| JoinError::Unreachable(e.to_string()))?;
    let client = connect(&db, config.lease_ttl).await?;
    let row = client.query_one("SELECT partitions, secret, admin_token FROM cairn.cluster", &[]).await?;
    let (partitions, secret, admin_token): (i32, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let ttl_ms = config.lease_ttl.as_secs_f64() * 1000.0;
    // A host that was killed a moment ago under this id holds its row until its renewal
    // runs out: wait that long before calling the id taken.
    let deadline = Instant::now() + config.lease_ttl * 2 + Duration::from_secs(1);
    loop {
        let joined = client.query_opt(JOIN, &[&node, &config.advertise, &incarnation, &ttl_ms]).await?;
        if joined.is_some() {
            client
                .execute(
                    "INSERT INTO cairn.node_commits (incarnation) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&incarnation],
                )
                .await?;
            break;
        }
        if Instant::now() >= deadline {
            let url: String =
                client.query_one("SELECT url FROM cairn.nodes WHERE id = $1", &[&node]).await?.try_get(0)?;
            return Err(JoinError::NodeIdInUse { node, url });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (changed, _) = watch::channel(0);
    let (background, _) = watch::channel(false);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| JoinError::Unreachable(format!("cannot make the HTTP client: {e}")))?;
    let cluster = Arc::new(Cluster {
        node,
        url: config.advertise.clone(),
        incarnation,
        partitions: partitions as u32,
        ttl: config.lease_ttl,
        secret,
        admin_token,
        table: RwLock::new(Table::default()),
        ready: std::sync::atomic::AtomicBool::new(false),
        reachable: RwLock::new(HashMap::new()),
        changed,
        background,
        http,
    });
    tracing::info!(node = cluster.node, url = cluster.url, partitions, "joined the cluster");
    let mut renewer = Renewer { cluster: cluster.clone(), db, client: Some(client) };
    if let Err(error) = renewer.tick().await {
        tracing::warn!("the first renewal of leases failed: {error}");
    }
    // Between renewals, a lease whose time here is up is let go at once (the database's
    // clock lets another host take it only later), whatever the renewer is waiting for.
    let (watched, watching) = (cluster.clone(), part.clone());
    part.tracker().spawn(async move {
        let period = (watched.ttl / 20).max(Duration::from_millis(20));
        while watching.pause(period).await.is_ok() {
            watched.let_go_of_expired();
        }
    });
    let (prober, probing) = (cluster.clone(), part.clone());
    part.tracker().spawn(async move {
        let period = prober.ttl.max(Duration::from_millis(500));
        while probing.pause(period).await.is_ok() {
            prober.probe().await;
        }
    });
    let task_part = part.clone();
    part.tracker().spawn(async move {
        let period = (renewer.cluster.ttl / 3).max(Duration::from_millis(50));
        while task_part.pause(period).await.is_ok() {
            if let Err(error) = renewer.tick().await {
                tracing::warn!("renewing leases failed: {error}");
                renewer.client = None;
            }
        }
        renewer.leave().await;
    });
    Ok(cluster)
}

/// The renewer's connection: no statement of it may take long enough to cost the leases.
async fn connect(db: &tokio_postgres::Config, ttl: Duration) -> Result<tokio_postgres::Client, JoinError> {
    let (client, connection) = db.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let limit = (ttl / 3).max(Duration::from_millis(100)).as_millis();
    client.batch_execute(&format!("SET statement_timeout = {limit}; SET lock_timeout = {limit}")).await?;
    // Held for as long as this connection lives: a host started without --advertise cannot
    // take the database while a member of the cluster runs, nor a member join one such host has.
    let lock = crate::store::postgres::HOST_LOCK;
    let shared: bool =
        client.query_one("SELECT pg_try_advisory_lock_shared($1)", &[&lock]).await?.try_get(0)?;
    if !shared {
        return Err(JoinError::HeldAlone);
    }
    Ok(client)
}

/// The task that keeps this host's leases.
struct Renewer {
    cluster: Arc<Cluster>,
    db: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
}

impl Renewer {
    async fn client(&mut self) -> Result<&tokio_postgres::Client, JoinError> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(connect(&self.db, self.cluster.ttl).await?);
        }
        Ok(self.client.as_ref().expect("connected"))
    }

    /// One round: say this host lives, renew what it holds, read the table, give back
    /// what is over its share, take what is free up to it, and the background lease if free.
    async fn tick(&mut self) -> Result<(), JoinError> {
        let cluster = self.cluster.clone();
        let me = cluster.incarnation.as_str();
        let ttl_ms = cluster.ttl.as_secs_f64() * 1000.0;
        // Leases are acted on until a while before they run out by the database's clock,
        // counted from before the renewal was sent.
        let margin = cluster.ttl / 5;
        let sent = Instant::now();
        let client = self.client().await?;
        let alive = client.execute(HEARTBEAT, &[&cluster.node, &cluster.url, &me]).await?;
        if alive == 0 {
            tracing::error!(node = cluster.node, "another host took this node id: holding nothing");
            self.replace_held(HashMap::new());
            return Ok(());
        }
        let client = self.client.as_ref().expect("connected");
        let renewed = client.query(RENEW, &[&me, &ttl_ms]).await?;
        let mut held: HashMap<i32, Held> = renewed
            .iter()
            .map(|row| (row.get::<_, i32>(0), Held { epoch: row.get(1), until: sent + cluster.ttl - margin }))
            .collect();
        // Renewed: kept whatever the rest of the round meets.
        self.replace_held(held.clone());
        let client = self.client.as_ref().expect("connected");

        let nodes: Vec<NodeJson> = client
            .query(NODES, &[&ttl_ms])
            .await?
            .iter()
            .map(|row| NodeJson {
                id: row.get(0),
                url: row.get(1),
                last_renewal: row.get(2),
                alive: row.get(3),
                partitions: row.get::<_, i64>(4) as u32,
                background: row.get(5),
                reachable: None,
            })
            .collect();
        let alive = nodes.iter().filter(|n| n.alive).count().max(1) as u32;
        let share = cluster.partitions.div_ceil(alive) as usize;
        let mine: Vec<i32> = held.keys().copied().filter(|l| *l != BACKGROUND).collect();
        if mine.len() > share {
            // A host joined: give it room. What is given back stops here first.
            let mut given: Vec<i32> = mine;
            given.sort_unstable();
            let given: Vec<i32> = given.split_off(share);
            for lease in &given {
                held.remove(lease);
            }
            self.replace_held(held.clone());
            let client = self.client.as_ref().expect("connected");
            client.execute(RELEASE, &[&me, &given]).await?;
            tracing::info!(count = given.len(), "handed partitions over to a host that joined");
        } else if mine.len() < share && cluster.ready.load(std::sync::atomic::Ordering::SeqCst) {
            let wanted = (share - mine.len()) as i64;
            let taken = client.query(TAKE, &[&me, &wanted, &ttl_ms]).await?;
            if !taken.is_empty() {
                crate::telemetry::leases_taken(taken.len());
                tracing::info!(count = taken.len(), "took over partitions");
            }
            for row in taken {
                held.insert(row.get(0), Held { epoch: row.get(1), until: sent + cluster.ttl - margin });
            }
        }
        if cluster.ready.load(std::sync::atomic::Ordering::SeqCst)
            && let std::collections::hash_map::Entry::Vacant(free) = held.entry(BACKGROUND)
        {
            let client = self.client.as_ref().expect("connected");
            if let Some(row) = client.query_opt(TAKE_BACKGROUND, &[&me, &ttl_ms]).await? {
                tracing::info!("runs the routing and the projections now");
                free.insert(Held { epoch: row.get(1), until: sent + cluster.ttl - margin });
            }
        }
        let client = self.client.as_ref().expect("connected");
        let partitions: Vec<LeaseRow> = client
            .query(LEASE_TABLE, &[])
            .await?
            .iter()
            .map(|row| LeaseRow {
                holder: row.get::<_, Option<String>>(1).zip(row.get::<_, Option<String>>(2)),
                live: row.get::<_, Option<bool>>(3).unwrap_or(false),
            })
            .collect();
        {
            let mut table = cluster.table.write().expect("cluster table lock");
            table.partitions = partitions;
            table.nodes = nodes;
        }
        self.replace_held(held);
        Ok(())
    }

    /// Hold `held` from now on, telling the actors and the background work if it changed.
    fn replace_held(&self, held: HashMap<i32, Held>) {
        let cluster = &self.cluster;
        let background = held.contains_key(&BACKGROUND);
        let moved = {
            let mut table = cluster.table.write().expect("cluster table lock");
            let epochs = |h: &HashMap<i32, Held>| {
                let mut e: Vec<(i32, i64)> = h.iter().map(|(l, h)| (*l, h.epoch)).collect();
                e.sort_unstable();
                e
            };
            let moved = epochs(&table.held) != epochs(&held);
            table.held = held;
            moved
        };
        if moved {
            cluster.changed.send_modify(|n| *n += 1);
        }
        cluster.background.send_if_modified(|running| std::mem::replace(running, background) != background);
    }

    /// Hand every lease over and say this host has left, so the others take over at their
    /// next round instead of after the TTL.
    async fn leave(&mut self) {
        self.replace_held(HashMap::new());
        let me = self.cluster.incarnation.clone();
        let left = async {
            let client = self.client().await?;
            client.execute(RELEASE_ALL, &[&me]).await?;
            client.execute(LEAVE, &[&me]).await?;
            Ok::<_, JoinError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), left).await {
            Ok(Ok(())) => tracing::info!("left the cluster: every lease handed over"),
            Ok(Err(error)) => {
                tracing::warn!("could not hand the leases over (they run out by themselves): {error}")
            }
            Err(_) => tracing::warn!("handing the leases over took too long (they run out by themselves)"),
        }
    }
}
