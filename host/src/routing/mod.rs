//! Choreography: deliver committed events to the components that subscribe to them, and
//! the commands their reactions send to the target aggregates, exactly once in effect, in
//! order per source stream, and always to an end (API.md, Sagas).
//!
//! One subscriber per subscribing component follows the global log from a durable cursor
//! ([`subscriber`]); each source stream's events are delivered in order by a worker of
//! their own ([`delivery`]) while streams proceed independently, within a window of events
//! in flight; the cursor is one below the lowest event still in flight ([`progress`]).
//! Every routed command carries a dedup key that the target records in the same
//! transaction as the events it causes, so a redelivery (after a crash, a restart of the
//! subscriber, or an operator's rewind) gets the recorded answer and stores nothing.
//!
//! What the target refuses for ever comes back to the source stream as `CommandRejected`,
//! so sagas compensate; what may pass (overload, storage trouble) is retried for as long as
//! it lasts; what fails the same way every time is parked as a dead letter, with the later
//! events of its stream parked behind it in order (sequenced dead letters), until an
//! operator retries or discards the sequence. A supervisor restarts a subscriber whose run
//! fails (a panicking delivery task, an unreadable log) from its durable cursor, with
//! backoff, and `GET /routing` shows the restarts and the last error.

mod delivery;
mod progress;
mod subscriber;

use crate::actor::Actors;
use crate::components::{ChangeFollower, ChangeKind, ComponentRegistry, Followed};
use crate::lifecycle::{self, Backoff, FailureRecord, Part, RunResult};
use crate::store::{EventStore, Position, StoreError, StreamId, Writer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subscriber::Subscriber;
use tokio::sync::{mpsc, oneshot};

/// Settings of the router.
#[derive(Debug, Clone, Copy)]
pub struct RoutingConfig {
    /// Subscribed events in flight at once across all streams of one subscriber; bounds
    /// memory and how much is delivered again after a crash.
    pub window: usize,
    /// The most bytes of subscribed events in flight at once for one subscriber: a window
    /// counted in events alone would let 4096 events of 1 MiB each sit in memory.
    pub window_bytes: usize,
    /// Attempts at what fails the same way every time (a trapping reaction or target)
    /// before the event is parked. Overload and storage errors are retried without limit.
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest pause between restarts of a failing subscriber.
    pub max_restart_backoff: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            window: 4096,
            window_bytes: 64 << 20,
            max_attempts: 5,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(10),
        }
    }
}

/// What the layers below offer the router.
pub(crate) struct Context {
    pub actors: Actors,
    pub store: EventStore,
    pub writer: Writer,
    pub components: Arc<ComponentRegistry>,
    pub config: RoutingConfig,
    /// Tells the subscribers and their stream workers to stop.
    pub part: Part,
}

/// What a subscriber's run and its stream workers share.
pub(crate) struct SubscriberShared {
    pub context: Arc<Context>,
    pub name: String,
    pub counters: Mutex<Counters>,
    /// Streams with parked events, each with its first parked position. Loaded from the
    /// store at every run's start; a worker adds its stream after the letter is durable.
    pub parked: Mutex<BTreeMap<StreamId, Position>>,
}

impl FailureRecord for SubscriberShared {
    fn record_failure(&self, error: &str) {
        let mut counters = self.counters.lock().expect("counters lock");
        counters.restarts += 1;
        counters.last_error = Some(error.to_owned());
        counters.last_error_at = Some(crate::time::rfc3339_micros(crate::time::now_micros()));
        counters.in_flight = 0;
    }
}

/// Live figures of a subscriber, as `GET /routing` shows them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// Every event at or below this position has been handled (durably recorded).
    pub cursor: Position,
    /// Subscribed events being delivered now.
    pub in_flight: u64,
    pub delivered_commands: u64,
    /// Deliveries the target had already seen: deduplicated, no second effect.
    pub duplicates_ignored: u64,
    /// Commands the target refused, handed back to their source as `CommandRejected`
    /// (a redelivery after a restart hands back again: its second effect is deduplicated).
    pub handed_back: u64,
    /// Attempts that met an overloaded target or a storage error and were retried.
    pub transient_retries: u64,
    /// Events parked since the host started (a retry that fails again counts again).
    pub parked: u64,
    /// Parked events delivered by a retry, and dropped by a discard, since the host started.
    pub retried: u64,
    pub discarded: u64,
    /// How often the subscriber was restarted after a failure, and the last failure.
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The answer to a retry or discard: each stream with the number of events released.
pub(crate) type SequenceReply = oneshot::Sender<Vec<(StreamId, u64)>>;

/// An operator's request to a running subscriber.
pub(crate) enum Control {
    /// Move the cursor; answered once it is stored.
    Rewind(Position, oneshot::Sender<()>),
    /// Deliver the parked sequence of a stream (or of every parked stream) again.
    Retry(Option<StreamId>, SequenceReply),
    /// Drop the parked sequence of a stream (or of every parked stream).
    Discard(Option<StreamId>, SequenceReply),
}

/// A subscriber as `GET /routing` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStatus {
    pub name: String,
    pub subscriptions: Vec<SubscriptionJson>,
    pub head_position: Position,
    /// Events in the log not yet handled by this subscriber.
    pub lag: u64,
    /// Dead letters now kept, and the streams they hold back.
    pub dead_letters: u64,
    pub parked_streams: u64,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionJson {
    pub source_type: String,
    pub event_types: Vec<String>,
    /// Only events caused by commands this component's saga steps sent reach it.
    pub replies_only: bool,
}

/// What a retry or discard did to one stream's parked sequence.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceAction {
    pub subscriber: String,
    pub stream: StreamId,
    /// Events released for delivery (retry) or dropped (discard).
    pub events: u64,
}

struct Handle {
    shared: Arc<SubscriberShared>,
    controls: mpsc::UnboundedSender<Control>,
}

/// Why a routing request could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("no subscriber named {0:?}")]
    UnknownSubscriber(String),
    #[error("the subscriber {0:?} restarted before it answered; try again")]
    Interrupted(String),
    /// In a cluster, the routing runs on another host now: ask it (`GET /cluster` names it).
    #[error(
        "the routing runs on another host of the cluster: send this to the node that GET /cluster shows running it"
    )]
    Elsewhere,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running subscribers.
pub struct Routing {
    context: Arc<Context>,
    handles: Mutex<Vec<Handle>>,
    /// Where subscribers run: their reactions are guest calls, so they live on the guest
    /// threads, never on the threads that serve HTTP.
    runtime: tokio::runtime::Handle,
}

impl Routing {
    /// Start one subscriber per active component that subscribes to anything, and follow
    /// the registry: a component deployed later that subscribes gets its subscriber.
    pub fn start(
        actors: Actors,
        store: EventStore,
        writer: Writer,
        components: Arc<ComponentRegistry>,
        config: RoutingConfig,
        runtime: tokio::runtime::Handle,
        part: Part,
    ) -> Arc<Routing> {
        let follower = components.follow("router");
        let context = Arc::new(Context { actors, store, writer, components, config, part });
        let routing = Arc::new(Routing { context, handles: Mutex::new(Vec::new()), runtime });
        let mut names: Vec<String> = routing
            .context
            .components
            .all_active()
            .into_iter()
            .filter(|(_, active)| !active.component.info().subscriptions.is_empty())
            .map(|(name, _)| name)
            .collect();
        names.sort();
        for name in names {
            routing.spawn(name);
        }
        let part = routing.context.part.clone();
        part.tracker().spawn(routing.clone().follow_components(follower));
        routing
    }

    /// Take each change of the registry as it comes, until the host stops.
    async fn follow_components(self: Arc<Self>, mut follower: ChangeFollower) {
        while let Some(followed) = follower.next(self.context.part.token()).await {
            match followed {
                Followed::Change(change) => {
                    if change.kind != ChangeKind::Deleted {
                        self.ensure_subscriber(&change.name);
                    }
                    follower.applied(&change, Ok(()));
                }
                Followed::Missed => {
                    for (name, _) in self.context.components.all_active() {
                        self.ensure_subscriber(&name);
                    }
                }
            }
        }
    }

    /// Start a subscriber for a component deployed after start-up, if it subscribes to
    /// anything and has none yet. (A new version of a running one is picked up by its
    /// subscriber at its next event.)
    fn ensure_subscriber(&self, name: &str) {
        let subscribes = self
            .context
            .components
            .active(name)
            .is_some_and(|a| !a.component.info().subscriptions.is_empty());
        let running = self.handles.lock().expect("routing lock").iter().any(|h| h.shared.name == name);
        if subscribes && !running && !self.context.part.is_stopping() {
            self.spawn(name.to_owned());
        }
    }

    fn spawn(&self, name: String) {
        let shared = Arc::new(SubscriberShared {
            context: self.context.clone(),
            name,
            counters: Mutex::new(Counters::default()),
            parked: Mutex::new(BTreeMap::new()),
        });
        let (controls, receiver) = mpsc::unbounded_channel();
        self.context.part.tracker().spawn_on(subscriber_task(shared.clone(), receiver), &self.runtime);
        self.handles.lock().expect("routing lock").push(Handle { shared, controls });
    }

    /// Every subscriber with its cursor, lag, counters and dead letters.
    pub async fn status(&self) -> Result<Vec<SubscriberStatus>, StoreError> {
        let head = self.context.store.head_position();
        let shared: Vec<_> =
            self.handles.lock().expect("routing lock").iter().map(|h| h.shared.clone()).collect();
        let mut statuses = Vec::with_capacity(shared.len());
        for shared in shared {
            let dead_letters = self.context.store.dead_letter_count(&shared.name).await?;
            let parked_streams = shared.parked.lock().expect("parked lock").len() as u64;
            let subscriptions = self
                .context
                .components
                .active(&shared.name)
                .map(|active| {
                    active
                        .component
                        .info()
                        .subscriptions
                        .iter()
                        .map(|s| SubscriptionJson {
                            source_type: s.source_type.clone(),
                            event_types: s.event_types.clone(),
                            replies_only: s.replies_only,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let counters = shared.counters.lock().expect("counters lock").clone();
            statuses.push(SubscriberStatus {
                name: shared.name.clone(),
                subscriptions,
                head_position: head,
                lag: head.saturating_sub(counters.cursor),
                dead_letters,
                parked_streams,
                counters,
            });
        }
        Ok(statuses)
    }

    fn controls_of(&self, name: &str) -> Result<mpsc::UnboundedSender<Control>, RoutingError> {
        if !self.context.part.may_run() {
            return Err(RoutingError::Elsewhere);
        }
        let handles = self.handles.lock().expect("routing lock");
        handles
            .iter()
            .find(|h| h.shared.name == name)
            .map(|h| h.controls.clone())
            .ok_or_else(|| RoutingError::UnknownSubscriber(name.to_owned()))
    }

    /// Every subscriber's name.
    pub fn subscribers(&self) -> Vec<String> {
        self.handles.lock().expect("routing lock").iter().map(|h| h.shared.name.clone()).collect()
    }

    /// Move a subscriber's cursor back (or forward) to `position`: the events after it are
    /// delivered again. Effects are deduplicated, so a rewind re-runs nothing twice; it is
    /// how an operator redelivers history, e.g. through a changed `react`.
    /// Answers once the new cursor is stored.
    pub async fn rewind(&self, name: &str, position: Position) -> Result<(), RoutingError> {
        let (done, stored) = oneshot::channel();
        self.controls_of(name)?
            .send(Control::Rewind(position, done))
            .map_err(|_| RoutingError::Interrupted(name.to_owned()))?;
        stored.await.map_err(|_| RoutingError::Interrupted(name.to_owned()))
    }

    /// Deliver parked sequences again, in order: of `stream`, of every stream of
    /// `subscriber`, or of every subscriber. Answers what was released once each stream's
    /// worker has reached it; delivery goes on in the background.
    pub async fn retry(
        &self,
        subscriber: Option<&str>,
        stream: Option<&StreamId>,
    ) -> Result<Vec<SequenceAction>, RoutingError> {
        self.to_sequences(subscriber, stream, Control::Retry).await
    }

    /// Drop parked sequences on purpose: of `stream` or of every stream of `subscriber`.
    pub async fn discard(
        &self,
        subscriber: &str,
        stream: Option<&StreamId>,
    ) -> Result<Vec<SequenceAction>, RoutingError> {
        self.to_sequences(Some(subscriber), stream, Control::Discard).await
    }

    async fn to_sequences(
        &self,
        subscriber: Option<&str>,
        stream: Option<&StreamId>,
        control: fn(Option<StreamId>, SequenceReply) -> Control,
    ) -> Result<Vec<SequenceAction>, RoutingError> {
        let names = match subscriber {
            Some(name) => vec![name.to_owned()],
            None => self.subscribers(),
        };
        let mut actions = Vec::new();
        for name in names {
            let (reply, answer) = oneshot::channel();
            self.controls_of(&name)?
                .send(control(stream.cloned(), reply))
                .map_err(|_| RoutingError::Interrupted(name.clone()))?;
            let counts = answer.await.map_err(|_| RoutingError::Interrupted(name.clone()))?;
            actions.extend(counts.into_iter().map(|(stream, events)| SequenceAction {
                subscriber: name.clone(),
                stream,
                events,
            }));
        }
        Ok(actions)
    }

    /// Stop every subscriber (mid-delivery is fine: the cursor has not moved past it).
    pub async fn shutdown(&self) {
        self.context.part.stop().await;
    }
}

/// Run a subscriber, and run it again from its durable cursor whenever a run fails,
/// waiting longer after each failure that comes soon after the last.
async fn subscriber_task(shared: Arc<SubscriberShared>, controls: mpsc::UnboundedReceiver<Control>) {
    let context = shared.context.clone();
    // Each run borrows the controls; a run that panics drops its guard, not the channel.
    let controls = Arc::new(tokio::sync::Mutex::new(controls));
    let backoff = Backoff::new(context.config.first_backoff, context.config.max_restart_backoff);
    let name = format!("the subscriber {}", shared.name);
    lifecycle::supervise(&name, backoff, &*shared, &context.part, || {
        run_once(shared.clone(), controls.clone())
    })
    .await;
}

/// One run: from the durable cursor and the stored parked streams.
async fn run_once(
    shared: Arc<SubscriberShared>,
    controls: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Control>>>,
) -> RunResult {
    let mut controls = controls.lock().await;
    let store = &shared.context.store;
    let start = async {
        let cursor = store.cursor(&crate::store::reaction_cursor(&shared.name)).await?;
        Ok::<_, crate::store::StoreError>((cursor, store.parked_streams(&shared.name).await?))
    };
    let (cursor, parked) = match start.await {
        Ok(start) => start,
        Err(error) => return Err(lifecycle::RunFailed(format!("cannot read the cursor: {error}"))),
    };
    *shared.parked.lock().expect("parked lock") = parked;
    shared.counters.lock().expect("counters lock").cursor = cursor;
    Subscriber::new(shared.clone(), cursor).run(&mut controls).await
}
