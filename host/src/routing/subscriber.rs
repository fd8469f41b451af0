//! One subscriber: follow the log, react, deliver, advance the cursor.

use super::{Context, Counters, Rewind, cursor_name};
use crate::actor::{Causation, CommandError, CommandRequest};
use crate::components::ActiveAggregate;
use crate::store::{DeadLetter, Position, StoredEvent, StreamId};
use cairn_guest::{COMMAND_REJECTED, CommandRejected, OutgoingCommand, Rejection, codec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub(super) struct Subscriber {
    context: Arc<Context>,
    name: String,
    cursor: Position,
    counters: Arc<Mutex<Counters>>,
    rewinds: mpsc::UnboundedReceiver<Rewind>,
}

/// How one delivery ended.
enum Delivered {
    /// Stored now, or found already stored (`duplicate`).
    Done {
        duplicate: bool,
    },
    Rejected(Rejection),
    /// Given up after retries (or not deliverable at all): park it with this reason.
    GaveUp {
        error: String,
        attempts: u32,
    },
    /// The host is stopping: leave the cursor where it is.
    Stopping,
}

impl Subscriber {
    pub(super) fn new(
        context: Arc<Context>,
        name: String,
        cursor: Position,
        counters: Arc<Mutex<Counters>>,
        rewinds: mpsc::UnboundedReceiver<Rewind>,
    ) -> Self {
        Subscriber { context, name, cursor, counters, rewinds }
    }

    pub(super) async fn run(mut self) {
        let mut head = self.context.store.subscribe_head();
        let mut shutdown = self.context.shutdown.clone();
        tracing::info!(subscriber = self.name, cursor = self.cursor, "routing from cursor");
        loop {
            if *shutdown.borrow() {
                return;
            }
            while let Ok(rewind) = self.rewinds.try_recv() {
                self.rewind(rewind).await;
            }
            head.borrow_and_update();
            let events = match self.context.store.read_all(self.cursor, self.context.config.chunk) {
                Ok(events) => events,
                Err(error) => {
                    tracing::error!(subscriber = self.name, "cannot read the log: {error}");
                    tokio::time::sleep(self.context.config.max_backoff).await;
                    continue;
                }
            };
            let Some(last) = events.last().map(|e| e.position) else {
                // Caught up: wait for a commit, a rewind, or the end.
                tokio::select! {
                    _ = head.changed() => {}
                    Some(rewind) = self.rewinds.recv() => self.rewind(rewind).await,
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            if !self.deliver_chunk(events).await {
                return;
            }
            self.move_cursor(last).await;
        }
    }

    async fn rewind(&mut self, (position, done): Rewind) {
        tracing::info!(
            subscriber = self.name,
            from = self.cursor,
            to = position,
            "cursor moved by an operator"
        );
        self.move_cursor(position).await;
        let _ = done.send(());
    }

    async fn move_cursor(&mut self, position: Position) {
        // Retried until it sticks: a cursor that does not advance only means redelivery.
        while let Err(error) = self.context.writer.set_cursor(&cursor_name(&self.name), position).await {
            tracing::error!(subscriber = self.name, "cannot store the cursor: {error}");
            if *self.context.shutdown.borrow() {
                return;
            }
            tokio::time::sleep(self.context.config.max_backoff).await;
        }
        self.cursor = position;
        self.counters.lock().expect("counters lock").cursor = position;
    }

    /// Deliver a chunk: per source stream in order, streams concurrently. `false` when the
    /// host is stopping (the cursor must then stay where it is).
    async fn deliver_chunk(&self, events: Vec<StoredEvent>) -> bool {
        let Some(component) = self.context.components.active(&self.name) else {
            return true;
        };
        let subscriptions = &component.component.info().subscriptions;
        let mut by_stream: HashMap<(String, String), Vec<StoredEvent>> = HashMap::new();
        for event in events {
            let wanted = subscriptions.iter().any(|s| s.matches(&event.stream_type, &event.event_type));
            if wanted {
                by_stream
                    .entry((event.stream_type.clone(), event.stream_id.clone()))
                    .or_default()
                    .push(event);
            }
        }
        let mut streams = JoinSet::new();
        for (_, events) in by_stream {
            let delivery = StreamDelivery {
                context: self.context.clone(),
                subscriber: self.name.clone(),
                component: component.clone(),
                counters: self.counters.clone(),
            };
            streams.spawn(async move { delivery.deliver_in_order(events).await });
        }
        let mut completed = true;
        while let Some(result) = streams.join_next().await {
            match result {
                Ok(true) => {}
                Ok(false) => completed = false,
                Err(panic) => {
                    tracing::error!(subscriber = self.name, "a delivery task failed: {panic}");
                    completed = false;
                }
            }
        }
        completed
    }
}

/// A command caused by `event`: it carries the chain's correlation, the event's position
/// as its cause, and `dedup_key`, which makes its effect happen once.
fn routed(event: &StoredEvent, command_type: String, payload: Vec<u8>, dedup_key: String) -> CommandRequest {
    CommandRequest {
        command_type,
        payload,
        expected_version: None,
        idempotency_key: None,
        correlation_id: event.correlation_id.clone(),
        causation: Some(Causation { causation_id: event.position.to_string(), dedup_key }),
    }
}

/// Delivers the subscribed events of one source stream, in order.
struct StreamDelivery {
    context: Arc<Context>,
    subscriber: String,
    component: Arc<ActiveAggregate>,
    counters: Arc<Mutex<Counters>>,
}

impl StreamDelivery {
    async fn deliver_in_order(&self, events: Vec<StoredEvent>) -> bool {
        for event in events {
            if !self.deliver_event(&event).await {
                return false;
            }
        }
        true
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.context.config;
        config.first_backoff.saturating_mul(1 << attempt.min(16)).min(config.max_backoff)
    }

    async fn deliver_event(&self, event: &StoredEvent) -> bool {
        let envelope = event.envelope();
        let mut attempt = 0;
        let commands = loop {
            attempt += 1;
            match self.component.component.react(&envelope) {
                Ok(commands) => break commands,
                Err(error) if attempt >= self.context.config.max_attempts => {
                    let letter = self.letter(event, None, None, format!("react failed: {error}"), attempt);
                    return self.park(letter).await;
                }
                Err(error) => {
                    tracing::warn!(
                        subscriber = self.subscriber,
                        position = event.position,
                        "react failed, retrying: {error}"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        };
        for (index, command) in commands.into_iter().enumerate() {
            if !self.deliver_command(event, index as u64, command).await {
                return false;
            }
        }
        true
    }

    async fn deliver_command(&self, event: &StoredEvent, index: u64, command: OutgoingCommand) -> bool {
        let target = match StreamId::new(&command.target_type, &command.target_id) {
            Ok(target) => target,
            Err(error) => {
                let letter =
                    self.letter(event, Some(index), Some(&command), format!("bad target id: {error}"), 0);
                return self.park(letter).await;
            }
        };
        let request = routed(
            event,
            command.command_type.clone(),
            command.payload.clone(),
            format!("{}:{index}", event.position),
        );
        let rejection = match self.send(target, request).await {
            Delivered::Done { duplicate } => {
                let mut counters = self.counters.lock().expect("counters lock");
                counters.delivered_commands += 1;
                if duplicate {
                    counters.duplicates_ignored += 1;
                }
                return true;
            }
            Delivered::Stopping => return false,
            Delivered::GaveUp { error, attempts } => {
                return self.park(self.letter(event, Some(index), Some(&command), error, attempts)).await;
            }
            Delivered::Rejected(rejection) => rejection,
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
            COMMAND_REJECTED.to_owned(),
            codec::encode(&rejected),
            format!("{}:{index}:rejected", event.position),
        );
        match self.send(event.stream(), hand_back).await {
            Delivered::Done { .. } => true,
            Delivered::Stopping => false,
            Delivered::Rejected(r) => {
                let error = format!(
                    "{} was rejected ({}), and so was handing that back: {r}",
                    command.command_type, rejected.code
                );
                self.park(self.letter(event, Some(index), Some(&command), error, 1)).await
            }
            Delivered::GaveUp { error, attempts } => {
                let error = format!("handing back a rejection failed: {error}");
                self.park(self.letter(event, Some(index), Some(&command), error, attempts)).await
            }
        }
    }

    /// Send with retries for what may pass (overload, a trap, a storage hiccup).
    async fn send(&self, target: StreamId, request: CommandRequest) -> Delivered {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.context.actors.send(target.clone(), request.clone()).await {
                Ok(reply) => return Delivered::Done { duplicate: reply.replayed },
                Err(CommandError::Rejected(rejection)) => return Delivered::Rejected(rejection),
                Err(CommandError::ShuttingDown) => return Delivered::Stopping,
                Err(error @ CommandError::UnknownType(_)) => {
                    return Delivered::GaveUp { error: error.to_string(), attempts: attempt };
                }
                Err(error) => error,
            };
            if *self.context.shutdown.borrow() {
                return Delivered::Stopping;
            }
            if attempt >= self.context.config.max_attempts {
                return Delivered::GaveUp { error: error.to_string(), attempts: attempt };
            }
            tracing::debug!(subscriber = self.subscriber, %target, "delivery failed, retrying: {error}");
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    fn letter(
        &self,
        event: &StoredEvent,
        index: Option<u64>,
        command: Option<&OutgoingCommand>,
        error: String,
        attempts: u32,
    ) -> DeadLetter {
        DeadLetter {
            subscriber: self.subscriber.clone(),
            position: event.position,
            stream: event.stream().key(),
            event_type: event.event_type.clone(),
            command_index: index,
            target: command.map(|c| format!("{}/{}", c.target_type, c.target_id)),
            command_type: command.map(|c| c.command_type.clone()),
            error,
            attempts,
            parked_at_micros: crate::time::now_micros(),
        }
    }

    /// Store a dead letter; `false` if the host stopped first (the event must then be
    /// delivered again, so the cursor must not pass it).
    async fn park(&self, letter: DeadLetter) -> bool {
        tracing::error!(
            subscriber = self.subscriber,
            position = letter.position,
            "parking a delivery as a dead letter: {}",
            letter.error
        );
        while let Err(error) = self.context.writer.park(letter.clone()).await {
            tracing::error!(subscriber = self.subscriber, "cannot store a dead letter: {error}");
            if *self.context.shutdown.borrow() {
                return false;
            }
            tokio::time::sleep(self.context.config.max_backoff).await;
        }
        self.counters.lock().expect("counters lock").parked += 1;
        true
    }
}
