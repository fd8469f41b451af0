//! A cluster of hosts on one PostgreSQL database: which host writes which stream.
//!
//! Stream keys hash to one of P partitions, fixed when the database was created. Each
//! partition has a lease row (owner, epoch, expiry by the database's clock); hosts renew
//! theirs every third of the TTL, share the partitions evenly and take over the ones whose
//! holder stopped renewing ([`leases`]). A host runs the actors of its partitions only, and
//! each of their appends carries the lease it was started under ([`Fence`]): the writer
//! stores it only while the database still shows this host holding that partition at that
//! epoch. A request for a stream of another host's is forwarded to it ([`forward`]).
//!
//! One more lease, [`BACKGROUND`], says which host runs the routing and the projections:
//! their cursors, dedup records and views are in the database, so whichever host holds it
//! carries on where the last one stopped.

mod forward;
mod leases;

pub use forward::{DeliveredJson, FORWARDED_HEADER, Forwarded, RoutedCommandJson, Unreachable};

use crate::store::{Fence, StreamId};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lease of the routing and the projections.
pub const BACKGROUND: i32 = -1;

/// How a host joins a cluster (`cairn serve --advertise`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The URL the other hosts reach this one at.
    pub advertise: String,
    /// This host's id; `None`: the one kept in the data directory (made at first start).
    pub node_id: Option<String>,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
}

/// One node as the lease table showed it at the last renewal.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeJson {
    pub id: String,
    pub url: String,
    /// Renewed within the lease TTL, and not stopped.
    pub alive: bool,
    /// When it last renewed, by the database's clock (RFC 3339).
    pub last_renewal: String,
    /// Partitions it holds now.
    pub partitions: u32,
    /// Whether it runs the routing and the projections.
    pub background: bool,
    /// Whether this node reached it at its advertised URL the last time it tried (`null` for
    /// itself and for nodes that are not alive): a node the others cannot reach gets no
    /// forwarded requests answered.
    pub reachable: Option<bool>,
}

/// Where a stream's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This host holds the partition: its actor runs here, under this fence.
    Here(Fence),
    /// Another live host holds it.
    There { node: String, url: String },
    /// No live host holds it now (a takeover is due).
    Nobody,
}

/// A lease this host holds: its epoch, and until when (by this host's clock, with a
/// margin) it may act on it without hearing from the database again.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    until: Instant,
}

/// A lease row as last read: who holds it (node id and URL), and whether it was live.
#[derive(Debug, Clone, Default)]
struct LeaseRow {
    holder: Option<(String, String)>,
    live: bool,
}

#[derive(Default)]
struct Table {
    held: HashMap<i32, Held>,
    partitions: Vec<LeaseRow>,
    nodes: Vec<NodeJson>,
}

/// This host's membership of the cluster.
pub struct Cluster {
    node: String,
    url: String,
    /// This process's own name in the lease rows: a host restarted under the same node id
    /// is another incarnation, and never renews what the one before it held.
    incarnation: String,
    partitions: u32,
    ttl: Duration,
    secret: String,
    /// The admin token of the hosts given none.
    admin_token: String,
    table: RwLock<Table>,
    /// Set once the host answers HTTP: only then does it take leases, so the others never
    /// forward to a host that cannot answer yet.
    ready: std::sync::atomic::AtomicBool,
    /// Whether each other live node answered at its advertised URL, by node id.
    reachable: RwLock<HashMap<String, bool>>,
    /// Moves whenever the leases this host holds change (actors of lost ones retire).
    changed: watch::Sender<u64>,
    /// Whether this host runs the routing and the projections now.
    background: watch::Sender<bool>,
    http: reqwest::Client,
}

impl Cluster {
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition a stream's key hashes to: the same on every host and every version.
    pub fn partition_of(&self, stream: &StreamId) -> u32 {
        partition_of(stream, self.partitions)
    }

    /// Where requests for `stream` go now.
    pub fn owner(&self, stream: &StreamId) -> Owner {
        let partition = self.partition_of(stream);
        let table = self.table.read().expect("cluster table lock");
        if let Some(held) = table.held.get(&(partition as i32))
            && held.until > Instant::now()
        {
            return Owner::Here(Fence { partition, epoch: held.epoch });
        }
        match table.partitions.get(partition as usize) {
            Some(LeaseRow { holder: Some((node, url)), live: true }) if *node != self.node => {
                Owner::There { node: node.clone(), url: url.clone() }
            }
            _ => Owner::Nobody,
        }
    }

    /// Where requests for `stream` go, waiting up to `wait` while no live host holds it.
    pub async fn owner_within(&self, stream: &StreamId, wait: Duration) -> Owner {
        let deadline = Instant::now() + wait;
        loop {
            let owner = self.owner(stream);
            if owner != Owner::Nobody || Instant::now() >= deadline {
                return owner;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long a request waits for a partition with no live holder before it is answered
    /// 503: long enough for a dead holder's lease to run out and be taken over.
    pub fn takeover_wait(&self) -> Duration {
        self.ttl * 2 + self.ttl / 2
    }

    /// The fence an actor of `stream` starts under, if this host holds its partition.
    pub fn fence(&self, stream: &StreamId) -> Option<Fence> {
        match self.owner(stream) {
            Owner::Here(fence) => Some(fence),
            _ => None,
        }
    }

    /// The host answers HTTP now: it may take its share of the leases.
    pub fn serving(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drop the leases whose time here is up, telling the actors and the background work.
    fn let_go_of_expired(&self) {
        let now = Instant::now();
        let (moved, background) = {
            let mut table = self.table.write().expect("cluster table lock");
            let before = table.held.len();
            table.held.retain(|_, held| held.until > now);
            (table.held.len() != before, table.held.contains_key(&BACKGROUND))
        };
        if moved {
            tracing::warn!("leases ran out before they could be renewed: their work stops here");
            self.changed.send_modify(|n| *n += 1);
        }
        self.background.send_if_modified(|running| std::mem::replace(running, background) != background);
    }

    /// The background lease as this host holds it now (its incarnation and epoch), for the
    /// writes of the routing and the projections to check in their own transactions.
    pub fn background_fence(&self) -> Option<(String, i64)> {
        let table = self.table.read().expect("cluster table lock");
        let held = table.held.get(&BACKGROUND).filter(|h| h.until > Instant::now())?;
        Some((self.incarnation.clone(), held.epoch))
    }

    /// Moves whenever the partitions this host holds change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// `true` while this host runs the routing and the projections.
    pub fn background(&self) -> watch::Receiver<bool> {
        self.background.subscribe()
    }

    /// The cluster's admin token, for the hosts that are given none.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The secret hosts show each other (never to clients).
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether a request shows the cluster's secret: it came from another host.
    pub fn from_peer(&self, headers: &axum::http::HeaderMap) -> bool {
        headers.get(FORWARDED_HEADER).is_some_and(|shown| {
            use sha2::{Digest, Sha256};
            // Compared as digests, so the time taken tells nothing of the secret.
            Sha256::digest(shown.as_bytes()) == Sha256::digest(self.secret.as_bytes())
        })
    }

    /// Every node, with the partitions each holds, as the last renewal read them.
    pub fn nodes(&self) -> Vec<NodeJson> {
        let reachable = self.reachable.read().expect("cluster reachability lock");
        let mut nodes = self.table.read().expect("cluster table lock").nodes.clone();
        for node in &mut nodes {
            node.reachable =
                (node.alive && node.id != self.node).then(|| reachable.get(&node.id).copied()).flatten();
        }
        nodes
    }

    /// Try every other live node at its advertised URL, and keep what answered.
    async fn probe(&self) {
        let others: Vec<(String, String)> = self
            .nodes()
            .into_iter()
            .filter(|n| n.alive && n.id != self.node)
            .map(|n| (n.id, n.url))
            .collect();
        let mut found = HashMap::new();
        for (id, url) in others {
            let answered =
                self.http.get(format!("{url}/healthz")).timeout(std::time::Duration::from_secs(1)).send();
            let reached = answered.await.is_ok_and(|r| r.status().is_success());
            let before = self.reachable.read().expect("cluster reachability lock").get(&id).copied();
            if !reached && before != Some(false) {
                tracing::warn!(node = id, url, "a node of the cluster does not answer at its advertised URL");
            }
            found.insert(id, reached);
        }
        *self.reachable.write().expect("cluster reachability lock") = found;
    }

    /// Partitions no live host holds now.
    pub fn unowned(&self) -> Vec<u32> {
        let table = self.table.read().expect("cluster table lock");
        let mine = |p: usize| table.held.get(&(p as i32)).is_some_and(|h| h.until > Instant::now());
        (0..table.partitions.len())
            .filter(|&p| !table.partitions[p].live && !mine(p))
            .map(|p| p as u32)
            .collect()
    }

    /// Partitions this host holds now.
    pub fn held(&self) -> usize {
        let table = self.table.read().expect("cluster table lock");
        let now = Instant::now();
        table.held.iter().filter(|(lease, held)| **lease != BACKGROUND && held.until > now).count()
    }
}

/// The partition of `stream` among `partitions`: the first eight bytes of the SHA-256 of
/// its key, so it never changes with the Rust version or the platform.
pub fn partition_of(stream: &StreamId, partitions: u32) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(stream.type_name.as_bytes())
        .chain_update([0])
        .chain_update(stream.id.as_bytes())
        .finalize();
    let first = u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"));
    (first % u64::from(partitions.max(1))) as u32
}

pub use leases::{JoinError, join};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_partition_is_stable_and_spread() {
        let stream = |id: &str| StreamId { type_name: "account".to_owned(), id: id.to_owned() };
        // Fixed forever: a new Cairn must put every stored stream where an old one did.
        assert_eq!(partition_of(&stream("a"), 256), partition_of(&stream("a"), 256));
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of(&stream(&i.to_string()), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_ne!(
            partition_of(&StreamId { type_name: "ab".into(), id: "c".into() }, 1 << 20),
            partition_of(&StreamId { type_name: "a".into(), id: "bc".into() }, 1 << 20),
            "the type and the id are kept apart"
        );
    }
}
