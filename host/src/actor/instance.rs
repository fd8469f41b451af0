//! One actor: the loop that owns a stream's state and decides its commands.

use super::messages::{CommandError, CommandReply, CommandRequest, Message, StateReply};
use super::{AfterFailure, Shared};
use crate::components::ActiveAggregate;
use crate::replay::{Fold, replay_with, wait_for, worth_keeping};
use crate::runtime::Executed;
use crate::runtime::GuestError;
use crate::store::{
    AppendBatch, AppendError, Committed, Fence, Fingerprint, NewEvent, OutcomeKey, Page, Receipt, Snapshot,
    StoreError, StoredEvent, StoredOutcome, StreamId, Version,
};
use cairn_wire::RawCommand;
use cairn_wire::{INVALID_COMMAND, Rejection, UNKNOWN_COMMAND};
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

type Reply = oneshot::Sender<Result<CommandReply, CommandError>>;

pub(super) async fn run(
    shared: Arc<Shared>,
    stream: StreamId,
    generation: u64,
    mut inbox: mpsc::Receiver<Message>,
    after: AfterFailure,
    fence: Option<Fence>,
) {
    if after == AfterFailure::Yes {
        // The actor before this one may have left batches with the writer when it died. Until
        // they land, the log is behind what they decided, and a state built from it now would
        // be refused at commit as a version conflict (a 409 to commands that named no version).
        if let Err(error) = shared.writer.barrier().await {
            tracing::warn!(stream = %stream, "waiting for the failed actor's commits: {error}");
        }
    }
    let mut actor = Actor {
        shared: shared.clone(),
        stream,
        loaded: None,
        committed: None,
        in_flight: VecDeque::new(),
        in_flight_keys: HashSet::new(),
        fence,
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
                return stop(&shared, generation, &mut inbox, &actor.stream, panic);
            }
            break;
        };
        if matches!(first, Message::Passivate) {
            // Stopping would drop the answers of what is committing: settle it first.
            if let Err(panic) = caught(actor.drain()).await {
                return stop(&shared, generation, &mut inbox, &actor.stream, panic);
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
            return stop(&shared, generation, &mut inbox, &actor.stream, panic);
        }
    }
    tracing::trace!(stream = %actor.stream, "actor stopped");
}

/// The most state bytes of snapshots one batch keeps for the history beside its newest.
const BATCH_SNAPSHOT_BYTES: usize = 8 << 20;

/// Batches an actor may have committing at once while it decides the next.
const MAX_IN_FLIGHT: usize = 4;

/// Run actor work, catching a panic (a host defect).
async fn caught(work: impl Future<Output = ()>) -> Result<(), Box<dyn std::any::Any + Send>> {
    AssertUnwindSafe(work).catch_unwind().await
}

/// After a panic: the callers of the batches it held learn it (their replies are dropped:
/// 500 `internal_error`), and this actor ends; what is still in its mailbox goes to a fresh
/// actor, which rebuilds the state from the store.
fn stop(
    shared: &Arc<Shared>,
    generation: u64,
    inbox: &mut mpsc::Receiver<Message>,
    stream: &StreamId,
    panic: Box<dyn std::any::Any + Send>,
) {
    let message = crate::lifecycle::panic_message(panic);
    tracing::error!(stream = %stream, "the actor panicked and stops: {message}");
    shared.replace_failed(stream, generation, inbox);
}

/// A stream's state rebuilt from its snapshot (if one of this version) and events.
struct Rebuilt {
    state: Option<Vec<u8>>,
    version: Version,
    /// Events folded on top of the snapshot.
    folded: u64,
    /// The stream's newest snapshot was made by another version.
    stale_snapshot: bool,
    /// States at the snapshot intervals a fold from the start passed.
    checkpoints: Vec<(Version, Option<Vec<u8>>)>,
    /// The version of the stream's last snapshot in the history, as far as the fold knows.
    last_history: Version,
}

/// The state an actor holds in memory, built by one component version.
struct Loaded {
    component: Arc<ActiveAggregate>,
    state: Option<Vec<u8>>,
    version: Version,
    /// The version of the stream's last snapshot kept in the history (about).
    last_history: Version,
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
    in_flight_keys: HashSet<OutcomeKey>,
    /// In a cluster: the lease of the stream's partition this actor was started under.
    /// Every batch carries it, so once the lease has moved on nothing of this actor's is
    /// stored, whatever state it holds.
    fence: Option<Fence>,
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
    keys: Vec<OutcomeKey>,
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
    outcomes: Vec<(OutcomeKey, StoredOutcome)>,
    answers: Vec<(Answer, Reply)>,
    /// Each outcome key decided in this batch: its answer's index, and its command's fingerprint.
    keys: HashMap<OutcomeKey, (usize, Option<Fingerprint>)>,
    /// The newest snapshot a command of the batch took, and those of them the stream's
    /// history keeps (for temporal reads), oldest first.
    snapshot: Option<Snapshot>,
    history: Vec<Snapshot>,
}

impl Pending {
    fn at(base_version: Version) -> Self {
        Pending {
            base_version,
            events: Vec::new(),
            outcomes: Vec::new(),
            answers: Vec::new(),
            keys: HashMap::new(),
            snapshot: None,
            history: Vec::new(),
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
        let mut pending = Pending::at(self.loaded.as_ref().map_or(Version::ZERO, |l| l.version));
        for message in batch {
            if self.loaded.is_none() {
                // A failed append dropped the state; it is rebuilt with the next batch.
                message.fail(self.unavailable());
                continue;
            }
            match message {
                Message::Command(request, reply) => {
                    if let Some(stall) = crate::faults::actor_stall(&request.command_type, &self.stream.key())
                    {
                        tokio::time::sleep(stall).await;
                    }
                    if outcome_key(&request).is_some_and(|key| self.in_flight_keys.contains(&key)) {
                        // A retry of a command still committing: its recorded answer exists
                        // only once that commit lands.
                        self.submit(std::mem::replace(&mut pending, Pending::at(Version::ZERO)));
                        self.drain().await;
                        let Some(loaded) = &self.loaded else {
                            let _ = reply.send(Err(self.unavailable()));
                            continue;
                        };
                        pending = Pending::at(loaded.version);
                    }
                    self.decide(request, reply, &mut pending).await
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
        let interval = self.snapshot_interval(&active);
        let (store, stream, component) = (self.shared.store.clone(), self.stream.clone(), active.clone());
        let mut rebuilt = tokio::task::spawn_blocking(move || -> Result<Rebuilt, CommandError> {
            let digest = component.component.digest().as_bytes();
            let newest = wait_for(store.load_snapshot(&stream))?;
            let stale_snapshot = newest.as_ref().is_some_and(|s| s.digest != digest);
            let (state, from) = match newest.filter(|s| s.digest == digest) {
                Some(snapshot) => (Some(snapshot.state), snapshot.version),
                None => (None, Version::ZERO),
            };
            // A fold from the start (a new version, or snapshots lost) keeps this version's
            // state at every interval it passes, for temporal reads.
            let fold = Fold { cancelled: None, checkpoint_every: (from == 0).then_some(interval) };
            let folded =
                replay_with(&component.component, &store, &stream, state, from, Version::MAX, &fold)?;
            // The newest snapshot joins the history only when worth keeping: where the
            // history really ends decides whether the next snapshots are.
            let last_history = match folded.checkpoints.last() {
                Some((version, _)) => *version,
                None if from == 0 => Version::ZERO,
                None => wait_for(store.snapshot_at_or_before(&stream, from, digest))?
                    .map_or(Version::ZERO, |s| s.version),
            };
            Ok(Rebuilt {
                state: folded.state,
                version: folded.version,
                folded: folded.version.saturating_sub(from),
                stale_snapshot,
                checkpoints: folded.checkpoints,
                last_history,
            })
        })
        .await
        .map_err(|e| CommandError::Interrupted(format!("rebuilding state failed: {e}")))??;
        // After a swap the stream's snapshot belongs to another version: save one of this
        // version right away (and after any long fold), so the next wake-up is cheap.
        if rebuilt.folded > 0 && (rebuilt.stale_snapshot || rebuilt.folded >= interval) {
            let digest = active.component.digest().as_bytes().to_vec();
            let snapshot_of = |version: Version, state: Option<Vec<u8>>| Snapshot {
                version,
                digest: digest.clone(),
                state: state.unwrap_or_default(),
            };
            let mut history: Vec<Snapshot> = std::mem::take(&mut rebuilt.checkpoints)
                .into_iter()
                .map(|(v, s)| snapshot_of(v, s))
                .collect();
            let newest = snapshot_of(rebuilt.version, rebuilt.state.clone());
            let keep_newest = rebuilt.version > rebuilt.last_history
                && worth_keeping(newest.state.len(), rebuilt.version.saturating_sub(rebuilt.last_history));
            if keep_newest {
                history.push(newest.clone());
            }
            let batch = AppendBatch {
                stream: self.stream.clone(),
                expected_version: rebuilt.version,
                events: Vec::new(),
                outcomes: Vec::new(),
                snapshot: Some(newest),
                history,
                fence: self.fence,
            };
            match self.shared.writer.append(batch).await {
                // The history ends where it is stored, not where it was meant to.
                Ok(_) if keep_newest => rebuilt.last_history = rebuilt.version,
                Ok(_) => {}
                Err(error) => {
                    // Its checkpoints are not stored either: the next snapshot is kept.
                    rebuilt.last_history = Version::ZERO;
                    tracing::warn!(stream = %self.stream, "could not save the snapshot after a rebuild: {error}");
                }
            }
        }
        self.committed = Some((rebuilt.version, rebuilt.state.clone()));
        let last_history = rebuilt.last_history;
        self.loaded =
            Some(Loaded { component: active, state: rebuilt.state, version: rebuilt.version, last_history });
        Ok(())
    }

    /// Take a snapshot every this many events.
    fn snapshot_interval(&self, component: &ActiveAggregate) -> u64 {
        snapshot_interval(component, self.shared.config.default_snapshot_interval)
    }

    /// Decide one command inside its request's span (entered only while this runs, not
    /// across the awaits of other tasks).
    async fn decide(&mut self, request: CommandRequest, reply: Reply, pending: &mut Pending) {
        let span = request.span.clone();
        self.decide_in_span(request, reply, pending).instrument(span).await
    }

    async fn decide_in_span(&mut self, request: CommandRequest, reply: Reply, pending: &mut Pending) {
        let loaded = self.loaded.as_ref().expect("decide runs on loaded state");
        let refusal = internal_refusal(&loaded.component, &self.stream, &request);
        if let (Some(refusal), None) = (&refusal, &request.causation) {
            // A client sent a saga's own step: refused before anything is looked up or
            // recorded, whatever key it carries.
            let _ = reply.send(Err(CommandError::Rejected(refusal.clone())));
            return;
        }
        let outcome_key = outcome_key(&request);
        // Only a client's key is bound to its command: a redelivered routed command is the
        // same command even when a changed reaction gave it other fields (ARCHITECTURE.md).
        let fingerprint = request.idempotency_key.as_ref().and(request.fingerprint);
        if let Some(key) = &outcome_key {
            if let Some(&(earlier, earlier_fingerprint)) = pending.keys.get(key) {
                if let Some(reused) = key_reused(earlier_fingerprint.as_ref(), fingerprint.as_ref()) {
                    let _ = reply.send(Err(reused));
                } else {
                    pending.answers.push((Answer::SameAs(earlier), reply));
                }
                return;
            }
            match self.shared.store.outcome(&self.stream, key).await {
                Ok(Some(outcome)) => {
                    let answer = match key_reused(outcome.fingerprint(), fingerprint.as_ref()) {
                        Some(reused) => Err(reused),
                        None => self.recorded_answer(outcome).await,
                    };
                    let _ = reply.send(answer);
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
        let executed = match refusal {
            // A routed command from a source that may not send it: refused like a business
            // rule (recorded, and handed back to its source).
            Some(refusal) => Ok(Err(refusal)),
            None => component.execute(loaded.state.as_deref(), &command),
        };
        // A routed command this version cannot decide within its limits fails the same way on
        // every delivery: it is refused for good, recorded like a rejection (so a fixed version
        // later cannot apply it after its source compensated), and handed back, so the source
        // compensates. Not a saga's own step or a hand-back, though: their source has nothing
        // to compensate with, so the saga would stop short, silently. Those fail as the guest
        // failed, and park where an operator sees them and can retry them after a fix.
        let refusable = request.causation.is_some()
            && command.command_type != cairn_wire::COMMAND_REJECTED
            && component.info().internal(&command.command_type).is_none();
        let executed = match executed {
            Err(error @ (GuestError::Timeout(_) | GuestError::OutputTooLarge { .. })) if refusable => {
                let code = match error {
                    GuestError::Timeout(_) => "guest_timeout",
                    _ => "guest_output_too_large",
                };
                Ok(Err(Rejection::new(code, error.to_string())))
            }
            other => other,
        };
        let answer = match executed {
            Err(trap) => {
                tracing::warn!(stream = %self.stream, command = command.command_type, "guest failed: {trap}");
                let _ = reply.send(Err(trap.into()));
                return;
            }
            Ok(Err(rejection)) => {
                // A command that is not one (400) is not the key's answer: the client fixes
                // the command and retries with the same key.
                let malformed = [UNKNOWN_COMMAND, INVALID_COMMAND].contains(&rejection.code.as_str());
                if malformed && request.idempotency_key.is_some() {
                    let _ = reply.send(Err(CommandError::Rejected(rejection)));
                    return;
                }
                if let Some(key) = &outcome_key {
                    let outcome = StoredOutcome::Rejected {
                        code: rejection.code.clone(),
                        message: rejection.message.clone(),
                        fingerprint,
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
                // A snapshot wherever a command crosses an interval, so that any version is
                // within about one interval of one (temporal reads fold little).
                let interval =
                    snapshot_interval(&loaded.component, self.shared.config.default_snapshot_interval);
                if interval > 0 && loaded.version.get() / interval > (first_version - 1).get() / interval {
                    let snapshot = Snapshot {
                        version: loaded.version,
                        digest: loaded.component.component.digest().as_bytes().to_vec(),
                        state: loaded.state.clone().unwrap_or_default(),
                    };
                    // The history keeps it unless it is large for the events it saves from
                    // folding, and a batch keeps the history's within a budget.
                    let kept: usize = pending.history.iter().map(|s| s.state.len()).sum();
                    if kept <= BATCH_SNAPSHOT_BYTES
                        && worth_keeping(
                            snapshot.state.len(),
                            loaded.version.saturating_sub(loaded.last_history),
                        )
                    {
                        loaded.last_history = loaded.version;
                        pending.history.push(snapshot.clone());
                    }
                    // The newest snapshot, which a waking actor starts from, is always taken.
                    pending.snapshot = Some(snapshot);
                }
                let causation_id = request.causation.as_ref().map(|c| c.causation_id.clone());
                let reply_to = request.causation.as_ref().map(|c| c.source.clone());
                let info = loaded.component.component.info();
                pending.events.extend(events.into_iter().map(|e| NewEvent {
                    schema: info.schema_of(&e.event_type),
                    event_type: e.event_type,
                    payload: e.payload,
                    correlation_id: request.correlation_id.clone(),
                    causation_id: causation_id.clone(),
                    component_version: loaded.component.version,
                    reply_to: reply_to.clone(),
                    trace: request.trace,
                }));
                let version = loaded.version;
                if let Some(key) = &outcome_key {
                    let outcome = StoredOutcome::Accepted { first_version, count, version, fingerprint };
                    pending.outcomes.push((key.clone(), outcome));
                }
                Answer::Accepted { first_version, count, version }
            }
        };
        if let Some(key) = outcome_key {
            pending.keys.insert(key, (pending.answers.len(), fingerprint));
        }
        pending.answers.push((answer, reply));
    }

    /// The answer recorded for a command seen before (its events read back from the log).
    async fn recorded_answer(&self, outcome: StoredOutcome) -> Result<CommandReply, CommandError> {
        match outcome {
            StoredOutcome::Rejected { code, message, .. } => {
                Err(CommandError::Rejected(Rejection { code, message }))
            }
            StoredOutcome::Accepted { first_version, count, version, .. } => {
                let events = if count == 0 {
                    Vec::new()
                } else {
                    self.shared
                        .store
                        .read_stream_range(
                            &self.stream,
                            first_version,
                            first_version + count - 1,
                            Page::from(count as usize),
                        )
                        .await?
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
            let batch = AppendBatch {
                stream: self.stream.clone(),
                expected_version: pending.base_version,
                events: pending.events,
                outcomes: pending.outcomes,
                snapshot: pending.snapshot,
                history: pending.history,
                fence: self.fence,
            };
            match self.shared.writer.submit(batch) {
                Ok(receipt) => receipt,
                Err(error) => Receipt::ready(Err(error.into())),
            }
        } else {
            Receipt::ready(Ok(Committed::default()))
        };
        let keys: Vec<OutcomeKey> = pending.keys.into_keys().collect();
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
                        // Whether it landed is not known: say so, never "not stored".
                        AppendError::Store(StoreError::OutcomeUnknown(unknown)) => {
                            CommandError::Store(StoreError::OutcomeUnknown(unknown.clone()))
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
                    let from = (first_version - base_version.get() - 1).get() as usize;
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

/// Take a snapshot every this many events: what the component asks, else the host's default.
pub fn snapshot_interval(component: &ActiveAggregate, default: u32) -> u64 {
    match component.component.info().snapshot_interval {
        0 => default,
        n => n,
    }
    .into()
}

/// The refusal when a client's key comes back with another command than the one it was
/// recorded with (outcomes recorded without a fingerprint answer any command).
fn key_reused(recorded: Option<&Fingerprint>, now: Option<&Fingerprint>) -> Option<CommandError> {
    match (recorded, now) {
        (Some(recorded), Some(now)) if recorded != now => Some(CommandError::Rejected(Rejection::new(
            "idempotency_key_reused",
            "this Idempotency-Key was first used with another command (type or data); \
             use a new key for a new command",
        ))),
        _ => None,
    }
}

/// Why `request` may not be sent the way it came, if it is one of the component's internal
/// commands: a client sent it, or a reaction to an event of a source type it does not allow.
fn internal_refusal(
    component: &ActiveAggregate,
    stream: &StreamId,
    request: &CommandRequest,
) -> Option<Rejection> {
    let rule = component.component.info().internal(&request.command_type)?;
    let message = match &request.causation {
        None => format!(
            "{} is one of {}'s saga steps: only the host's reactions may send it, not a client",
            request.command_type, stream.type_name
        ),
        Some(causation) if !rule.allows_source(&causation.source.type_name) => format!(
            "{} is one of {}'s saga steps and may be sent only for events of {}, not of {}",
            request.command_type,
            stream.type_name,
            rule.source_types.join(", "),
            causation.source.type_name
        ),
        Some(_) => return None,
    };
    Some(Rejection::new(INTERNAL_COMMAND, message))
}

/// The rejection code of an internal command sent from where it may not come (HTTP 403).
pub const INTERNAL_COMMAND: &str = "internal_command";

/// The key under which a command's outcome is recorded, if it has one: a client's
/// `Idempotency-Key`, or a routed command's causation.
fn outcome_key(request: &CommandRequest) -> Option<OutcomeKey> {
    match (&request.idempotency_key, &request.causation) {
        (Some(key), _) => Some(OutcomeKey::Idempotency(key.clone())),
        (None, Some(causation)) => Some(OutcomeKey::Cause(causation.dedup_key.clone())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::Causation;
    use crate::runtime::{Limits, Runtime};
    use crate::store::ComponentVersion;

    fn transfer_component() -> ActiveAggregate {
        let runtime = Runtime::new(None, Limits::default()).unwrap();
        let bytes = cairn_artifacts::component("money-transfer").unwrap();
        ActiveAggregate { version: ComponentVersion(1), component: runtime.load_aggregate(bytes).unwrap() }
    }

    fn request(command_type: &str, source: Option<&str>) -> CommandRequest {
        CommandRequest {
            command_type: command_type.to_owned(),
            payload: vec![0x80],
            expected_version: None,
            idempotency_key: None,
            fingerprint: None,
            correlation_id: "c".to_owned(),
            causation: source.map(|source| Causation {
                causation_id: "7".to_owned(),
                dedup_key: "k".to_owned(),
                source: StreamId::new(source, "x").unwrap(),
            }),
            span: tracing::Span::none(),
            trace: None,
        }
    }

    /// The actor's own check, behind the HTTP one: a saga step is refused from a client
    /// and from a reaction to another type's events, and taken from the type it names.
    #[test]
    fn a_saga_step_is_refused_unless_a_reaction_of_its_source_type_sent_it() {
        let transfer = transfer_component();
        let stream = StreamId::new("money-transfer", "t1").unwrap();
        let from_client = internal_refusal(&transfer, &stream, &request("RecordDebit", None)).unwrap();
        assert_eq!(from_client.code, INTERNAL_COMMAND);
        assert!(from_client.message.contains("not a client"), "{}", from_client.message);
        let from_faulty =
            internal_refusal(&transfer, &stream, &request("RecordDebit", Some("faulty"))).unwrap();
        assert!(from_faulty.message.contains("only for events of account"), "{}", from_faulty.message);
        assert_eq!(internal_refusal(&transfer, &stream, &request("RecordDebit", Some("account"))), None);
        assert_eq!(
            internal_refusal(&transfer, &stream, &request("CreateMoneyTransfer", None)),
            None,
            "a public command"
        );
    }
}
