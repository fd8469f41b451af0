//! Projections: read models kept by the host (API.md, Projections).
//!
//! Each deployed projection component has a task ([`runner`]) that follows the global log
//! from its view's cursor, the same way routing does (a [`crate::store::LogFollower`]),
//! and commits every batch's documents with the new cursor in `views.redb`
//! ([`crate::projection::store`]): exactly once, whatever crashes. A new projection starts from
//! position 0, since a view must see all of history. A rebuild, asked for by an operator
//! or by a deploy of a new version, fills a fresh generation beside the live one and
//! switches when it has caught up; readers get the old generation until then.
//!
//! Readers can wait for their own writes: [`Projections::document`] with a `min_position`
//! waits (bounded) until the live view has handled that position.

mod runner;
pub mod store;

use crate::components::{ChangeFollower, ChangeKind, ComponentRegistry, Followed};
use crate::lifecycle::{self, Backoff, FailureRecord, Part, RunFailed};
use crate::projection::store::{Generation, ViewRecord, Views};
use crate::store::{ComponentVersion, EventStore, Position, StoreError, StreamId};
use runner::Runner;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The longest a rebuild request waits for its runner to take it.
const REBUILD_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What the runners need.
pub(crate) struct Context {
    pub store: EventStore,
    pub views: Views,
    pub components: Arc<ComponentRegistry>,
    /// Tells the runners to stop between batches.
    pub part: Part,
}

/// Where a generation stopped, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The position of the event the component failed on; the view has handled every
    /// event before it.
    pub position: Position,
    pub stream: StreamId,
    pub event_type: String,
    pub reason: String,
    /// Set when the event's producer could not upcast it (not the projection's fault): a
    /// new active version of that aggregate lets the generation go on from the event.
    #[serde(skip)]
    pub producer: Option<String>,
}

/// What a runner shows of itself.
#[derive(Debug, Default)]
pub(crate) struct RunnerStatus {
    pub live: Option<Generation>,
    pub live_failure: Option<Failure>,
    pub next: Option<Generation>,
    pub next_failure: Option<Failure>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub rebuilds_completed: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// What a projection's runner and its readers share.
pub(crate) struct Shared {
    pub name: String,
    pub status: Mutex<RunnerStatus>,
    pub counters: Mutex<Counters>,
    /// The position the live generation has handled.
    pub live_position: watch::Sender<Position>,
}

impl FailureRecord for Shared {
    fn record_failure(&self, error: &str) {
        let mut counters = self.counters.lock().expect("counters lock");
        counters.restarts += 1;
        counters.last_error = Some(error.to_owned());
    }
}

/// An operator's (or a deploy's) request to a runner.
pub(crate) enum Control {
    /// Build a fresh generation with `version`; unless `force`, only if neither the live
    /// generation nor one being built is built by that version already.
    Rebuild { version: ComponentVersion, force: bool, reply: oneshot::Sender<Result<Generation, String>> },
    /// Another version of the aggregate `type_name` is active: a generation stopped by its
    /// upcast goes on.
    ProducerChanged { type_name: String },
}

struct Handle {
    shared: Arc<Shared>,
    controls: mpsc::UnboundedSender<Control>,
}

/// Why a view request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("no projection named {0:?} is deployed")]
    UnknownProjection(String),
    #[error("the view {name} has reached position {reached}, not {wanted}{why}")]
    Behind { name: String, reached: Position, wanted: Position, why: String },
    #[error("the projection {0:?} could not take the request; try again")]
    Interrupted(String),
    #[error("cannot rebuild {name}: {reason}")]
    RebuildFailed { name: String, reason: String },
    /// In a cluster, the projections run on another host now: ask it (`GET /cluster`).
    #[error(
        "the projections run on another host of the cluster: send this to the node that GET /cluster shows running them"
    )]
    Elsewhere,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A projection as `GET /views` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub status: ProjectionState,
    /// The component version that builds the live view.
    pub version: ComponentVersion,
    pub generation: u32,
    /// Every event at or below this position is in the live view.
    pub cursor: Position,
    pub head_position: Position,
    pub lag: u64,
    pub documents: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Where a projection is, as `GET /views` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionState {
    /// Its runner has not read its record yet (or cannot: see `last_error`).
    Starting,
    Running,
    /// A new generation is being built beside the live one.
    Rebuilding,
    /// The live generation stopped on an event its component fails on.
    Failed,
}

/// A generation being built beside the live one.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildStatus {
    pub generation: u32,
    pub version: ComponentVersion,
    pub cursor: Position,
    /// The share of the log handled, from 0 to 1.
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// A rebuild that was started.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildStarted {
    pub projection: String,
    pub generation: u32,
    pub version: ComponentVersion,
}

/// The running projections.
pub struct Projections {
    context: Arc<Context>,
    handles: Mutex<BTreeMap<String, Handle>>,
    /// Held while a runner is started, so two deploys of one new projection start one.
    starting: tokio::sync::Mutex<()>,
}

impl Projections {
    /// Start a runner for every deployed projection, and follow the registry: a projection
    /// deployed later gets its runner, a new active version rebuilds its view.
    pub async fn start(
        store: EventStore,
        views: Views,
        components: Arc<ComponentRegistry>,
        part: Part,
    ) -> Result<Arc<Projections>, StoreError> {
        let follower = components.follow("projections");
        let context = Arc::new(Context { store, views, components, part });
        let projections = Arc::new(Projections {
            context,
            handles: Mutex::new(BTreeMap::new()),
            starting: tokio::sync::Mutex::new(()),
        });
        for name in projections.context.components.projection_names() {
            projections.ensure_running(&name).await?;
        }
        let part = projections.context.part.clone();
        part.tracker().spawn(projections.clone().follow_components(follower));
        if part.is_gated() {
            part.tracker().spawn(projections.clone().catch_up_when_running_here());
        }
        Ok(projections)
    }

    /// In a cluster: each time this host starts running the projections, a view built by
    /// another version than the active one (deployed while another host ran them) is
    /// rebuilt, as at a start.
    async fn catch_up_when_running_here(self: Arc<Self>) {
        let part = self.context.part.clone();
        while part.opened().await.is_ok() {
            for name in self.context.components.projection_names() {
                if let Err(error) = self.sync(&name).await {
                    tracing::warn!(projection = name, "cannot bring the view to the active version: {error}");
                }
            }
            part.closed().await;
        }
    }

    /// Take each change of the registry as it comes, until the host stops.
    async fn follow_components(self: Arc<Self>, mut follower: ChangeFollower) {
        while let Some(followed) = follower.next(self.context.part.token()).await {
            match followed {
                Followed::Change(change) => {
                    let synced = match change.kind {
                        ChangeKind::Deleted => Ok(()),
                        _ => self.sync(&change.name).await.map_err(|error| error.to_string()),
                    };
                    if self.context.components.active(&change.name).is_some() {
                        self.producer_changed(&change.name);
                    }
                    follower.applied(&change, synced);
                }
                Followed::Missed => {
                    for name in self.context.components.projection_names() {
                        if let Err(error) = self.sync(&name).await {
                            tracing::error!(projection = name, "cannot follow a component change: {error}");
                        }
                    }
                }
            }
        }
    }

    /// Tell every runner that another version of the aggregate `type_name` is active.
    fn producer_changed(&self, type_name: &str) {
        for handle in self.handles.lock().expect("projections lock").values() {
            let _ = handle.controls.send(Control::ProducerChanged { type_name: type_name.to_owned() });
        }
    }

    /// After a deploy, activation or rollback of `name`: start the runner of a new
    /// projection, or rebuild the view with the version now active.
    async fn sync(&self, name: &str) -> Result<(), ViewError> {
        let Some(active) = self.context.components.active_projection(name) else { return Ok(()) };
        if !self.handles.lock().expect("projections lock").contains_key(name) {
            return Ok(self.ensure_running(name).await?);
        }
        if !self.context.part.may_run() {
            // In a cluster, another host runs the projections: it follows the same change
            // from the database and rebuilds there.
            return Ok(());
        }
        self.rebuild_with(name, active.version, false).await?;
        Ok(())
    }

    /// Start the runner of `name`, making its view (from position 0) if it has none.
    async fn ensure_running(&self, name: &str) -> Result<(), StoreError> {
        let Some(active) = self.context.components.active_projection(name) else { return Ok(()) };
        let _one_at_a_time = self.starting.lock().await;
        let running = |projections: &Self| {
            projections.context.part.is_stopping()
                || projections.handles.lock().expect("projections lock").contains_key(name)
        };
        if running(self) {
            return Ok(());
        }
        let record = match self.context.views.records().await?.remove(name) {
            Some(record) => record,
            None => {
                let record = ViewRecord {
                    live: Generation { id: 1, version: active.version, cursor: Position::ZERO },
                    next: None,
                };
                self.context.views.put_record(name, &record).await?;
                record
            }
        };
        let mut handles = self.handles.lock().expect("projections lock");
        let (live_position, _) = watch::channel(record.live.cursor);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            status: Mutex::new(RunnerStatus::default()),
            counters: Mutex::new(Counters::default()),
            live_position,
        });
        let (controls, receiver) = mpsc::unbounded_channel();
        self.context.part.tracker().spawn(runner_task(self.context.clone(), shared.clone(), receiver));
        handles.insert(name.to_owned(), Handle { shared, controls: controls.clone() });
        // A view built by another version than the active one (a deploy that was not
        // followed by its rebuild before a crash) is rebuilt.
        let building = record.next.map(|n| n.version).unwrap_or(record.live.version);
        if building != active.version {
            let (reply, _) = oneshot::channel();
            let _ = controls.send(Control::Rebuild { version: active.version, force: false, reply });
        }
        Ok(())
    }

    fn shared(&self, name: &str) -> Result<Arc<Shared>, ViewError> {
        let handles = self.handles.lock().expect("projections lock");
        handles
            .get(name)
            .map(|h| h.shared.clone())
            .ok_or_else(|| ViewError::UnknownProjection(name.to_owned()))
    }

    /// Build the view of `name` again, from position 0, with the active version, beside
    /// the live one.
    pub async fn rebuild(&self, name: &str) -> Result<RebuildStarted, ViewError> {
        if !self.context.part.may_run() {
            return Err(ViewError::Elsewhere);
        }
        let active = self
            .context
            .components
            .active_projection(name)
            .ok_or_else(|| ViewError::UnknownProjection(name.to_owned()))?;
        self.rebuild_with(name, active.version, true).await
    }

    async fn rebuild_with(
        &self,
        name: &str,
        version: ComponentVersion,
        force: bool,
    ) -> Result<RebuildStarted, ViewError> {
        let controls = {
            let handles = self.handles.lock().expect("projections lock");
            handles
                .get(name)
                .map(|h| h.controls.clone())
                .ok_or_else(|| ViewError::UnknownProjection(name.to_owned()))?
        };
        let (reply, answer) = oneshot::channel();
        controls
            .send(Control::Rebuild { version, force, reply })
            .map_err(|_| ViewError::Interrupted(name.to_owned()))?;
        // A runner that is between restarts answers when it runs again; a caller does not
        // wait for ever on one that keeps failing.
        let generation = tokio::time::timeout(REBUILD_ANSWER_WAIT, answer)
            .await
            .map_err(|_| ViewError::Interrupted(name.to_owned()))?
            .map_err(|_| ViewError::Interrupted(name.to_owned()))?
            .map_err(|reason| ViewError::RebuildFailed { name: name.to_owned(), reason })?;
        Ok(RebuildStarted { projection: name.to_owned(), generation: generation.id, version })
    }

    /// Every projection with its cursor, lag and status.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        let head = self.context.store.head_position();
        let shared: Vec<_> =
            self.handles.lock().expect("projections lock").values().map(|h| h.shared.clone()).collect();
        let mut out = Vec::with_capacity(shared.len());
        for shared in shared {
            let (live, live_failure, next, next_failure) = {
                let status = shared.status.lock().expect("status lock");
                (status.live, status.live_failure.clone(), status.next, status.next_failure.clone())
            };
            // A runner that has not started yet (or cannot: see `last_error`) shows as starting.
            let starting = live.is_none();
            let live =
                live.unwrap_or(Generation { id: 0, version: ComponentVersion::ZERO, cursor: Position::ZERO });
            let rebuild = next.map(|next| RebuildStatus {
                generation: next.id,
                version: next.version,
                cursor: next.cursor,
                progress: if head == 0 {
                    1.0
                } else {
                    (next.cursor.get() as f64 / head.get() as f64).min(1.0)
                },
                failure: next_failure,
            });
            let status = if starting {
                ProjectionState::Starting
            } else if rebuild.as_ref().is_some_and(|r| r.failure.is_none()) {
                ProjectionState::Rebuilding
            } else if live_failure.is_some() {
                ProjectionState::Failed
            } else {
                ProjectionState::Running
            };
            out.push(ProjectionStatus {
                name: shared.name.clone(),
                status,
                version: live.version,
                generation: live.id,
                cursor: live.cursor,
                head_position: head,
                lag: head.saturating_sub(live.cursor),
                documents: self.context.views.document_count(&shared.name, live.id).await?,
                failure: live_failure,
                rebuild,
                counters: shared.counters.lock().expect("counters lock").clone(),
            });
        }
        Ok(out)
    }

    /// Wait until the live view of `name` has handled `min_position` (at most `wait`).
    async fn caught_up(
        &self,
        name: &str,
        min_position: Option<Position>,
        wait: Duration,
    ) -> Result<(), ViewError> {
        let shared = self.shared(name)?;
        let Some(wanted) = min_position else { return Ok(()) };
        if !self.context.part.may_run() {
            return self.caught_up_elsewhere(name, wanted, wait).await;
        }
        let mut position = shared.live_position.subscribe();
        let behind = |reached: Position, why: String| ViewError::Behind {
            name: name.to_owned(),
            reached,
            wanted,
            why,
        };
        let waited = tokio::time::timeout(wait, async {
            loop {
                let reached = *position.borrow_and_update();
                if reached >= wanted {
                    return Ok(());
                }
                let failure = shared.status.lock().expect("status lock").live_failure.clone();
                if let Some(failure) = failure {
                    let why = format!(
                        " and has stopped: it failed on {} of {} at position {}: {}",
                        failure.event_type, failure.stream, failure.position, failure.reason
                    );
                    return Err(behind(reached, why));
                }
                if position.changed().await.is_err() {
                    return Err(behind(reached, " and has stopped".to_owned()));
                }
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(behind(*position.borrow(), format!(" after waiting {} ms", wait.as_millis()))),
        }
    }

    /// In a cluster, on a host that does not run the projections: wait until the view's
    /// record in the shared view store shows `wanted` handled (at most `wait`).
    async fn caught_up_elsewhere(
        &self,
        name: &str,
        wanted: Position,
        wait: Duration,
    ) -> Result<(), ViewError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let reached =
                self.context.views.records().await?.get(name).map_or(Position::ZERO, |r| r.live.cursor);
            if reached >= wanted {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let why = format!(" after waiting {} ms (another host runs it)", wait.as_millis());
                return Err(ViewError::Behind { name: name.to_owned(), reached, wanted, why });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live document of `name` under `key`, once the view has handled `min_position`,
    /// with the position the view had handled when it was read.
    pub async fn document(
        &self,
        name: &str,
        key: &str,
        min_position: Option<Position>,
        wait: Duration,
    ) -> Result<(Position, Option<String>), ViewError> {
        self.caught_up(name, min_position, wait).await?;
        self.context
            .views
            .document(name, key)
            .await?
            .ok_or_else(|| ViewError::UnknownProjection(name.to_owned()))
    }

    /// The live view's keys after `after`, once the view has handled `min_position`.
    pub async fn keys(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
        min_position: Option<Position>,
        wait: Duration,
    ) -> Result<(Position, Vec<String>), ViewError> {
        self.caught_up(name, min_position, wait).await?;
        self.context
            .views
            .keys(name, after, limit)
            .await?
            .ok_or_else(|| ViewError::UnknownProjection(name.to_owned()))
    }

    /// Stop every runner between batches, then make the views durable.
    pub async fn shutdown(&self) {
        self.context.part.stop().await;
        if let Err(error) = self.context.views.flush().await {
            tracing::error!("cannot make the views durable at shutdown: {error}");
        }
    }
}

/// Run a projection, and run it again from its stored record if the run fails or panics.
async fn runner_task(context: Arc<Context>, shared: Arc<Shared>, controls: mpsc::UnboundedReceiver<Control>) {
    let controls = Arc::new(tokio::sync::Mutex::new(controls));
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let part = context.part.clone();
    let name = format!("the projection task of {}", shared.name);
    lifecycle::supervise(&name, backoff, &*shared, &part, || {
        let (context, shared, controls) = (context.clone(), shared.clone(), controls.clone());
        async move {
            let mut controls = controls.lock().await;
            let record = context
                .views
                .records()
                .await
                .map_err(|e| RunFailed(e.to_string()))?
                .remove(&shared.name)
                .ok_or_else(|| RunFailed(format!("the view record of {} is missing", shared.name)))?;
            let runner =
                Runner::from_record(context.clone(), shared.clone(), &record).await.map_err(RunFailed)?;
            runner.run(&mut controls).await;
            Ok(())
        }
    })
    .await;
}
