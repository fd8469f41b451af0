//! Choreography: deliver committed events to the components that subscribe to them, and
//! the commands their reactions send to the target aggregates, exactly once in effect.
//!
//! One subscriber task per subscribing component follows the global log from a durable
//! cursor. It reads a chunk of the log, groups the subscribed events by source stream,
//! and delivers each group in order while different streams proceed concurrently; once
//! every effect of the chunk is committed, the cursor moves past it. A crash before that
//! redelivers the chunk, which is harmless: every routed command carries a dedup key
//! (`<position>:<index>`, the triggering event and the command's place in the reaction),
//! and the target actor records it in the same transaction as the events it causes, so a
//! redelivery gets the recorded outcome and stores nothing.
//!
//! A command the target rejects is handed back to the stream whose event caused it, as
//! the host command `CommandRejected` (deduplicated the same way): that is how a transfer
//! to a missing account gets compensated. A reaction that traps, or a target that stays
//! overloaded, is retried with backoff; after the last attempt the delivery is parked as
//! a dead letter (`GET /routing/dead-letters`) and the subscriber goes on.

mod subscriber;

use crate::actor::Actors;
use crate::components::ComponentRegistry;
use crate::store::{EventStore, Position, StoreError, Writer};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subscriber::Subscriber;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Settings of the router.
#[derive(Debug, Clone, Copy)]
pub struct RoutingConfig {
    /// Log events read and delivered per step; bounds how many streams run at once and
    /// how much is redelivered after a crash.
    pub chunk: usize,
    /// Attempts per delivery before it is parked.
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            chunk: 256,
            max_attempts: 8,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
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
    pub shutdown: watch::Receiver<bool>,
}

/// A subscriber as `GET /routing` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStatus {
    pub name: String,
    pub subscriptions: Vec<SubscriptionJson>,
    /// Every event at or below this position has been handled.
    pub cursor: Position,
    pub head_position: Position,
    /// Events in the log not yet handled by this subscriber.
    pub lag: u64,
    pub delivered_commands: u64,
    /// Deliveries the target had already seen: deduplicated, no second effect.
    pub duplicates_ignored: u64,
    pub parked: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionJson {
    pub source_type: String,
    pub event_types: Vec<String>,
}

/// Live counters a subscriber task updates.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub cursor: Position,
    pub delivered_commands: u64,
    pub duplicates_ignored: u64,
    pub parked: u64,
}

/// A request to move a subscriber's cursor, answered once it is stored.
pub(crate) type Rewind = (Position, oneshot::Sender<()>);

struct Handle {
    name: String,
    counters: Arc<Mutex<Counters>>,
    rewind: mpsc::UnboundedSender<Rewind>,
    task: Option<JoinHandle<()>>,
}

/// Why a routing request could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("no subscriber named {0:?}")]
    UnknownSubscriber(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running subscribers.
pub struct Routing {
    context: Arc<Context>,
    handles: Mutex<Vec<Handle>>,
    stop: watch::Sender<bool>,
}

/// The durable cursor's name for a subscriber.
pub(crate) fn cursor_name(subscriber: &str) -> String {
    format!("reactions/{subscriber}")
}

impl Routing {
    /// Start one subscriber per active component that subscribes to anything.
    pub fn start(
        actors: Actors,
        store: EventStore,
        writer: Writer,
        components: Arc<ComponentRegistry>,
        config: RoutingConfig,
    ) -> Result<Routing, StoreError> {
        let (stop, shutdown) = watch::channel(false);
        let context = Arc::new(Context { actors, store, writer, components, config, shutdown });
        let routing = Routing { context, handles: Mutex::new(Vec::new()), stop };
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
            routing.spawn(name)?;
        }
        Ok(routing)
    }

    /// Start a subscriber for a component deployed after start-up, if it subscribes to
    /// anything and has none yet. (A new version of a running one is picked up by its
    /// subscriber at its next chunk.)
    pub fn ensure_subscriber(&self, name: &str) -> Result<(), StoreError> {
        let subscribes = self
            .context
            .components
            .active(name)
            .is_some_and(|a| !a.component.info().subscriptions.is_empty());
        let running = self.handles.lock().expect("routing lock").iter().any(|h| h.name == name);
        if subscribes && !running && !*self.stop.borrow() {
            self.spawn(name.to_owned())?;
        }
        Ok(())
    }

    fn spawn(&self, name: String) -> Result<(), StoreError> {
        let cursor = self.context.store.cursor(&cursor_name(&name))?;
        let counters = Arc::new(Mutex::new(Counters { cursor, ..Counters::default() }));
        let (rewind, rewinds) = mpsc::unbounded_channel();
        let subscriber =
            Subscriber::new(self.context.clone(), name.clone(), cursor, counters.clone(), rewinds);
        let task = tokio::spawn(subscriber.run());
        self.handles.lock().expect("routing lock").push(Handle { name, counters, rewind, task: Some(task) });
        Ok(())
    }

    /// Every subscriber with its cursor and lag.
    pub fn status(&self) -> Vec<SubscriberStatus> {
        let head = self.context.store.head_position();
        let handles = self.handles.lock().expect("routing lock");
        handles
            .iter()
            .map(|handle| {
                let counters = handle.counters.lock().expect("counters lock");
                let subscriptions = self
                    .context
                    .components
                    .active(&handle.name)
                    .map(|active| {
                        active
                            .component
                            .info()
                            .subscriptions
                            .iter()
                            .map(|s| SubscriptionJson {
                                source_type: s.source_type.clone(),
                                event_types: s.event_types.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                SubscriberStatus {
                    name: handle.name.clone(),
                    subscriptions,
                    cursor: counters.cursor,
                    head_position: head,
                    lag: head.saturating_sub(counters.cursor),
                    delivered_commands: counters.delivered_commands,
                    duplicates_ignored: counters.duplicates_ignored,
                    parked: counters.parked,
                }
            })
            .collect()
    }

    /// Move a subscriber's cursor back (or forward) to `position`: the events after it are
    /// delivered again. Effects are deduplicated, so a rewind re-runs nothing twice; it is
    /// how an operator redelivers after fixing a parked delivery's cause.
    /// Answers once the new cursor is stored (after the chunk in flight, if any).
    pub async fn rewind(&self, name: &str, position: Position) -> Result<(), RoutingError> {
        let (done, stored) = oneshot::channel();
        {
            let handles = self.handles.lock().expect("routing lock");
            let handle = handles
                .iter()
                .find(|h| h.name == name)
                .ok_or_else(|| RoutingError::UnknownSubscriber(name.to_owned()))?;
            handle.rewind.send((position, done)).map_err(|_| StoreError::Closed)?;
        }
        stored.await.map_err(|_| StoreError::Closed)?;
        Ok(())
    }

    /// Stop every subscriber (mid-chunk is fine: the cursor has not moved past it).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> =
            self.handles.lock().expect("routing lock").iter_mut().filter_map(|h| h.task.take()).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}
