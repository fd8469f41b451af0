//! One projection's task: follow the log for the live generation of its view (and, during a
//! rebuild, for the generation being built beside it), hand subscribed events to the
//! component in batches, and commit each batch's documents with the generation's cursor.
//!
//! Both generations advance in the same task, one batch each in turn, so the live view
//! stays current while a rebuild catches up; when the new generation has caught up with the
//! live one it becomes the live one in one transaction. A generation whose
//! component fails on an event stops there (its documents stay as they were, readers keep
//! them) and says why in `GET /views`; a rebuild, or a deploy of a fixed version, starts it
//! again.

use super::{Context, Control, Failure, Shared};
use crate::projection::store::{BatchCommit, Generation, ViewRecord};
use crate::runtime::ProjectionComponent;
use crate::store::{ComponentVersion, LogFollower, Page, Position, StoreError, StoredEvent, StreamId};
use crate::upcast::upcast_selected;
use cairn_wire::EventEnvelope;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Log events read per batch: at most 512, and 8 MiB of them past the first.
const BATCH: Page = Page::new(512, 8 << 20);

/// One generation being built or kept current.
pub(super) struct Lane {
    pub generation: Generation,
    pub component: Arc<ProjectionComponent>,
    follower: LogFollower,
    pub failure: Option<Failure>,
    /// Whether this lane is a rebuild (for progress and test-only slowdowns).
    rebuild: bool,
}

/// What one batch did.
enum Step {
    /// Nothing new in the log for this lane.
    Idle,
    Advanced,
}

pub(super) struct Runner {
    pub context: Arc<Context>,
    pub shared: Arc<Shared>,
    pub live: Lane,
    pub next: Option<Lane>,
}

impl Runner {
    /// The runner of `name` as its stored record says.
    pub async fn from_record(
        context: Arc<Context>,
        shared: Arc<Shared>,
        record: &ViewRecord,
    ) -> Result<Runner, String> {
        let live = lane(&context, &shared.name, record.live, false).await?;
        let next = match record.next {
            Some(next) => Some(lane(&context, &shared.name, next, true).await?),
            None => None,
        };
        let runner = Runner { context, shared, live, next };
        runner.publish();
        Ok(runner)
    }

    pub async fn run(mut self, controls: &mut mpsc::UnboundedReceiver<Control>) {
        let part = self.context.part.clone();
        loop {
            if part.is_stopping() {
                return;
            }
            while let Ok(control) = controls.try_recv() {
                self.control(control).await;
            }
            let mut advanced = false;
            if let Some(next) = self.next.as_mut().filter(|n| n.failure.is_none()) {
                advanced |= matches!(step(&self.context, &self.shared.name, next).await, Step::Advanced);
                self.switch_if_caught_up().await;
            }
            if self.live.failure.is_none() {
                advanced |=
                    matches!(step(&self.context, &self.shared.name, &mut self.live).await, Step::Advanced);
            }
            self.publish();
            if advanced {
                continue;
            }
            let next = self.next.as_mut().filter(|n| n.failure.is_none());
            let live = Some(&mut self.live).filter(|l| l.failure.is_none());
            tokio::select! {
                _ = part.token().cancelled() => {}
                Some(control) = controls.recv() => self.control(control).await,
                _ = more(live) => {}
                _ = more(next) => {}
            }
        }
    }

    async fn control(&mut self, control: Control) {
        match control {
            Control::Rebuild { version, force, reply } => {
                let building = self.next.as_ref().unwrap_or(&self.live).generation;
                let answer = if !force && building.version == version {
                    Ok(building)
                } else {
                    self.start_rebuild(version).await
                };
                self.publish();
                let _ = reply.send(answer);
            }
            Control::ProducerChanged { type_name } => {
                for lane in std::iter::once(&mut self.live).chain(self.next.as_mut()) {
                    if lane.failure.as_ref().is_some_and(|f| f.producer.as_deref() == Some(&type_name)) {
                        tracing::info!(
                            projection = self.shared.name,
                            producer = type_name,
                            "going on after its new version"
                        );
                        lane.failure = None;
                    }
                }
                self.publish();
            }
        }
    }

    /// Start building a fresh generation with `version` of the component beside the live one
    /// (replacing a rebuild already under way).
    async fn start_rebuild(&mut self, version: ComponentVersion) -> Result<Generation, String> {
        let name = &self.shared.name;
        let mut record =
            ViewRecord { live: self.live.generation, next: self.next.as_ref().map(|n| n.generation) };
        let generation = Generation { id: record.new_generation_id(), version, cursor: Position::ZERO };
        record.next = Some(generation);
        self.context.views.put_record(name, &record).await.map_err(|e| e.to_string())?;
        self.next = Some(lane(&self.context, name, generation, true).await?);
        tracing::info!(projection = name, generation = generation.id, version = version.get(), "rebuilding");
        Ok(generation)
    }

    /// Make the rebuilt generation live once it is as far along the log as the live one
    /// (comparing with the head instead could starve a switch under a steady stream of
    /// commits). A live generation that has stopped on a failure is overtaken sooner.
    async fn switch_if_caught_up(&mut self) {
        let Some(next) = &self.next else { return };
        if next.failure.is_some() || next.generation.cursor < self.live.generation.cursor {
            return;
        }
        match self.context.views.switch(&self.shared.name, next.generation.id).await {
            Ok(Some(_)) => {
                let mut next = self.next.take().expect("checked above");
                next.rebuild = false;
                tracing::info!(
                    projection = self.shared.name,
                    generation = next.generation.id,
                    cursor = next.generation.cursor.get(),
                    "rebuilt view is live"
                );
                self.live = next;
                self.shared.counters.lock().expect("status lock").rebuilds_completed += 1;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(projection = self.shared.name, "cannot switch to the rebuilt view: {error}")
            }
        }
    }

    /// Show the lanes' positions to readers and to `GET /views`.
    fn publish(&self) {
        let mut status = self.shared.status.lock().expect("status lock");
        status.live = Some(self.live.generation);
        status.live_failure = self.live.failure.clone();
        status.next = self.next.as_ref().map(|n| n.generation);
        status.next_failure = self.next.as_ref().and_then(|n| n.failure.clone());
        drop(status);
        self.shared.live_position.send_if_modified(|position| {
            let changed = *position != self.live.generation.cursor;
            *position = self.live.generation.cursor;
            changed
        });
    }
}

async fn lane(context: &Context, name: &str, generation: Generation, rebuild: bool) -> Result<Lane, String> {
    let component = context
        .components
        .projection_version(name, generation.version)
        .await
        .map_err(|e| format!("cannot load {name} version {}: {e}", generation.version))?;
    Ok(Lane {
        generation,
        component,
        follower: LogFollower::new(context.store.clone(), generation.cursor),
        failure: None,
        rebuild,
    })
}

/// Resolves when the lane has something new to read; never for no lane.
async fn more(lane: Option<&mut Lane>) {
    match lane {
        Some(lane) => lane.follower.more().await,
        None => std::future::pending().await,
    }
}

/// Why a view batch was not committed; the batch is read again after a pause.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every guest instance slot was busy: overload, not the projection's fault.
    #[error(transparent)]
    Busy(crate::runtime::GuestError),
    #[error("a view batch task failed: {0}")]
    TaskFailed(String),
    #[error("generation {generation} of {name} is gone")]
    GenerationGone { name: String, generation: u32 },
}

/// Read one batch of the log for `lane`, handle its subscribed events, commit.
async fn step(context: &Arc<Context>, name: &str, lane: &mut Lane) -> Step {
    match try_step(context, name, lane).await {
        Ok(step) => step,
        Err(error) => {
            // Storage trouble or overload: read again from the committed cursor after a pause.
            tracing::error!(projection = name, "a view batch failed, retrying: {error}");
            lane.follower.seek(lane.generation.cursor);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Step::Advanced
        }
    }
}

async fn try_step(context: &Arc<Context>, name: &str, lane: &mut Lane) -> Result<Step, BatchError> {
    let mut page = lane.follower.next_page(BATCH).await?;
    let Some(last) = page.last().map(|e| e.position) else { return Ok(Step::Idle) };
    let (views, component, generation, rebuild, from, registry) = (
        context.views.clone(),
        lane.component.clone(),
        lane.generation.id,
        lane.rebuild,
        lane.generation.cursor,
        context.components.clone(),
    );
    let name_owned = name.to_owned();
    let (outcome, committed) = tokio::task::spawn_blocking(move || {
        if rebuild && let Some(stall) = crate::faults::rebuild_stall() {
            std::thread::sleep(stall);
        }
        let info = component.info();
        // The projection reads events as the active version of their producer reads them;
        // a producer's upcaster that fails stops the view before that event, as a failure
        // of the projection's own would.
        let read_from = |e: &StoredEvent| info.subscriptions.iter().any(|s| s.source_type == e.stream_type);
        let unreadable = match upcast_selected(|t| registry.active(t), &mut page, read_from) {
            Ok(()) => None,
            Err(error) if error.is_transient() => return Err(BatchError::Busy(error.error)),
            Err(error) => Some(error),
        };
        let readable = &page[..unreadable.as_ref().map_or(page.len(), |e| e.index)];
        let wanted: Vec<&StoredEvent> =
            readable.iter().filter(|e| info.wants(&e.stream_type, &e.event_type)).collect();
        let events: Vec<EventEnvelope> = wanted.iter().map(|e| e.envelope()).collect();
        // One span an event, in the event's trace, while the batch is handled and committed;
        // none for a rebuild, which would hang old traces' spans on the history.
        let traced = crate::traces::exporting() && !rebuild;
        let _spans: Vec<tracing::Span> = wanted
            .iter()
            .filter(|e| traced && e.trace.is_some())
            .map(|e| {
                let span = tracing::info_span!(
                    "project",
                    projection = %name_owned,
                    stream = %e.stream(),
                    position = e.position.get(),
                    event_type = %e.event_type,
                );
                crate::traces::continue_trace(&span, e.trace);
                span
            })
            .collect();
        // A page with nothing this projection reads only moves its cursor: no read of the view.
        let outcome = if events.is_empty() {
            None
        } else {
            let reader = crate::replay::wait_for(views.reader(&name_owned, generation))?;
            Some(component.handle_batch(&events, reader))
        };
        if let Some(error) = outcome.as_ref().and_then(|o| o.failure.as_ref()).filter(|e| e.is_transient()) {
            return Err(BatchError::Busy(error.clone()));
        }
        let (writes, cursor, failure) = match (outcome, unreadable) {
            (Some(outcome), _) if outcome.failure.is_some() => {
                let failed = &events[outcome.handled];
                let error = outcome.failure.expect("a failure").to_string();
                (outcome.writes, Position(failed.position - 1), Some((failed.clone(), error, None)))
            }
            (outcome, Some(unreadable)) => {
                let failed = page[unreadable.index].envelope();
                let writes = outcome.map(|o| o.writes).unwrap_or_default();
                let producer = Some(failed.stream_type.clone());
                (writes, Position(failed.position - 1), Some((failed, unreadable.to_string(), producer)))
            }
            (outcome, None) => (outcome.map(|o| o.writes).unwrap_or_default(), last, None),
        };
        let committed =
            crate::replay::wait_for(views.commit(&name_owned, generation, &writes, from, cursor))?;
        Ok::<_, BatchError>(((cursor, failure), committed))
    })
    .await
    .map_err(|e| BatchError::TaskFailed(e.to_string()))??;
    let (cursor, failure) = outcome;
    match committed {
        BatchCommit::Done => {}
        BatchCommit::GenerationGone => {
            return Err(BatchError::GenerationGone { name: name.to_owned(), generation });
        }
        BatchCommit::CursorMoved(stored) => {
            // The file holds the view as of `stored` (a reopen took back commits that were not
            // durable yet): read on from there, so no event is skipped.
            tracing::warn!(
                projection = name,
                from = from.get(),
                stored = stored.get(),
                "the view's stored cursor moved back; reading from it"
            );
            lane.generation.cursor = stored;
            lane.follower.seek(stored);
            return Ok(Step::Advanced);
        }
    }
    lane.generation.cursor = cursor;
    if let Some((event, error, producer)) = failure {
        tracing::error!(projection = name, position = event.position, "the projection failed: {error}");
        lane.follower.seek(cursor);
        lane.failure = Some(Failure {
            position: Position(event.position),
            stream: StreamId { type_name: event.stream_type, id: event.stream_id },
            event_type: event.event_type,
            reason: error,
            producer,
        });
    }
    Ok(Step::Advanced)
}
