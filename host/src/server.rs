//! `cairn serve`: open the data directory, start every layer, serve HTTP until SIGINT or
//! SIGTERM, then stop in order: no new requests, actors drain their mailboxes, the writer
//! commits what is queued, the store closes.

use crate::actor::Actors;
use crate::components::{ComponentRegistry, DeployOptions};
use crate::config::{ADMIN_TOKEN_FILE, COMPILED_DIR, STORE_FILE, ServeConfig, VIEWS_FILE};
use crate::http::{self, AppState, LiveStreams, SitePolicy};
use crate::projection::Projections;
use crate::routing::Routing;
use crate::runtime::Runtime;
use crate::store::{EventStore, StoreError};
use crate::views::ViewStore;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("create data directory {}", data.display()))?;
    let admin_token = admin_token(data, config.admin_token.as_deref())?;

    let store_file = data.join(STORE_FILE);
    let (store, writer) = match EventStore::open(&store_file) {
        Err(StoreError::Storage(redb::Error::DatabaseAlreadyOpen)) => {
            anyhow::bail!("{} is in use by another cairn process", store_file.display())
        }
        Err(StoreError::Storage(error)) => anyhow::bail!(unreadable(&store_file, &error)),
        other => other.with_context(|| format!("open the event store in {}", data.display()))?,
    };
    let runtime = Runtime::new(Some(&data.join(COMPILED_DIR)), config.guest_limits)?;
    let components = Arc::new(
        ComponentRegistry::open(runtime, store.clone(), writer.clone())
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
    );
    let routing = Arc::new(
        Routing::start(
            actors.clone(),
            store.clone(),
            writer.clone(),
            components.clone(),
            config.routing,
            guests.handle().clone(),
        )
        .context("start the router")?,
    );
    let views_file = data.join(VIEWS_FILE);
    let views = match ViewStore::open(&views_file) {
        Err(StoreError::Storage(error)) => anyhow::bail!(unreadable(&views_file, &error)),
        other => other.with_context(|| format!("open the view store in {}", data.display()))?,
    };
    let projections = Arc::new(
        Projections::start(store.clone(), views, components.clone()).context("start the projections")?,
    );
    // Live event streams never end by themselves: they end when this turns true.
    let (stop_streams, streams_stopped) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let site = SitePolicy::new(address, &config.allowed_hosts, &config.allowed_origins);
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
            streams_stopped,
        ),
        metrics: crate::telemetry::install(),
        site: Arc::new(site),
        folds: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_folds.max(1))),
        default_snapshot_interval: config.actors.default_snapshot_interval,
    };
    let app = http::router(state, config.body_limits);
    tracing::info!("serving {} on http://{address}", data.display());
    // Tests and scripts read the bound address (for --listen 127.0.0.1:0) from the first
    // line. One write for both lines, so a reader that stops after the first never leaves
    // the second to a closed pipe.
    println!("cairn listening on http://{address}\ncairn console at http://{address}/ui");

    let sweeper = tokio::spawn(crate::store::forget_expired_idempotency_keys(
        writer.clone(),
        config.idempotency_retention,
    ));
    let stopping = async move {
        shutdown_signal().await;
        let _ = stop_streams.send(true);
    };
    http::serve(listener, app, config.connections, stopping).await;
    tracing::info!("shutting down: stopping the router, draining actors");
    routing.shutdown().await;
    projections.shutdown().await;
    actors.shutdown().await;
    sweeper.abort();
    drop(guests);
    writer.shutdown();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The runtime whose threads run guest calls: actors and subscribers live there. A runtime
/// may not be dropped on an async thread, so this stops it in the background however
/// `serve` ends (an early `?` included).
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

/// Why a data file cannot be used, and what the operator can do about it.
fn unreadable(file: &Path, error: &redb::Error) -> String {
    format!(
        "{} cannot be opened: {error}. It is not a file this version of cairn wrote, or it is \
         damaged; point --data at a cairn data directory, or move the file away to start it empty",
        file.display()
    )
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
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
