//! Actors: one tokio task per live aggregate instance, the only writer of its stream.
//!
//! Commands reach an actor through a bounded mailbox. The actor takes every command
//! waiting in its mailbox as one batch, decides each against its in-memory state (calling
//! the component), and hands the batch's events to the store's writer in one append; it
//! answers each command once that append is durable. While a commit is in flight, new
//! commands queue in the mailbox and form the next batch, so one hot aggregate is not
//! limited to one fsync per command.
//!
//! There are no locks on streams anywhere else: the mailbox registry only maps a stream
//! to its mailbox. Sends into mailboxes happen under the registry lock, which is what
//! lets an idle actor passivate safely (it removes itself under that lock only when its
//! mailbox is empty, so no command can slip into a mailbox nobody reads).

mod instance;
mod messages;

pub use instance::{INTERNAL_COMMAND, snapshot_interval};
pub use messages::{Causation, CommandError, CommandReply, CommandRequest, StateReply};

use crate::cluster::Cluster;
use crate::components::ComponentRegistry;
use crate::lifecycle::Part;
use crate::store::{EventStore, Fence, StreamId, Writer};
use messages::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Settings of the actor layer.
#[derive(Debug, Clone, Copy)]
pub struct ActorConfig {
    /// Commands an actor's mailbox holds; a full mailbox answers "overloaded" at once.
    pub mailbox_capacity: usize,
    /// Commands decided together and appended in one batch.
    pub max_batch: usize,
    /// An actor with nothing to do for this long stops; it comes back from snapshot + events.
    pub idle_timeout: Duration,
    /// Snapshot interval when a component does not set one.
    pub default_snapshot_interval: u32,
    /// Live actors kept in memory; beyond it the least recently used idle ones passivate.
    pub max_live_actors: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            mailbox_capacity: 1024,
            max_batch: 256,
            idle_timeout: Duration::from_secs(60),
            default_snapshot_interval: 100,
            max_live_actors: 10_000,
        }
    }
}

/// Whether a stream's actor starts where the one before it died (a host defect) and may have
/// left batches with the writer that have not landed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    Yes,
    No,
}

/// The actor system: routes commands and state queries to the actor of their stream.
#[derive(Clone)]
pub struct Actors {
    shared: Arc<Shared>,
}

/// A live actor's mailbox; `generation` tells a passivating actor the entry is its own.
struct Mailbox {
    generation: u64,
    sender: mpsc::Sender<Message>,
    /// The partition lease the actor runs under, in a cluster.
    fence: Option<Fence>,
    /// When a message was last sent to it, for least-recently-used passivation.
    last_used: Instant,
}

/// How often the registry may look for actors to passivate when over its cap: a look is a
/// pass over every mailbox, so it is rationed, which makes the cap a soft one.
const EVICTION_PAUSE: Duration = Duration::from_millis(100);

pub(crate) struct Shared {
    mailboxes: Mutex<HashMap<StreamId, Mailbox>>,
    /// When the registry last asked actors to passivate for being over the cap.
    last_eviction: Mutex<Option<Instant>>,
    generations: AtomicU64,
    /// Stopping means taking no more commands; its tracker knows when every actor has ended.
    part: Part,
    pub(crate) store: EventStore,
    pub(crate) writer: Writer,
    pub(crate) components: Arc<ComponentRegistry>,
    pub(crate) config: ActorConfig,
    /// Where actors run: guest calls happen inside an actor's batch, so actors live on the
    /// guest threads, never on the threads that serve HTTP.
    runtime: tokio::runtime::Handle,
    /// In a cluster: which streams this host may run actors of.
    cluster: Option<Arc<Cluster>>,
}

impl Actors {
    /// Actors that run on `runtime` (the guest threads).
    pub fn new(
        store: EventStore,
        writer: Writer,
        components: Arc<ComponentRegistry>,
        config: ActorConfig,
        runtime: tokio::runtime::Handle,
        part: Part,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        let actors = Actors {
            shared: Arc::new(Shared {
                mailboxes: Mutex::new(HashMap::new()),
                last_eviction: Mutex::new(None),
                generations: AtomicU64::new(0),
                part,
                store,
                writer,
                components,
                config,
                runtime,
                cluster,
            }),
        };
        actors.retire_on_lease_changes();
        actors
    }

    /// In a cluster: whenever the partitions this host holds change, the actors of those it
    /// no longer holds at the same epoch stop (they drain their mailboxes, whose commands the
    /// writer then refuses), so the next command of such a stream finds its owner afresh.
    fn retire_on_lease_changes(&self) {
        let Some(cluster) = self.shared.cluster.clone() else { return };
        let mut changes = cluster.changes();
        let shared = self.shared.clone();
        let token = shared.part.token().clone();
        let tracker = shared.part.tracker().clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let mut mailboxes = shared.mailboxes.lock().expect("mailbox registry lock");
                let before = mailboxes.len();
                mailboxes.retain(|stream, mailbox| mailbox.fence == cluster.fence(stream));
                let retired = before - mailboxes.len();
                if retired > 0 {
                    tracing::info!(retired, "stopped the actors of partitions this host no longer holds");
                }
            }
        });
    }

    /// In a cluster: whether this host runs `stream`'s actor (else its requests go to the
    /// owner, see [`crate::cluster`]).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    /// Send a command to the aggregate instance `stream` and wait for its answer, which
    /// comes only after the events it caused are durable.
    pub async fn send(
        &self,
        stream: StreamId,
        request: CommandRequest,
    ) -> Result<CommandReply, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(stream, Message::Command(request, reply))?;
        answer.await.map_err(|_| self.lost_reply())?
    }

    /// The current state of `stream`, through its actor (which holds it in memory).
    pub async fn state(&self, stream: StreamId) -> Result<StateReply, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(stream, Message::State(reply))?;
        answer.await.map_err(|_| self.lost_reply())?
    }

    /// Why a message was dropped unanswered: an actor only does that when it ends without
    /// draining its mailbox, which while the host is accepting means it panicked.
    fn lost_reply(&self) -> CommandError {
        if !self.shared.part.is_stopping() { CommandError::ActorFailed } else { CommandError::ShuttingDown }
    }

    fn enqueue(&self, stream: StreamId, message: Message) -> Result<(), CommandError> {
        if self.shared.part.is_stopping() {
            return Err(CommandError::ShuttingDown);
        }
        if self.shared.components.active(&stream.type_name).is_none() {
            return Err(CommandError::UnknownType(stream.type_name));
        }
        let mut mailboxes = self.shared.mailboxes.lock().expect("mailbox registry lock");
        let message = match mailboxes.get_mut(&stream) {
            None => message,
            Some(mailbox) => match mailbox.sender.try_send(message) {
                Ok(()) => {
                    mailbox.last_used = Instant::now();
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(CommandError::Overloaded),
                // The actor died (a host defect); start a fresh one for this stream, which
                // first lets the batches it left with the writer land.
                Err(mpsc::error::TrySendError::Closed(message)) => {
                    let mailbox = self.spawn_actor(stream.clone(), AfterFailure::Yes)?;
                    mailbox.sender.try_send(message).map_err(|_| CommandError::Overloaded)?;
                    mailboxes.insert(stream, mailbox);
                    return Ok(());
                }
            },
        };
        let mailbox = self.spawn_actor(stream.clone(), AfterFailure::No)?;
        mailbox.sender.try_send(message).map_err(|_| CommandError::Overloaded)?;
        mailboxes.insert(stream, mailbox);
        if mailboxes.len() > self.shared.config.max_live_actors {
            self.shared.evict_least_recently_used(&mailboxes);
        }
        Ok(())
    }

    fn spawn_actor(&self, stream: StreamId, after: AfterFailure) -> Result<Mailbox, CommandError> {
        self.shared.spawn_actor(stream, after)
    }

    /// Number of live actors.
    pub fn live(&self) -> usize {
        self.shared.mailboxes.lock().expect("mailbox registry lock").len()
    }

    /// Messages waiting in mailboxes: in all of them, and in the fullest one.
    pub fn queued(&self) -> (usize, usize) {
        let mailboxes = self.shared.mailboxes.lock().expect("mailbox registry lock");
        let capacity = self.shared.config.mailbox_capacity;
        mailboxes
            .values()
            .map(|m| capacity - m.sender.capacity())
            .fold((0, 0), |(sum, max), depth| (sum + depth, max.max(depth)))
    }

    /// Stop taking commands, let every actor finish what is in its mailbox, and wait.
    pub async fn shutdown(&self) {
        self.shared.part.token().cancel();
        // Dropping the senders closes each mailbox: its actor drains it, then stops. No actor
        // starts after this: one is only started under this lock, and not once stopping.
        self.shared.mailboxes.lock().expect("mailbox registry lock").clear();
        self.shared.part.stop().await;
    }
}

impl Shared {
    /// Called under the registry lock only.
    fn spawn_actor(self: &Arc<Self>, stream: StreamId, after: AfterFailure) -> Result<Mailbox, CommandError> {
        if self.part.is_stopping() {
            return Err(CommandError::ShuttingDown);
        }
        let fence = match &self.cluster {
            None => None,
            Some(cluster) => Some(
                cluster.fence(&stream).ok_or_else(|| CommandError::NotHere(cluster.partition_of(&stream)))?,
            ),
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let (sender, inbox) = mpsc::channel(self.config.mailbox_capacity);
        let actor = instance::run(self.clone(), stream, generation, inbox, after, fence);
        self.part.tracker().spawn_on(actor, &self.runtime);
        Ok(Mailbox { generation, sender, fence, last_used: Instant::now() })
    }

    /// An actor that panicked hands over: the messages that reached its mailbox after the
    /// panic (none of them was looked at) go to a fresh actor of the stream, which first
    /// lets the dead one's commits land. Without it, a caller answered 500 that retried at
    /// once could land in the dying mailbox and lose its command too.
    pub(crate) fn replace_failed(
        self: &Arc<Self>,
        stream: &StreamId,
        generation: u64,
        inbox: &mut mpsc::Receiver<Message>,
    ) {
        let mut mailboxes = self.mailboxes.lock().expect("mailbox registry lock");
        // Under the registry lock no one can send to this mailbox any more.
        inbox.close();
        let mut leftovers = Vec::new();
        while let Ok(message) = inbox.try_recv() {
            leftovers.push(message);
        }
        let ours = mailboxes.get(stream).is_some_and(|mailbox| mailbox.generation == generation);
        if !ours {
            // Already replaced (a sender found it closed first): fail what is left.
            drop(mailboxes);
            for message in leftovers {
                message.fail(CommandError::ActorFailed);
            }
            return;
        }
        mailboxes.remove(stream);
        if self.part.is_stopping() {
            drop(mailboxes);
            for message in leftovers {
                message.fail(CommandError::ShuttingDown);
            }
            return;
        }
        // A fresh actor even with nothing waiting: whoever comes next must meet one that lets
        // the dead one's commits land first, not one that reads the stream behind them.
        match self.spawn_actor(stream.clone(), AfterFailure::Yes) {
            Ok(mailbox) => {
                for message in leftovers {
                    if let Err(
                        mpsc::error::TrySendError::Full(message) | mpsc::error::TrySendError::Closed(message),
                    ) = mailbox.sender.try_send(message)
                    {
                        message.fail(CommandError::Overloaded);
                    }
                }
                mailboxes.insert(stream.clone(), mailbox);
            }
            Err(error) => {
                drop(mailboxes);
                for message in leftovers {
                    message.fail(error.duplicate());
                }
            }
        }
    }

    /// Ask the least recently used actors to passivate, down to nine tenths of the cap.
    /// Each stops only if its mailbox is empty when it reads the request, through the same
    /// path as an idle timeout, so a stream never has two actors.
    fn evict_least_recently_used(&self, mailboxes: &HashMap<StreamId, Mailbox>) {
        let mut last = self.last_eviction.lock().expect("eviction lock");
        if last.is_some_and(|at| at.elapsed() < EVICTION_PAUSE) {
            return;
        }
        *last = Some(Instant::now());
        let cap = self.config.max_live_actors;
        let excess = mailboxes.len().saturating_sub(cap - cap / 10);
        let mut by_use: Vec<(Instant, &Mailbox)> = mailboxes.values().map(|m| (m.last_used, m)).collect();
        if excess < by_use.len() {
            by_use.select_nth_unstable_by_key(excess, |(used, _)| *used);
        }
        // A full mailbox belongs to a busy actor: it is left alone, and not counted.
        let asked = by_use
            .into_iter()
            .take(excess)
            .filter(|(_, mailbox)| mailbox.sender.try_send(Message::Passivate).is_ok())
            .count();
        crate::telemetry::actors_asked_to_passivate(asked);
    }

    /// Remove an idle actor's mailbox, unless a command arrived meanwhile. Called by the
    /// actor itself; `true` means it must stop.
    fn passivate(&self, stream: &StreamId, generation: u64, inbox: &mpsc::Receiver<Message>) -> bool {
        let mut mailboxes = self.mailboxes.lock().expect("mailbox registry lock");
        if !inbox.is_empty() {
            return false;
        }
        if mailboxes.get(stream).is_some_and(|mailbox| mailbox.generation == generation) {
            mailboxes.remove(stream);
        }
        true
    }
}
