//! One actor: the loop that owns a stream's state and decides its commands.

use super::Shared;
use super::messages::{CommandError, CommandReply, CommandRequest, Message, StateReply};
use crate::components::ActiveAggregate;
use crate::replay::replay;
use crate::runtime::Executed;
use crate::store::{
    AppendBatch, AppendError, Committed, IDEMPOTENCY_PREFIX, NewEvent, Receipt, Snapshot, StoreError,
    StoredEvent, StoredOutcome, StreamId, Version,
};
use cairn_guest::Rejection;
use cairn_guest::glue::RawCommand;
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<CommandReply, CommandError>>;

pub(super) async fn run(
    shared: Arc<Shared>,
    stream: StreamId,
    generation: u64,
    mut inbox: mpsc::Receiver<Message>,
    _done: mpsc::Sender<()>,
) {
    let mut actor = Actor {
        shared: shared.clone(),
        stream,
        loaded: None,
        committed: None,
        in_flight: VecDeque::new(),
        in_flight_keys: HashSet::new(),
    };
    let idle = shared.config.idle_timeout;
    loop {
        let message = if actor.in_flight.is_empty() {
            match tokio::time::timeout(idle, inbox.recv()).await {
                Ok(message) => message,
                Err(_) if shared.passivate(&actor.stream, generation, &inbox) => break,
                Err(_) => continue,
            }
        } else {
            // Batches are committing: answer each as its commit lands, and decide the next
            // commands meanwhile, up to MAX_IN_FLIGHT batches ahead of the log.
            let room = actor.in_flight.len() < MAX_IN_FLIGHT;
            let front = actor.in_flight.front_mut().expect("a batch in flight");
            tokio::select! {
                biased;
                result = &mut front.receipt => {
                    actor.settle(result);
                    continue;
                }
                message = inbox.recv(), if room => message,
            }
        };
        let Some(first) = message else {
            // Every sender is gone: the host is shutting down and the mailbox is drained.
            // Answer what is still committing, then stop.
            if let Err(panic) = caught(actor.drain()).await {
                return stop(&mut inbox, &actor.stream, panic);
            }
            break;
        };
        if matches!(first, Message::Passivate) {
            // Stopping would drop the answers of what is committing: settle it first.
            if let Err(panic) = caught(actor.drain()).await {
                return stop(&mut inbox, &actor.stream, panic);
            }
            if shared.passivate(&actor.stream, generation, &inbox) {
                break;
            }
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < shared.config.max_batch {
            match inbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        if let Err(panic) = caught(actor.handle(batch)).await {
            return stop(&mut inbox, &actor.stream, panic);
        }
    }
    tracing::trace!(stream = %actor.stream, "actor stopped");
}

/// Batches an actor may have committing at once while it decides the next.
const MAX_IN_FLIGHT: usize = 4;

/// Run actor work, catching a panic (a host defect).
async fn caught(work: impl Future<Output = ()>) -> Result<(), Box<dyn std::any::Any + Send>> {
    AssertUnwindSafe(work).catch_unwind().await
}

/// After a panic: the callers of the batches it held learn it (their replies are dropped:
/// 500 `internal_error`), and this actor ends, dropping its mailbox, so the next command to
/// the stream starts a fresh actor from the store.
fn stop(inbox: &mut mpsc::Receiver<Message>, stream: &StreamId, panic: Box<dyn std::any::Any + Send>) {
    // Close first: a caller answered 500 may retry at once, and its retry must find the
    // mailbox closed (and start a fresh actor), not wait in this dying one.
    inbox.close();
    let message = super::panic_message(panic);
    tracing::error!(stream = %stream, "the actor panicked and stops: {message}");
}

/// A stream's state rebuilt from its snapshot (if one of this version) and events.
struct Rebuilt {
    state: Option<Vec<u8>>,
    version: Version,
    /// Events folded on top of the snapshot.
    folded: u64,
    /// The stream's newest snapshot was made by another version.
    stale_snapshot: bool,
}

/// The state an actor holds in memory, built by one component version.
struct Loaded {
    component: Arc<ActiveAggregate>,
    state: Option<Vec<u8>>,
    version: Version,
}

struct Actor {
    shared: Arc<Shared>,
    stream: StreamId,
    /// The state after every command decided so far, committed or still committing.
    loaded: Option<Loaded>,
    /// The version and state as of the last commit that landed: what a state read sees.
    committed: Option<(Version, Option<Vec<u8>>)>,
    /// Batches submitted to the writer and not yet answered, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The outcome keys those batches record.
    in_flight_keys: HashSet<String>,
}

/// A decided batch that is committing. Its answers wait for its commit, and so do those
/// of a batch that writes nothing: they were decided on state the batches before it
/// make, which holds only if those commit.
struct InFlight {
    receipt: Receipt,
    answers: Vec<(Answer, Reply)>,
    base_version: Version,
    wrote: bool,
    version_after: Version,
    state_after: Option<Vec<u8>>,
    keys: Vec<String>,
}

/// How a decided command will be answered once its batch is committed.
enum Answer {
    Accepted {
        first_version: Version,
        count: u64,
        version: Version,
    },
    Rejected(Rejection),
    /// The same idempotency key appeared earlier in this batch: the same answer.
    SameAs(usize),
}

/// Commands decided since the last commit, and what they will be answered.
struct Pending {
    base_version: Version,
    events: Vec<NewEvent>,
    outcomes: Vec<(String, StoredOutcome)>,
    answers: Vec<(Answer, Reply)>,
    keys: HashMap<String, usize>,
}

impl Pending {
    fn at(base_version: Version) -> Self {
        Pending {
            base_version,
            events: Vec::new(),
            outcomes: Vec::new(),
            answers: Vec::new(),
            keys: HashMap::new(),
        }
    }
}

impl Actor {
    async fn handle(&mut self, batch: Vec<Message>) {
        if !self.in_flight.is_empty() && !self.is_current() {
            // A swap rebuilds state from the log: let the log hold everything decided first.
            self.drain().await;
        }
        if let Err(error) = self.ensure_loaded().await {
            // Nothing can be decided without state; answer everything with the cause.
            tracing::error!(stream = %self.stream, "cannot build state: {error}");
            for message in batch {
                message.fail(error.duplicate());
            }
            return;
        }
        let mut pending = Pending::at(self.loaded.as_ref().map_or(0, |l| l.version));
        for message in batch {
            if self.loaded.is_none() {
                // A failed append dropped the state; it is rebuilt with the next batch.
                message.fail(self.unavailable());
                continue;
            }
            match message {
                Message::Command(request, reply) => {
                    if let Some(stall) = crate::faults::actor_stall(&request.command_type) {
                        tokio::time::sleep(stall).await;
                    }
                    if outcome_key(&request).is_some_and(|key| self.in_flight_keys.contains(&key)) {
                        // A retry of a command still committing: its recorded answer exists
                        // only once that commit lands.
                        self.submit(std::mem::replace(&mut pending, Pending::at(0)));
                        self.drain().await;
                        let Some(loaded) = &self.loaded else {
                            let _ = reply.send(Err(self.unavailable()));
                            continue;
                        };
                        pending = Pending::at(loaded.version);
                    }
                    self.decide(request, reply, &mut pending)
                }
                Message::State(reply) => {
                    // The last committed state: a read never waits for, nor forces, a commit.
                    let answer = match &self.committed {
                        Some((version, state)) => Ok(StateReply { version: *version, state: state.clone() }),
                        None => Err(self.unavailable()),
                    };
                    let _ = reply.send(answer);
                }
                // Commands came after the nudge: this actor is in use after all.
                Message::Passivate => {}
            }
        }
        self.submit(pending);
    }

    /// The loaded state was built by the active version of the component.
    fn is_current(&self) -> bool {
        let active = self.shared.components.active(&self.stream.type_name);
        match (&self.loaded, active) {
            (Some(loaded), Some(active)) => Arc::ptr_eq(&loaded.component, &active),
            _ => false,
        }
    }

    /// The answer while the state cannot be rebuilt after a failed commit (storage trouble).
    fn unavailable(&self) -> CommandError {
        CommandError::Store(StoreError::Unavailable(format!(
            "the state of {} could not be rebuilt",
            self.stream
        )))
    }

    /// Build the state with the active component version if it is not already built by it
    /// (first use, after passivation, or after a deploy swapped the version: the swap
    /// happens here, between two batches). The fold runs off the async threads.
    async fn ensure_loaded(&mut self) -> Result<(), CommandError> {
        if self.is_current() {
            return Ok(());
        }
        let active = self
            .shared
            .components
            .active(&self.stream.type_name)
            .ok_or_else(|| CommandError::UnknownType(self.stream.type_name.clone()))?;
        self.loaded = None;
        let (store, stream, component) = (self.shared.store.clone(), self.stream.clone(), active.clone());
        let rebuilt = tokio::task::spawn_blocking(move || -> Result<Rebuilt, CommandError> {
            let digest = component.component.digest().as_bytes();
            let newest = store.load_snapshot(&stream)?;
            let stale_snapshot = newest.as_ref().is_some_and(|s| s.digest != digest);
            let (state, from) = match newest.filter(|s| s.digest == digest) {
                Some(snapshot) => (Some(snapshot.state), snapshot.version),
                None => (None, 0),
            };
            let (state, version) = replay(&component.component, &store, &stream, state, from, Version::MAX)?;
            Ok(Rebuilt { state, version, folded: version - from, stale_snapshot })
        })
        .await
        .map_err(|e| {
            CommandError::Store(StoreError::Unavailable(format!("rebuilding state failed: {e}")))
        })??;
        let interval = self.snapshot_interval(&active);
        // After a swap the stream's snapshot belongs to another version: save one of this
        // version right away (and after any long fold), so the next wake-up is cheap.
        if rebuilt.folded > 0 && (rebuilt.stale_snapshot || rebuilt.folded >= interval) {
            let snapshot = Snapshot {
                version: rebuilt.version,
                digest: active.component.digest().as_bytes().to_vec(),
                state: rebuilt.state.clone().unwrap_or_default(),
            };
            let batch = AppendBatch {
                stream: self.stream.clone(),
                expected_version: rebuilt.version,
                events: Vec::new(),
                outcomes: Vec::new(),
                snapshot: Some(snapshot),
            };
            if let Err(error) = self.shared.writer.append(batch).await {
                tracing::warn!(stream = %self.stream, "could not save the snapshot after a rebuild: {error}");
            }
        }
        self.committed = Some((rebuilt.version, rebuilt.state.clone()));
        self.loaded = Some(Loaded { component: active, state: rebuilt.state, version: rebuilt.version });
        Ok(())
    }

    /// Take a snapshot every this many events.
    fn snapshot_interval(&self, component: &ActiveAggregate) -> u64 {
        match component.component.info().snapshot_interval {
            0 => self.shared.config.default_snapshot_interval,
            n => n,
        }
        .into()
    }

    fn decide(&mut self, request: CommandRequest, reply: Reply, pending: &mut Pending) {
        let span = request.span.clone();
        let _in_command = span.enter();
        let outcome_key = outcome_key(&request);
        if let Some(key) = &outcome_key {
            if let Some(&earlier) = pending.keys.get(key) {
                pending.answers.push((Answer::SameAs(earlier), reply));
                return;
            }
            match self.shared.store.outcome(&self.stream, key) {
                Ok(Some(outcome)) => {
                    let _ = reply.send(self.recorded_answer(outcome));
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                    return;
                }
            }
        }
        let loaded = self.loaded.as_mut().expect("decide runs on loaded state");
        if let Some(expected) = request.expected_version
            && expected != loaded.version
        {
            let _ = reply.send(Err(CommandError::VersionConflict { expected, actual: loaded.version }));
            return;
        }
        crate::faults::actor_panic(&request.command_type);
        let command = RawCommand { command_type: request.command_type, payload: request.payload };
        let component = &loaded.component.component;
        let answer = match component.execute(loaded.state.as_deref(), &command) {
            Err(trap) => {
                tracing::warn!(stream = %self.stream, command = command.command_type, "guest failed: {trap}");
                let _ = reply.send(Err(trap.into()));
                return;
            }
            Ok(Err(rejection)) => {
                if let Some(key) = &outcome_key {
                    let outcome = StoredOutcome::Rejected {
                        code: rejection.code.clone(),
                        message: rejection.message.clone(),
                    };
                    pending.outcomes.push((key.clone(), outcome));
                }
                Answer::Rejected(rejection)
            }
            Ok(Ok(Executed { events, state })) => {
                let first_version = loaded.version + 1;
                let count = events.len() as u64;
                loaded.state = state;
                loaded.version += count;
                let causation_id = request.causation.as_ref().map(|c| c.causation_id.clone());
                pending.events.extend(events.into_iter().map(|e| NewEvent {
                    event_type: e.event_type,
                    payload: e.payload,
                    correlation_id: request.correlation_id.clone(),
                    causation_id: causation_id.clone(),
                    component_version: loaded.component.version,
                }));
                let version = loaded.version;
                if let Some(key) = &outcome_key {
                    pending
                        .outcomes
                        .push((key.clone(), StoredOutcome::Accepted { first_version, count, version }));
                }
                Answer::Accepted { first_version, count, version }
            }
        };
        if let Some(key) = outcome_key {
            pending.keys.insert(key, pending.answers.len());
        }
        pending.answers.push((answer, reply));
    }

    /// The answer recorded for a command seen before (its events read back from the log).
    fn recorded_answer(&self, outcome: StoredOutcome) -> Result<CommandReply, CommandError> {
        match outcome {
            StoredOutcome::Rejected { code, message } => {
                Err(CommandError::Rejected(Rejection { code, message }))
            }
            StoredOutcome::Accepted { first_version, count, version } => {
                let events = if count == 0 {
                    Vec::new()
                } else {
                    self.shared.store.read_stream_range(
                        &self.stream,
                        first_version,
                        first_version + count - 1,
                        count as usize,
                    )?
                };
                Ok(CommandReply { stream: self.stream.clone(), version, events, replayed: true })
            }
        }
    }

    /// Submit what `pending` decided to the writer; its answers go out when it commits.
    fn submit(&mut self, pending: Pending) {
        let Some(loaded) = self.loaded.as_ref() else {
            for (_, reply) in pending.answers {
                let _ = reply.send(Err(self.unavailable()));
            }
            return;
        };
        let wrote = !(pending.events.is_empty() && pending.outcomes.is_empty());
        if !wrote && self.in_flight.is_empty() {
            self.answer(pending.answers, &[], pending.base_version);
            return;
        }
        let receipt = if wrote {
            let interval = self.snapshot_interval(&loaded.component);
            let snapshot = (interval > 0 && loaded.version / interval > pending.base_version / interval)
                .then(|| Snapshot {
                    version: loaded.version,
                    digest: loaded.component.component.digest().as_bytes().to_vec(),
                    state: loaded.state.clone().unwrap_or_default(),
                });
            let batch = AppendBatch {
                stream: self.stream.clone(),
                expected_version: pending.base_version,
                events: pending.events,
                outcomes: pending.outcomes,
                snapshot,
            };
            match self.shared.writer.submit(batch) {
                Ok(receipt) => receipt,
                Err(error) => Receipt::ready(Err(error.into())),
            }
        } else {
            Receipt::ready(Ok(Committed::default()))
        };
        let keys: Vec<String> = pending.keys.into_keys().collect();
        self.in_flight_keys.extend(keys.iter().cloned());
        self.in_flight.push_back(InFlight {
            receipt,
            answers: pending.answers,
            base_version: pending.base_version,
            wrote,
            version_after: loaded.version,
            state_after: loaded.state.clone(),
            keys,
        });
    }

    /// Wait for every batch in flight and answer it.
    async fn drain(&mut self) {
        while let Some(front) = self.in_flight.front_mut() {
            let result = (&mut front.receipt).await;
            self.settle(result);
        }
    }

    /// Answer the oldest batch in flight with how its commit went.
    fn settle(&mut self, result: Result<Committed, AppendError>) {
        let batch = self.in_flight.pop_front().expect("a batch in flight");
        for key in &batch.keys {
            self.in_flight_keys.remove(key);
        }
        // An earlier batch failed: the state it counted on is gone.
        let earlier_failed = self.loaded.is_none();
        match result {
            Ok(_) if earlier_failed && !batch.wrote => {
                for (_, reply) in batch.answers {
                    let _ = reply.send(Err(self.unavailable()));
                }
            }
            Ok(committed) => {
                self.answer(batch.answers, &committed.events, batch.base_version);
                self.committed = Some((batch.version_after, batch.state_after));
            }
            Err(error) => {
                // Nothing of it was stored: forget the decided state; the next batch
                // rebuilds it from the log.
                tracing::error!(stream = %self.stream, "append failed: {error}");
                self.loaded = None;
                let message = error.to_string();
                for (_, reply) in batch.answers {
                    let error = match &error {
                        // Refused because an earlier batch stored nothing it counted on.
                        AppendError::VersionConflict { .. } if earlier_failed => {
                            CommandError::Store(StoreError::CommitFailed(message.clone()))
                        }
                        AppendError::VersionConflict { expected, actual } => {
                            CommandError::VersionConflict { expected: *expected, actual: *actual }
                        }
                        AppendError::Store(_) => {
                            CommandError::Store(StoreError::CommitFailed(message.clone()))
                        }
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    /// Send every answer of a committed batch; `stored` are its events from `base_version + 1`.
    fn answer(&self, answers: Vec<(Answer, Reply)>, stored: &[StoredEvent], base_version: Version) {
        let mut made: Vec<Result<CommandReply, Rejection>> = Vec::with_capacity(answers.len());
        for (answer, reply) in answers {
            let result = match answer {
                Answer::Accepted { first_version, count, version } => {
                    let from = (first_version - base_version - 1) as usize;
                    let events = stored[from..from + count as usize].to_vec();
                    Ok(CommandReply { stream: self.stream.clone(), version, events, replayed: false })
                }
                Answer::Rejected(rejection) => Err(rejection),
                Answer::SameAs(earlier) => match &made[earlier] {
                    Ok(first) => Ok(CommandReply { replayed: true, ..first.clone() }),
                    Err(rejection) => Err(rejection.clone()),
                },
            };
            let _ = reply.send(result.clone().map_err(CommandError::Rejected));
            made.push(result);
        }
    }
}

/// The key under which a command's outcome is recorded, if it has one: a client's
/// `Idempotency-Key`, or a routed command's causation.
fn outcome_key(request: &CommandRequest) -> Option<String> {
    match (&request.idempotency_key, &request.causation) {
        (Some(key), _) => Some(format!("{IDEMPOTENCY_PREFIX}{key}")),
        (None, Some(causation)) => Some(format!("cause:{}", causation.dedup_key)),
        (None, None) => None,
    }
}
