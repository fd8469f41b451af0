//! Delivery of one source stream's events for one subscriber, strictly in order.
//!
//! A worker owns a stream's queue while it has work. For each event it calls the
//! subscriber's `react` and sends each resulting command to its target actor; a command
//! the target can never accept (a business rejection, an id that cannot name an aggregate,
//! a type nobody deployed, a command it cannot decode) is handed back to the source stream
//! as `CommandRejected`, so the saga compensates. Overload and storage trouble are retried
//! with capped backoff for as long as they last. Only what fails the same way every time
//! (a reaction that traps, a target that traps, a hand-back that fails, a reaction that
//! forges a host command) parks the event, and then every later event of the stream
//! parks behind it, in order, until an operator retries or discards the sequence.

use super::{Counters, SubscriberShared};
use crate::actor::{Causation, CommandError, CommandRequest};
use crate::cluster::{Owner, RoutedCommandJson};
use crate::lifecycle::Stopped;
use crate::runtime::{AggregateComponent, GuestError};
use crate::store::{
    AppendBatch, AppendError, DeadLetter, DeadLetterKey, EventStore, OutcomeKey, Position, StoreError,
    StoredEvent, StoredOutcome, StreamId, Version,
};
use crate::traces::TraceParent;

/// Dead letters read at a time by a retry or a discard.
const LETTER_PAGE: usize = 256;
use cairn_wire::{COMMAND_REJECTED, CommandRejected, OutgoingCommand, Rejection, codec};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a stream's worker is asked to do, in the stream's order.
pub(super) enum Work {
    /// An event read from the log; the cursor waits for it.
    Event(Box<StoredEvent>),
    /// An operator's retry: deliver the stream's parked sequence again, in order. Answers
    /// how many events were released.
    Retry(oneshot::Sender<u64>),
    /// An operator's discard: drop the stream's parked sequence. Answers how many.
    Discard(oneshot::Sender<u64>),
}

/// An event as a reaction reads it.
enum Readable {
    /// As stored: in the schema its producer's active version reads.
    AsStored,
    /// Upcast by its producer's active version.
    Upcast(Box<StoredEvent>),
    /// As it is read, it is of a type the subscriber does not react to.
    NotSubscribed,
    /// Its producer's upcasters fail on it: parked.
    Unreadable(Box<DeadLetter>),
}

/// A finished piece of work; `position` is set for a log event.
pub(super) struct Finished {
    pub stream: StreamId,
    pub position: Option<Position>,
}

/// How delivering one event ended. (When the host stops first, the event is not done and
/// the cursor must not pass it: that is `Err(Stopped)`.)
enum Outcome {
    Done,
    Park(Box<DeadLetter>),
}

/// How sending one command ended.
enum Sent {
    Done {
        duplicate: bool,
    },
    /// Refused now and for ever by the target, which recorded it: hand it back.
    Rejected(Rejection),
    /// No aggregate can take it (no component of its type is deployed): record the refusal
    /// in the target's place, then hand it back.
    Unroutable(Rejection),
    /// Failed the same way on every attempt (the target's component traps).
    Failed {
        error: String,
        attempts: u32,
    },
}

pub(super) struct StreamWorker {
    pub shared: Arc<SubscriberShared>,
    pub stream: StreamId,
}

impl StreamWorker {
    pub(super) async fn run(
        self,
        mut work: mpsc::UnboundedReceiver<Work>,
        finished: mpsc::UnboundedSender<Finished>,
    ) {
        while let Some(item) = work.recv().await {
            let position = match &item {
                Work::Event(event) => Some(event.position),
                Work::Retry(_) | Work::Discard(_) => None,
            };
            let done = match item {
                Work::Event(event) => self.on_event(*event).await,
                Work::Retry(reply) => self.retry(reply).await,
                Work::Discard(reply) => self.discard(reply).await,
            };
            if done.is_err() {
                return;
            }
            let _ = finished.send(Finished { stream: self.stream.clone(), position });
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.shared.counters.lock().expect("counters lock")
    }

    fn first_parked(&self) -> Option<Position> {
        self.shared.parked.lock().expect("parked lock").get(&self.stream).copied()
    }

    fn mark_parked(&self, position: Position) {
        self.shared.parked.lock().expect("parked lock").entry(self.stream.clone()).or_insert(position);
    }

    async fn on_event(&self, event: StoredEvent) -> Result<(), Stopped> {
        // Events before the first parked one (a rewind delivers them again) are not behind it.
        if let Some(first) = self.first_parked()
            && event.position >= first
        {
            return self.park_behind(&event, first).await;
        }
        crate::faults::delivery_panic(&event.event_type);
        match self.deliver(&event).await? {
            Outcome::Done => Ok(()),
            Outcome::Park(letter) => self.park(letter).await,
        }
    }

    /// The stream is parked at `first`: this event (at or after it) waits behind it, as a
    /// dead letter of its own. One already parked (a rewind delivers it again) keeps its letter.
    async fn park_behind(&self, event: &StoredEvent, first: Position) -> Result<(), Stopped> {
        let key = DeadLetterKey {
            subscriber: self.shared.name.clone(),
            stream: self.stream.clone(),
            position: event.position,
        };
        match self.shared.context.store.dead_letter(&key).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(error) => tracing::warn!(subscriber = self.shared.name, "cannot read a dead letter: {error}"),
        }
        self.park(self.behind_letter(event, first)).await
    }

    /// The dead letter of an event that waits behind the stream's parked event at `first`.
    fn behind_letter(&self, event: &StoredEvent, first: Position) -> Box<DeadLetter> {
        let error = format!("waiting behind the parked event at position {first} of {}", self.stream);
        self.letter(event, Some(first), None, None, error, 0)
    }

    /// Deliver the parked sequence again, in order, with the component now active. The
    /// first event that fails again parks the stream anew; the rest stay parked behind it.
    /// The letters are read a page at a time, and each event on its own, so a long sequence
    /// of large events never sits in memory at once.
    async fn retry(&self, reply: oneshot::Sender<u64>) -> Result<(), Stopped> {
        let count =
            self.retrying(|| self.store().stream_dead_letter_count(&self.shared.name, &self.stream)).await?;
        self.shared.parked.lock().expect("parked lock").remove(&self.stream);
        let _ = reply.send(count);
        let mut after = None;
        loop {
            let letters = self.parked_page(after.as_ref()).await?;
            let Some(last) = letters.last() else { return Ok(()) };
            after = Some(last.key());
            for letter in letters {
                self.retry_letter(letter).await?;
            }
        }
    }

    /// Deliver one parked event again.
    async fn retry_letter(&self, letter: DeadLetter) -> Result<(), Stopped> {
        let event = match self.shared.context.store.read_event(letter.position).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                tracing::error!(
                    subscriber = self.shared.name,
                    position = letter.position.get(),
                    "a parked event is not in the log"
                );
                return Ok(());
            }
            Err(error) => {
                tracing::error!(subscriber = self.shared.name, "cannot read a parked event: {error}");
                self.mark_parked(letter.position);
                return Ok(());
            }
        };
        if let Some(first) = self.first_parked() {
            // It stays parked, now behind the event that failed again.
            return self.park(self.behind_letter(&event, first)).await;
        }
        match self.deliver(&event).await? {
            Outcome::Done => {
                self.unpark(vec![letter.key()]).await?;
                self.counters().retried += 1;
                Ok(())
            }
            Outcome::Park(letter) => self.park(letter).await,
        }
    }

    /// Drop the parked sequence on purpose: its events will not be delivered.
    async fn discard(&self, reply: oneshot::Sender<u64>) -> Result<(), Stopped> {
        let mut count = 0;
        loop {
            let letters = self.parked_page(None).await?;
            if letters.is_empty() {
                break;
            }
            count += letters.len() as u64;
            self.unpark(letters.iter().map(DeadLetter::key).collect()).await?;
        }
        self.shared.parked.lock().expect("parked lock").remove(&self.stream);
        self.counters().discarded += count;
        tracing::warn!(subscriber = self.shared.name, stream = %self.stream, count, "discarded parked events");
        let _ = reply.send(count);
        Ok(())
    }

    /// The next page of this stream's dead letters after `after`, in order.
    async fn parked_page(&self, after: Option<&DeadLetterKey>) -> Result<Vec<DeadLetter>, Stopped> {
        let letters = self
            .retrying(|| {
                self.store().dead_letters(Some(&self.shared.name), Some(&self.stream), after, LETTER_PAGE)
            })
            .await?;
        Ok(letters.into_iter().map(|(letter, _)| letter).collect())
    }

    /// A read of the dead letters, retried while the store fails.
    async fn retrying<T, F>(&self, read: impl Fn() -> F) -> Result<T, Stopped>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        loop {
            match read().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::error!(subscriber = self.shared.name, "cannot read dead letters: {error}");
                    self.pause(self.shared.context.config.max_backoff).await?;
                }
            }
        }
    }

    fn store(&self) -> &EventStore {
        &self.shared.context.store
    }

    /// React to one event and deliver what the reaction sends, in the reaction's order.
    async fn deliver(&self, event: &StoredEvent) -> Result<Outcome, Stopped> {
        let config = &self.shared.context.config;
        let Some(component) = self.shared.context.components.active(&self.shared.name) else {
            let error = "the subscribing component is not deployed".to_owned();
            return Ok(Outcome::Park(self.letter(event, None, None, None, error, 0)));
        };
        let upcast;
        let event = match self.upcast(event, &component.component).await? {
            Readable::AsStored => event,
            Readable::Upcast(event) => {
                upcast = event;
                &upcast
            }
            Readable::NotSubscribed => return Ok(Outcome::Done),
            Readable::Unreadable(letter) => return Ok(Outcome::Park(letter)),
        };
        let envelope = event.envelope();
        // The reaction and the commands it sends, in the trace the event was stored with. Only
        // a trace needs the span: without export the event's trace is carried on as it is.
        let span = if crate::traces::exporting() {
            tracing::info_span!(
                "react",
                subscriber = %self.shared.name,
                stream = %self.stream,
                position = event.position.get(),
                event_type = %event.event_type,
            )
        } else {
            tracing::Span::none()
        };
        let trace = crate::traces::continue_trace(&span, event.trace);
        let mut attempt = 0;
        let commands = loop {
            attempt += 1;
            match span.in_scope(|| component.component.react(&envelope)) {
                Ok(commands) => break commands,
                Err(error) if attempt >= config.max_attempts && !error.is_transient() => {
                    let error = format!("react failed: {error}");
                    return Ok(Outcome::Park(self.letter(event, None, None, None, error, attempt)));
                }
                Err(error) => {
                    tracing::warn!(
                        subscriber = self.shared.name,
                        position = event.position.get(),
                        "react failed, retrying: {error}"
                    );
                    self.pause(backoff(config, attempt)).await?;
                }
            }
        };
        if let Some(index) = commands.iter().position(|c| c.command_type == COMMAND_REJECTED) {
            let error = format!("the reaction sent {COMMAND_REJECTED}, which only the host may send");
            return Ok(Outcome::Park(self.letter(
                event,
                None,
                Some(index as u64),
                Some(&commands[index]),
                error,
                1,
            )));
        }
        let keys = dedup_keys(&self.shared.name, event.position, &commands);
        for (index, (command, key)) in commands.iter().zip(keys).enumerate() {
            match self.deliver_command(event, trace, index as u64, command, key).await? {
                Outcome::Done => {}
                other => return Ok(other),
            }
        }
        Ok(Outcome::Done)
    }

    /// `event` as the active version of its producer reads it (retried while the guest is
    /// busy): an event stored in an older schema is upcast. Its type decides, once read,
    /// whether the subscriber takes it: an event dispatched because it was stale may turn
    /// out to be of a type the subscriber does not take (upcast, or because its producer
    /// changed meanwhile).
    async fn upcast(
        &self,
        event: &StoredEvent,
        subscriber: &AggregateComponent,
    ) -> Result<Readable, Stopped> {
        let config = &self.shared.context.config;
        let producer = self.shared.context.components.active(&event.stream_type);
        let upcast = match producer {
            Some(producer) if crate::upcast::is_stale(&producer.component, event) => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut upcast = [event.clone()];
                    match crate::upcast::upcast_with(&producer.component, &mut upcast) {
                        Ok(()) => break Some(upcast.into_iter().next().expect("one event")),
                        Err(error) if attempt >= config.max_attempts && !error.is_transient() => {
                            let error = format!("the producer's upcast failed: {error}");
                            let letter = self.letter(event, None, None, None, error, attempt);
                            return Ok(Readable::Unreadable(letter));
                        }
                        Err(error) => {
                            tracing::warn!(
                                subscriber = self.shared.name,
                                position = event.position.get(),
                                "upcast failed, retrying: {error}"
                            );
                            self.pause(backoff(config, attempt)).await?;
                        }
                    }
                }
            }
            _ => None,
        };
        let read = upcast.as_ref().unwrap_or(event);
        let info = subscriber.info();
        let wanted = info.reacts_to(&read.stream_type, &read.event_type, false)
            || (info.reacts_to(&read.stream_type, &read.event_type, true)
                && self.retrying(|| self.store().is_reply_to(event, &self.shared.name)).await?);
        Ok(match (wanted, upcast) {
            (false, _) => Readable::NotSubscribed,
            (true, Some(upcast)) => Readable::Upcast(Box::new(upcast)),
            (true, None) => Readable::AsStored,
        })
    }

    async fn deliver_command(
        &self,
        event: &StoredEvent,
        trace: Option<TraceParent>,
        index: u64,
        command: &OutgoingCommand,
        key: String,
    ) -> Result<Outcome, Stopped> {
        let rejection = match StreamId::new(&command.target_type, &command.target_id) {
            Err(error) => {
                let rejection = Rejection::new(
                    "invalid_target",
                    format!(
                        "{:?} can never name a {} aggregate: {error}",
                        command.target_id, command.target_type
                    ),
                );
                let target = target_of(command);
                // Nothing can append to a stream whose id no path can name.
                self.record_refusal(&target, &key, &rejection).await?;
                rejection
            }
            Ok(target) => loop {
                let request =
                    routed(event, trace, command.command_type.clone(), command.payload.clone(), key.clone());
                match self.send(target.clone(), request).await? {
                    Sent::Done { duplicate } => {
                        let mut counters = self.counters();
                        counters.delivered_commands += 1;
                        counters.duplicates_ignored += u64::from(duplicate);
                        return Ok(Outcome::Done);
                    }
                    Sent::Rejected(rejection) => break rejection,
                    Sent::Unroutable(rejection) => {
                        match self.record_refusal(&target, &key, &rejection).await? {
                            Recorded::Yes => break rejection,
                            // The type was deployed meanwhile: the command is deliverable after all.
                            Recorded::Raced => continue,
                        }
                    }
                    Sent::Failed { error, attempts } => {
                        return Ok(Outcome::Park(self.letter(
                            event,
                            None,
                            Some(index),
                            Some(command),
                            error,
                            attempts,
                        )));
                    }
                }
            },
        };
        // Hand the rejection back to the stream whose event caused the command.
        let rejected = CommandRejected {
            command_type: command.command_type.clone(),
            target_type: command.target_type.clone(),
            target_id: command.target_id.clone(),
            code: rejection.code,
            message: rejection.message,
        };
        let hand_back = routed(
            event,
            trace,
            COMMAND_REJECTED.to_owned(),
            codec::encode(&rejected),
            format!("{key}:rejected"),
        );
        let (error, attempts) = match self.send(event.stream(), hand_back).await? {
            Sent::Done { .. } => {
                self.counters().handed_back += 1;
                return Ok(Outcome::Done);
            }
            Sent::Rejected(refused) | Sent::Unroutable(refused) => (
                format!(
                    "{} was rejected ({}: {}), and so was handing that back: {refused}",
                    command.command_type, rejected.code, rejected.message
                ),
                1,
            ),
            Sent::Failed { error, attempts } => {
                (format!("handing back a rejection failed: {error}"), attempts)
            }
        };
        Ok(Outcome::Park(self.letter(event, None, Some(index), Some(command), error, attempts)))
    }

    /// Send a command, retrying what may pass: overload and storage trouble for as long
    /// as they last, a trapping target up to `max_attempts` times.
    async fn send(&self, target: StreamId, request: CommandRequest) -> Result<Sent, Stopped> {
        let config = &self.shared.context.config;
        let mut attempt = 0;
        let mut failures = 0;
        loop {
            attempt += 1;
            let error = match self.deliver_to(&target, &request).await {
                Ok(replayed) => return Ok(Sent::Done { duplicate: replayed }),
                Err(CommandError::Rejected(rejection)) => return Ok(Sent::Rejected(rejection)),
                Err(error @ CommandError::UnknownType(_)) => {
                    return Ok(Sent::Unroutable(Rejection::new("unknown_type", error.to_string())));
                }
                Err(CommandError::ShuttingDown) => return Err(Stopped),
                // Every instance slot was busy: overload, not the command's fault.
                Err(error @ CommandError::Guest(GuestError::Busy(_))) => {
                    self.counters().transient_retries += 1;
                    error
                }
                Err(error @ (CommandError::Guest(_) | CommandError::ActorFailed)) => {
                    failures += 1;
                    if failures >= config.max_attempts {
                        return Ok(Sent::Failed { error: error.to_string(), attempts: attempt });
                    }
                    error
                }
                // Overload, storage trouble, a conflict: nothing about the command itself.
                Err(error) => {
                    self.counters().transient_retries += 1;
                    error
                }
            };
            if attempt == 1 || attempt % 20 == 0 {
                tracing::warn!(
                    subscriber = self.shared.name,
                    %target,
                    attempt,
                    "delivery failed, retrying: {error}"
                );
            }
            self.pause(backoff(config, attempt)).await?;
        }
    }

    /// Hand `request` to the actor of `target`: here, or in a cluster on the host that owns
    /// it (waiting, bounded, while no host does). `Ok` tells whether it was a redelivery.
    async fn deliver_to(&self, target: &StreamId, request: &CommandRequest) -> Result<bool, CommandError> {
        let actors = &self.shared.context.actors;
        let Some(cluster) = actors.cluster() else {
            return actors.send(target.clone(), request.clone()).await.map(|reply| reply.replayed);
        };
        match cluster.owner_within(target, cluster.takeover_wait()).await {
            Owner::There { url, .. } => {
                let command =
                    RoutedCommandJson::of(target, request).expect("a routed command has its causation");
                match cluster.deliver(&url, &command).await {
                    // Known here: the owner has not taken the deploy in yet (or cannot load
                    // it). Never a refusal for good: wait for it.
                    Err(CommandError::UnknownType(name))
                        if self.shared.context.components.active(&name).is_some() =>
                    {
                        Err(CommandError::NotHere(cluster.partition_of(target)))
                    }
                    answered => answered,
                }
            }
            Owner::Here(_) => match actors.send(target.clone(), request.clone()).await {
                // Made active on another host in a version this one cannot load yet: not a
                // refusal for good either.
                Err(CommandError::UnknownType(name))
                    if self.shared.context.components.unloadable().iter().any(|(n, ..)| *n == name) =>
                {
                    Err(CommandError::NotHere(cluster.partition_of(target)))
                }
                answered => answered.map(|reply| reply.replayed),
            },
            Owner::Nobody => Err(CommandError::NotHere(cluster.partition_of(target))),
        }
    }

    /// Record `rejection` as the outcome of the routed command `key` in the place of a target
    /// that could not record it itself (no component of its type, an id no path can name).
    /// Once it is there, a later redelivery meets it instead of applying the command after
    /// its source has compensated: if the type is deployed later, its actor finds the
    /// refusal and answers it, and the hand-back is deduplicated at the source.
    async fn record_refusal(
        &self,
        target: &StreamId,
        key: &str,
        rejection: &Rejection,
    ) -> Result<Recorded, Stopped> {
        let context = &self.shared.context;
        loop {
            let written = match context.store.stream_head(target).await {
                Ok(head) => {
                    let outcome = StoredOutcome::Rejected {
                        code: rejection.code.clone(),
                        message: rejection.message.clone(),
                        fingerprint: None,
                    };
                    let batch = AppendBatch {
                        stream: target.clone(),
                        expected_version: head.map_or(Version::ZERO, |(version, _)| version),
                        events: Vec::new(),
                        outcomes: vec![(OutcomeKey::Cause(key.to_owned()), outcome)],
                        snapshot: None,
                        history: Vec::new(),
                        fence: None,
                    };
                    context.writer.append(batch).await
                }
                Err(error) => Err(error.into()),
            };
            match written {
                Ok(_) => return Ok(Recorded::Yes),
                Err(AppendError::VersionConflict { .. }) => return Ok(Recorded::Raced),
                Err(AppendError::Store(StoreError::Closed)) => return Err(Stopped),
                Err(error) => {
                    tracing::warn!(subscriber = self.shared.name, %target, "cannot record a refusal: {error}");
                    self.pause(context.config.max_backoff).await?;
                }
            }
        }
    }

    /// Sleep, unless the host stops first.
    async fn pause(&self, duration: Duration) -> Result<(), Stopped> {
        self.shared.context.part.pause(duration).await
    }

    fn letter(
        &self,
        event: &StoredEvent,
        behind: Option<Position>,
        index: Option<u64>,
        command: Option<&OutgoingCommand>,
        error: String,
        attempts: u32,
    ) -> Box<DeadLetter> {
        Box::new(DeadLetter {
            subscriber: self.shared.name.clone(),
            stream: self.stream.clone(),
            position: event.position,
            event_type: event.event_type.clone(),
            behind,
            command_index: index,
            target: command.map(target_of),
            command_type: command.map(|c| c.command_type.clone()),
            error,
            attempts,
            parked_at_micros: crate::time::now_micros(),
        })
    }

    /// Store a dead letter and mark the stream parked. If the host stops first, the event is
    /// not done and is delivered again after a restart.
    async fn park(&self, letter: Box<DeadLetter>) -> Result<(), Stopped> {
        if letter.behind.is_none() {
            tracing::error!(
                subscriber = self.shared.name,
                stream = %self.stream,
                position = letter.position.get(),
                "parking an event: {}",
                letter.error
            );
        }
        let position = letter.position;
        self.write(LetterChange::Park(letter)).await?;
        self.mark_parked(position);
        self.counters().parked += 1;
        Ok(())
    }

    async fn unpark(&self, keys: Vec<DeadLetterKey>) -> Result<(), Stopped> {
        self.write(LetterChange::Unpark(keys)).await
    }

    /// Store a dead-letter change until it sticks.
    async fn write(&self, change: LetterChange) -> Result<(), Stopped> {
        let writer = &self.shared.context.writer;
        loop {
            let written = match &change {
                LetterChange::Park(letter) => writer.park((**letter).clone()).await,
                LetterChange::Unpark(keys) => writer.unpark(keys.clone()).await,
            };
            match written {
                Ok(()) => return Ok(()),
                Err(StoreError::Closed) => return Err(Stopped),
                Err(error) => {
                    tracing::error!(
                        subscriber = self.shared.name,
                        "cannot store a dead letter change: {error}"
                    );
                    self.pause(self.shared.context.config.max_backoff).await?;
                }
            }
        }
    }
}

/// How recording a refusal in a target's place ended.
enum Recorded {
    Yes,
    /// The target's stream moved meanwhile: its type is deployed now.
    Raced,
}

/// A change to the dead letters, retried until it is stored.
enum LetterChange {
    Park(Box<DeadLetter>),
    Unpark(Vec<DeadLetterKey>),
}

fn backoff(config: &super::RoutingConfig, attempt: u32) -> Duration {
    config.first_backoff.saturating_mul(1 << attempt.min(16)).min(config.max_backoff)
}

/// A command caused by `event`: it carries the chain's correlation, the event's position
/// as its cause, `dedup_key`, which makes its effect happen once, and the trace of the
/// reaction that sent it (`trace`).
fn routed(
    event: &StoredEvent,
    trace: Option<TraceParent>,
    command_type: String,
    payload: Vec<u8>,
    dedup_key: String,
) -> CommandRequest {
    let span = tracing::info_span!(
        "routed_command",
        command = %command_type,
        correlation_id = %event.correlation_id,
        cause = event.position.get(),
    );
    let trace = crate::traces::continue_trace(&span, trace);
    CommandRequest {
        span,
        trace,
        command_type,
        payload,
        expected_version: None,
        idempotency_key: None,
        fingerprint: None,
        correlation_id: event.correlation_id.clone(),
        causation: Some(Causation {
            causation_id: event.position.to_string(),
            dedup_key,
            source: event.stream(),
        }),
    }
}

/// The dedup key of each command of one reaction. A routed command is identified by the
/// subscriber, the triggering event's position, its target stream, its command type, and
/// its occurrence among the reaction's commands with that same target and type. Not by its
/// index in the reaction: a changed `react` that adds, drops or reorders commands, or
/// changes a command's fields, still recognises the commands already delivered when a
/// rewind runs history through it again. The subscriber is part of it, so two components
/// reacting to one event with the same command to the same stream both take effect. The
/// target and type are hashed, so a key stays short whatever the guest sent.
pub(super) fn dedup_keys(subscriber: &str, position: Position, commands: &[OutgoingCommand]) -> Vec<String> {
    let mut occurrences: HashMap<(&str, &str, &str), u32> = HashMap::new();
    commands
        .iter()
        .map(|command| {
            let seen = occurrences
                .entry((&command.target_type, &command.target_id, &command.command_type))
                .or_insert(0);
            let occurrence = *seen;
            *seen += 1;
            let mut hash = Sha256::new();
            for part in [&command.target_type, &command.target_id, &command.command_type] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
            hash.update(occurrence.to_le_bytes());
            format!("{subscriber}:{position}:{}", hex::encode(&hash.finalize()[..16]))
        })
        .collect()
}

/// The stream a command names, as the guest wrote it (not checked: an invalid one is
/// recorded and shown as it was sent).
fn target_of(command: &OutgoingCommand) -> StreamId {
    StreamId { type_name: command.target_type.clone(), id: command.target_id.clone() }
}

#[cfg(test)]
mod tests {
    use super::dedup_keys;
    use crate::store::Position;
    use cairn_wire::OutgoingCommand;

    fn command(target: &str, command_type: &str, amount: i64) -> OutgoingCommand {
        #[derive(serde::Serialize)]
        struct Data {
            amount: i64,
        }
        OutgoingCommand::new("account", target, command_type, &Data { amount })
    }

    #[test]
    fn two_subscribers_get_different_keys_for_the_same_command() {
        let commands = [command("101", "CreditAccount", 5)];
        assert_ne!(dedup_keys("faulty", Position(7), &commands), dedup_keys("twin", Position(7), &commands));
    }

    #[test]
    fn reordering_adding_or_changing_commands_keeps_the_keys_of_those_delivered() {
        let before = dedup_keys(
            "account",
            Position(7),
            &[command("101", "DebitAccount", 5), command("202", "CreditAccount", 5)],
        );
        let after = dedup_keys(
            "account",
            Position(7),
            &[
                command("303", "Notify", 0),
                command("202", "CreditAccount", 6),
                command("101", "DebitAccount", 5),
            ],
        );
        assert_eq!(after[2], before[0]);
        assert_eq!(after[1], before[1]);
        assert!(!before.contains(&after[0]));
    }

    #[test]
    fn the_same_command_twice_in_one_reaction_is_two_commands() {
        let keys = dedup_keys(
            "account",
            Position(7),
            &[command("101", "CreditAccount", 5), command("101", "CreditAccount", 5)],
        );
        assert_ne!(keys[0], keys[1]);
        assert_ne!(
            keys,
            dedup_keys(
                "account",
                Position(8),
                &[command("101", "CreditAccount", 5), command("101", "CreditAccount", 5)]
            )
        );
    }

    #[test]
    fn keys_stay_short_whatever_the_target() {
        let long = "x".repeat(5000);
        let key = &dedup_keys("account", Position(7), &[command(&long, "CreditAccount", 5)])[0];
        assert!(key.len() < 64, "{key}");
    }
}
