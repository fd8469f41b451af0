//! The host: every layer built from one [`ServeConfig`], owned by one value, and stopped in
//! one order.
//!
//! [`Host::open`] opens the data directory and starts the layers bottom up (store and
//! writer, components, actors, routing, projections, housekeeping); [`Host::router`] is
//! the HTTP API over them; [`Host::shutdown`] stops them top down: no new requests (live
//! streams end), then routing and projections, then the actors drain their mailboxes, then
//! the writer commits what is queued and the store closes. Each layer holds a
//! [`Part`] of the host's one lifecycle, so a new background part is a `Part` and a
//! line in `shutdown`, not a stop signal of its own.

use crate::actor::Actors;
use crate::components::{ComponentRegistry, DeployOptions};
use crate::config::{ADMIN_TOKEN_FILE, COMPILED_DIR, STORE_FILE, ServeConfig, VIEWS_FILE};
use crate::http::{self, AppState, BodyLimits, LiveStreams, SitePolicy};
use crate::lifecycle::{self, Backoff, CancellationToken, FailureRecord, Part};
use crate::projection::Projections;
use crate::projection::store::Views;
use crate::projection::store::embedded::EmbeddedViews;
use crate::projection::store::postgres::PostgresViews;
use crate::routing::Routing;
use crate::runtime::Runtime;
use crate::store::{self, EventStore, StoreError, Writer};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A running host: its layers, and the parts of its lifecycle that stop them.
pub struct Host {
    /// Every part is a child of it: cancelled (all parts at once) only when the host is
    /// dropped without `shutdown`.
    root: CancellationToken,
    /// Ended first: the live event streams, so that open connections can drain.
    http: Part,
    routing: Arc<Routing>,
    projections: Arc<Projections>,
    actors: Actors,
    housekeeping: Part,
    writer: Writer,
    state: AppState,
    body_limits: BodyLimits,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    /// Dropped after the actors and subscribers that run on it have stopped.
    guests: Option<GuestThreads>,
    /// In a cluster: the renewal of this host's leases, stopped last, which hands them over.
    membership: Part,
}

impl Host {
    /// Open the data directory of `config` and start every layer; a new data directory gets
    /// the bundled example components `config` names.
    pub async fn open(config: &ServeConfig) -> anyhow::Result<Host> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data).with_context(|| format!("create data directory {}", data.display()))?;
        let mut admin_token = admin_token(data, config.admin_token.as_deref())?;

        // This process's name in the lease rows of a cluster: the writer checks every
        // append's lease against it.
        let incarnation = uuid::Uuid::new_v4().to_string();
        let mut views_pool = None;
        let (store, writer, mut views) = match &config.store {
            None if config.cluster.is_some() => {
                anyhow::bail!(
                    "--advertise joins a cluster on PostgreSQL: give the database with --store postgres://…"
                )
            }
            None => open_embedded(data)?,
            Some(url) => {
                let options = store::postgres::OpenOptions {
                    exclusive: config.cluster.is_none(),
                    member: config.cluster.as_ref().map(|_| incarnation.clone()),
                };
                let opened = store::postgres::open_with(url, options)
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                views_pool = Some(opened.views_pool.clone());
                (opened.store, opened.writer, PostgresViews::shared(opened.views_pool))
            }
        };
        let root = CancellationToken::new();
        // A layer that fails to start stops the ones started before it.
        let stop_on_error = root.clone().drop_guard();
        let membership = Part::child_of(&root);
        let cluster = match (&config.cluster, &config.store) {
            (Some(cluster), Some(url)) => {
                let node = node_id(data, cluster.node_id.as_deref())?;
                let joined =
                    crate::cluster::join(url, cluster, node, incarnation, membership.clone()).await?;
                if config.admin_token.is_none() {
                    // One token for every host of the cluster, kept here too for the CLI.
                    admin_token = joined.admin_token().to_owned();
                    let path = data.join(ADMIN_TOKEN_FILE);
                    write_private(&path, &admin_token)
                        .with_context(|| format!("write the admin token to {}", path.display()))?;
                }
                // The views' writes check, in their own transactions, that this host still
                // runs the projections.
                let fence = joined.clone();
                if let Some(pool) = views_pool.take() {
                    views = PostgresViews::fenced(pool, Arc::new(move || fence.background_fence()));
                }
                Some(joined)
            }
            _ => None,
        };
        let runtime = match &config.compiled_cache {
            None => Runtime::new(Some(&data.join(COMPILED_DIR)), config.guest_limits)?,
            Some(shared) => {
                private_cache(shared, data)?;
                Runtime::new(Some(shared), config.guest_limits)?.share_cache()
            }
        };
        let components = Arc::new(
            ComponentRegistry::open(runtime, store.clone(), writer.clone())
                .await
                .context("load deployed components")?,
        );
        if components.is_empty() {
            let chosen = cairn_artifacts::BUNDLED.iter().filter(|(name, _)| config.examples.contains(name));
            for (name, bytes) in chosen {
                components
                    .deploy(name, bytes.to_vec(), DeployOptions::default())
                    .await
                    .with_context(|| format!("deploy the bundled {name} component"))?;
            }
            tracing::info!(examples = ?config.examples, "new data directory: deployed bundled example components");
        }

        // Guest calls (an actor's decisions, a subscriber's reactions) run on threads of their
        // own, so a long one never holds up the threads that answer HTTP.
        let guests = GuestThreads::start()?;
        let actors = Actors::new(
            store.clone(),
            writer.clone(),
            components.clone(),
            config.actors,
            guests.handle().clone(),
            Part::child_of(&root),
            cluster.clone(),
        );
        // In a cluster, the routing and the projections run on the host that holds their
        // lease, and stop when it moves.
        let background = cluster.as_ref().map(|c| c.background());
        let routing = Routing::start(
            actors.clone(),
            store.clone(),
            writer.clone(),
            components.clone(),
            config.routing,
            guests.handle().clone(),
            Part::child_of(&root).gated(background.clone()),
        );
        let projections_part = Part::child_of(&root).gated(background);
        let projections = Projections::start(store.clone(), views, components.clone(), projections_part)
            .await
            .context("start the projections")?;
        let housekeeping = Part::child_of(&root).gated(cluster.as_ref().map(|c| c.background()));
        keep_house(&housekeeping, &writer, config.idempotency_retention);
        let http = Part::child_of(&root);
        let state = AppState {
            actors: actors.clone(),
            store,
            writer: writer.clone(),
            components,
            routing: routing.clone(),
            projections: projections.clone(),
            admin_token: admin_token.into(),
            max_component_bytes: config.body_limits.component_bytes,
            replay_sample: config.replay_sample,
            compile_timeout: config.compile_timeout,
            view_wait: config.view_wait,
            live_streams: LiveStreams::new(
                config.max_live_streams,
                config.max_live_streams_per_client,
                config.max_stream_lag,
                http.token().clone(),
            ),
            metrics: crate::telemetry::install(),
            // Replaced by `router`, which knows the address the host answers on.
            site: Arc::new(SitePolicy::new(config.listen, &[], &[])),
            folds: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_folds.max(1))),
            default_snapshot_interval: config.actors.default_snapshot_interval,
            cluster: cluster.clone(),
        };
        if let Some(cluster) = &cluster {
            state.components.share_with_other_hosts();
            follow_the_registry(&membership, cluster, &state.components);
        }
        // The other hosts reach this one by its advertised name.
        let mut allowed_hosts = config.allowed_hosts.clone();
        if let Some(cluster) = &config.cluster
            && let Ok(url) = reqwest::Url::parse(&cluster.advertise)
            && let Some(name) = url.host_str()
        {
            allowed_hosts.push(url.port().map_or(name.to_owned(), |port| format!("{name}:{port}")));
        }
        stop_on_error.disarm();
        Ok(Host {
            root,
            http,
            routing,
            projections,
            actors,
            housekeeping,
            writer,
            state,
            body_limits: config.body_limits,
            allowed_hosts,
            allowed_origins: config.allowed_origins.clone(),
            guests: Some(guests),
            membership,
        })
    }

    /// The HTTP API, answering for `address` (the bound listen address: the names and
    /// origins the host accepts are checked against it).
    pub fn router(&self, address: SocketAddr) -> axum::Router {
        if let Some(cluster) = &self.state.cluster {
            // Bound and about to answer: now the others may be sent here.
            cluster.serving();
        }
        let site = SitePolicy::new(address, &self.allowed_hosts, &self.allowed_origins);
        let state = AppState { site: Arc::new(site), ..self.state.clone() };
        http::router(state, self.body_limits)
    }

    /// The first step of a shutdown, taken when the signal comes: live event streams end
    /// (each with its `end` event), so that the connections they hold can drain.
    pub fn stop_accepting(&self) {
        self.http.token().cancel();
    }

    /// Stop every layer, top down, and wait for each: routing and projections (mid-delivery
    /// is fine: cursors have not passed what is unfinished), then the actors (their mailboxes
    /// drain), then housekeeping, then the writer (what is queued is committed).
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: stopping the router, draining actors");
        self.http.stop().await;
        self.routing.shutdown().await;
        self.projections.shutdown().await;
        self.actors.shutdown().await;
        self.housekeeping.stop().await;
        drop(self.guests.take());
        self.writer.shutdown().await;
        // What the writer had is committed: now the leases can go to the other hosts.
        self.membership.stop().await;
        tracing::info!("stopped cleanly");
    }
}

/// A host dropped without `shutdown` (an early error, a test that panicked) still tells
/// its parts to stop, so their tasks end and let go of the data files.
impl Drop for Host {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// In a cluster: a deploy, activation or rollback made on another host, read from the
/// database and made active here too.
fn follow_the_registry(
    part: &Part,
    cluster: &Arc<crate::cluster::Cluster>,
    components: &Arc<ComponentRegistry>,
) {
    let (part, components) = (part.clone(), components.clone());
    let period = (cluster.lease_ttl() / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let tracker = part.tracker().clone();
    tracker.spawn(async move {
        while part.pause(period).await.is_ok() {
            if let Err(error) = components.refresh().await {
                tracing::warn!("cannot read the components other hosts deployed: {error}");
            }
        }
    });
}

/// The node id of a cluster member: given, or kept in the data directory (made at first start).
fn node_id(data: &Path, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = given {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        anyhow::ensure!(valid, "--node-id must be 1 to 64 letters, digits, '-', '_' or '.': {id:?}");
        return Ok(id.to_owned());
    }
    let file = data.join(crate::config::NODE_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            std::fs::write(&file, &id).with_context(|| format!("keep the node id in {}", file.display()))?;
            Ok(id)
        }
    }
}

/// Background work of the store: forgetting idempotency keys past their retention.
fn keep_house(part: &Part, writer: &Writer, retention: Duration) {
    /// The sweeper has no status page: `supervise` logs its failures, and that is all.
    struct NoStatus;
    impl FailureRecord for NoStatus {
        fn record_failure(&self, _: &str) {}
    }
    let (part, writer) = (part.clone(), writer.clone());
    let supervised = part.clone();
    supervised.tracker().spawn(async move {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        lifecycle::supervise("the idempotency sweeper", backoff, &NoStatus, &part, || {
            let (writer, part) = (writer.clone(), part.clone());
            async move {
                crate::store::forget_expired_idempotency_keys(writer, retention, part).await;
                Ok(())
            }
        })
        .await;
    });
}

/// The runtime whose threads run guest calls: actors and subscribers live there. A runtime
/// may not be dropped on an async thread, so this stops it in the background however the
/// host ends (an early `?` included).
struct GuestThreads(Option<tokio::runtime::Runtime>);

impl GuestThreads {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("cairn-guest")
            .enable_all()
            .build()
            .context("start the guest threads")?;
        Ok(GuestThreads(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A compile cache given by the operator, maybe shared by several hosts. Its code is run as
/// it is, so it must belong to the user cairn runs as (the data directory's owner) and be
/// writable by no one else: made so when it is new, refused otherwise.
fn private_cache(dir: &Path, data: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create the compile cache {}", dir.display()))?;
        let cache = std::fs::metadata(dir).with_context(|| format!("read {}", dir.display()))?;
        let owner = std::fs::metadata(data).with_context(|| format!("read {}", data.display()))?.uid();
        if !cache.is_dir() || cache.uid() != owner || cache.permissions().mode() & 0o022 != 0 {
            anyhow::bail!(
                "the compile cache {} must be a directory of the user cairn runs as that no one else \
                 can write (cairn runs the code in it); fix its owner or mode, or give another",
                dir.display()
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("create the compile cache {}", dir.display()))?;
    Ok(())
}

/// Why a data file cannot be used, and what the operator can do about it.
/// The embedded store and view store in the data directory.
pub(crate) fn open_embedded(data: &Path) -> anyhow::Result<(EventStore, Writer, Views)> {
    let store_file = data.join(STORE_FILE);
    let (store, writer) = match store::embedded::open(&store_file) {
        Err(error) if matches!(error.engine::<redb::Error>(), Some(redb::Error::DatabaseAlreadyOpen)) => {
            anyhow::bail!("{} is in use by another cairn process", store_file.display())
        }
        Err(error @ StoreError::Storage(_)) => anyhow::bail!(unreadable(&store_file, &error)),
        other => other.with_context(|| format!("open the event store in {}", data.display()))?,
    };
    let views_file = data.join(VIEWS_FILE);
    let views = match EmbeddedViews::open(&views_file) {
        Err(error @ StoreError::Storage(_)) => anyhow::bail!(unreadable(&views_file, &error)),
        other => other.with_context(|| format!("open the view store in {}", data.display()))?,
    };
    Ok((store, writer, views.shared()))
}

fn unreadable(file: &Path, error: &StoreError) -> String {
    format!(
        "{} cannot be opened: {error}. It is not a file this version of cairn wrote, or it is \
         damaged; point --data at a cairn data directory, or move the file away to start it empty",
        file.display()
    )
}

/// The admin token: given, or kept in the data directory (made at first start).
fn admin_token(data: &Path, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(token) = given.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(token.to_owned());
    }
    let path = data.join(ADMIN_TOKEN_FILE);
    // A symlink is not followed: the token is written as a file of our own instead.
    let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
    if is_file && let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            #[cfg(unix)]
            keep_private(&path).with_context(|| format!("make {} owner-only", path.display()))?;
            return Ok(token);
        }
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    write_private(&path, &token).with_context(|| format!("write the admin token to {}", path.display()))?;
    tracing::info!("made an admin token, kept in {}", path.display());
    Ok(token)
}

/// Write `text` to `path` readable by the owner only, whatever was there before (a file
/// with looser permissions, a symlink): a new file is written beside it, synced, and renamed
/// over it, so a crash leaves the old file or the new one, never half of one.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// An existing token file that others can read is made owner-only.
#[cfg(unix)]
fn keep_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the admin token file was readable by others; made it owner-only");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
