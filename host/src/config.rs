//! Settings of `cairn serve` and their defaults, in one place.

use crate::actor::ActorConfig;
use crate::http::{BodyLimits, ConnectionLimits};
use crate::routing::RoutingConfig;
use crate::runtime::Limits;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the event store, compiled components and the admin token live.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL to keep everything durable in; `None`: the embedded store in
    /// `data_dir`, which then keeps only the admin token and the compiled components.
    pub store: Option<String>,
    pub listen: SocketAddr,
    /// `None`: read it from the data directory, or make one there at first start.
    pub admin_token: Option<String>,
    pub body_limits: BodyLimits,
    pub actors: ActorConfig,
    pub guest_limits: Limits,
    pub routing: RoutingConfig,
    /// Streams a deploy's replay check rebuilds with the new version (the most recent ones).
    pub replay_sample: usize,
    /// The longest an uploaded component may take to compile before the deploy is refused.
    pub compile_timeout: std::time::Duration,
    /// The longest a view read with `?min_position=` waits before answering 503.
    pub view_wait: std::time::Duration,
    /// `GET /events/stream` answers open at once; more are refused with 503.
    pub max_live_streams: usize,
    /// Of those, how many one client address may hold.
    pub max_live_streams_per_client: usize,
    /// Folds of past versions (`?version=N` reads) that may run at once; more answer 503.
    pub max_concurrent_folds: usize,
    /// How far behind the head (in log events) a live stream that had caught up may fall
    /// before it is ended as too slow.
    pub max_stream_lag: u64,
    /// Time limits on connections (request heads, idle keep-alive, draining at shutdown).
    pub connections: ConnectionLimits,
    /// How long a client's `Idempotency-Key` is remembered.
    pub idempotency_retention: std::time::Duration,
    /// The bundled example components a new data directory gets.
    pub examples: Vec<&'static str>,
    /// Where compiled components are cached; `None`: `compiled` in the data directory.
    pub compiled_cache: Option<PathBuf>,
    /// Names (`name` or `name:port`) the host answers for besides its listen address,
    /// `localhost` and loopback addresses; any other `Host` is 421.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://console.example`) whose pages may change the host, and are granted
    /// CORS; a state-changing request from any other page is 403.
    pub allowed_origins: Vec<String>,
    /// Join the cluster of hosts on the `store` database (`--advertise`); `None`: this host
    /// holds the database alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from("data"),
            store: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            body_limits: BodyLimits {
                command_bytes: 1 << 20,
                component_bytes: 32 << 20,
                max_in_flight: 4096,
                request_timeout: std::time::Duration::from_secs(120),
            },
            actors: ActorConfig::default(),
            guest_limits: Limits::default(),
            routing: RoutingConfig::default(),
            replay_sample: 100,
            compile_timeout: std::time::Duration::from_secs(60),
            view_wait: std::time::Duration::from_secs(5),
            max_live_streams: 256,
            max_live_streams_per_client: 32,
            max_stream_lag: 10_000,
            max_concurrent_folds: std::thread::available_parallelism().map_or(2, |n| n.get()),
            connections: ConnectionLimits {
                header_read: std::time::Duration::from_secs(30),
                drain: std::time::Duration::from_secs(10),
                write_stall: std::time::Duration::from_secs(30),
            },
            idempotency_retention: std::time::Duration::from_secs(24 * 60 * 60),
            examples: cairn_artifacts::BUNDLED.iter().map(|(name, _)| *name).collect(),
            compiled_cache: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            cluster: None,
        }
    }
}

/// The file in the data directory that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The event store's file in the data directory.
pub const STORE_FILE: &str = "events.redb";
/// The views' file in the data directory: derived data, rebuilt from the log if lost.
pub const VIEWS_FILE: &str = "views.redb";
/// The file in the data directory that keeps a cluster member's node id.
pub const NODE_ID_FILE: &str = "node-id";
/// Where compiled components are cached in the data directory.
pub const COMPILED_DIR: &str = "compiled";
