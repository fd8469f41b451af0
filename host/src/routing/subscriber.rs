//! One subscriber's run: follow the log, hand each subscribed event to the worker of its
//! source stream, and move the durable cursor as effects finish.
//!
//! Streams proceed independently: a stream that is being retried or is parked holds back
//! only itself. The events in flight across all streams are bounded by a window; the
//! cursor is one below the lowest position still in flight ([`Progress`]), written at most
//! every [`CURSOR_EVERY`], also once the subscriber has caught up. After a crash the events
//! above the durable cursor are delivered again, and the dedup keys make that harmless.

use super::delivery::{Finished, StreamWorker, Work};
use super::progress::Progress;
use super::{Control, SequenceReply, SubscriberShared};
use crate::lifecycle::{RunFailed, RunResult};
use crate::store::{LogFollower, Page, Position, StoreError, StreamId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Log events read per store read: at most 256, and 1 MiB of them past the first.
const PAGE: Page = Page::new(256, 1 << 20);
/// Pages read in one turn before the subscriber lets the other tasks of its worker thread
/// run (catching up over a long stretch it does not subscribe to, say after a rewind).
const PAGES_PER_TURN: usize = 8;
/// The longest the durable cursor lags the in-memory one while events keep finishing.
const CURSOR_EVERY: Duration = Duration::from_millis(50);

/// Where reading the log stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// At the head: only a new commit gives more to read.
    CaughtUp,
    /// The window is full: only finished deliveries make room.
    WindowFull,
    /// There is more to read now; the turn ended to let other tasks run.
    More,
}

/// The queue of one source stream and how much of it is not finished.
struct Lane {
    work: mpsc::UnboundedSender<Work>,
    outstanding: usize,
}

pub(super) struct Subscriber {
    shared: Arc<SubscriberShared>,
    follower: LogFollower,
    progress: Progress,
    stored_cursor: Position,
    last_write: Instant,
    lanes: HashMap<StreamId, Lane>,
    /// The stored size of each event in flight, and their sum: the window's byte budget.
    sizes: HashMap<Position, usize>,
    bytes_in_flight: usize,
    workers: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
}

impl Subscriber {
    pub(super) fn new(shared: Arc<SubscriberShared>, cursor: Position) -> Self {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        Subscriber {
            follower: LogFollower::new(shared.context.store.clone(), cursor),
            shared,
            progress: Progress::from(cursor),
            stored_cursor: cursor,
            last_write: Instant::now(),
            lanes: HashMap::new(),
            sizes: HashMap::new(),
            bytes_in_flight: 0,
            workers: JoinSet::new(),
            finished_tx,
            finished,
        }
    }

    pub(super) async fn run(mut self, controls: &mut mpsc::UnboundedReceiver<Control>) -> RunResult {
        let part = self.shared.context.part.clone();
        tracing::info!(
            subscriber = self.shared.name,
            cursor = self.stored_cursor.get(),
            "routing from cursor"
        );
        loop {
            if part.is_stopping() {
                self.abandon().await;
                return Ok(());
            }
            let reading = match self.read_more().await {
                Ok(reading) => reading,
                Err(error) => {
                    self.abandon().await;
                    return Err(RunFailed(format!("cannot read the log: {error}")));
                }
            };
            let flush_at = self.flush_if_due().await;
            self.shared.counters.lock().expect("counters lock").in_flight = self.progress.in_flight() as u64;
            if reading == Reading::More {
                while let Ok(finished) = self.finished.try_recv() {
                    self.finish(finished);
                }
                if let Ok(control) = controls.try_recv()
                    && let Err(error) = self.control(control).await
                {
                    self.abandon().await;
                    return Err(RunFailed(error));
                }
                tokio::task::yield_now().await;
                continue;
            }
            let caught_up = reading == Reading::CaughtUp;
            tokio::select! {
                _ = part.token().cancelled() => {}
                Some(control) = controls.recv() => {
                    if let Err(error) = self.control(control).await {
                        self.abandon().await;
                        return Err(RunFailed(error));
                    }
                }
                Some(finished) = self.finished.recv() => {
                    self.finish(finished);
                    while let Ok(finished) = self.finished.try_recv() {
                        self.finish(finished);
                    }
                }
                Some(joined) = self.workers.join_next(), if !self.workers.is_empty() => {
                    if let Err(error) = joined && error.is_panic() {
                        let message = crate::lifecycle::panic_message(error.into_panic());
                        self.abandon().await;
                        return Err(RunFailed(format!("a delivery task panicked: {message}")));
                    }
                }
                _ = self.follower.more(), if caught_up => {}
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {}
            }
        }
    }

    /// Read and dispatch log events while the window has room, for a few pages.
    async fn read_more(&mut self) -> Result<Reading, StoreError> {
        let context = self.shared.context.clone();
        for _ in 0..PAGES_PER_TURN {
            let room = context.config.window.saturating_sub(self.progress.in_flight());
            if room == 0 || self.bytes_in_flight >= context.config.window_bytes {
                return Ok(Reading::WindowFull);
            }
            let wanted = room.min(PAGE.events);
            let events = self.follower.next_page(Page::new(wanted, PAGE.bytes)).await?;
            let Some(last) = events.last().map(|e| e.position) else { return Ok(Reading::CaughtUp) };
            let component = context.components.active(&self.shared.name);
            for event in events {
                let Some(info) = component.as_ref().map(|active| active.component.info()) else { continue };
                // An event stored in an older schema than its producer's active version reads
                // may be of another type once upcast: its delivery upcasts it and decides.
                let stale = context
                    .components
                    .active(&event.stream_type)
                    .is_some_and(|producer| crate::upcast::is_stale(&producer.component, &event));
                // A subscription that takes only replies sees the events caused by commands
                // that reactions to this component's own type's events sent.
                let wanted = if stale {
                    info.subscriptions.iter().any(|s| s.source_type == event.stream_type)
                } else {
                    info.reacts_to(&event.stream_type, &event.event_type, false)
                        || (info.reacts_to(&event.stream_type, &event.event_type, true)
                            && context.store.is_reply_to(&event, &self.shared.name).await?)
                };
                if wanted {
                    self.progress.start(event.position);
                    let size = event.payload.len();
                    self.sizes.insert(event.position, size);
                    self.bytes_in_flight += size;
                    self.dispatch(event.stream(), Work::Event(Box::new(event)));
                }
            }
            self.progress.read_up_to(last);
        }
        Ok(Reading::More)
    }

    /// Queue work for a stream, starting its worker if it has none.
    fn dispatch(&mut self, stream: StreamId, work: Work) {
        let lane = self.lanes.entry(stream.clone()).or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let worker = StreamWorker { shared: self.shared.clone(), stream };
            self.workers.spawn(worker.run(receiver, self.finished_tx.clone()));
            Lane { work: sender, outstanding: 0 }
        });
        lane.outstanding += 1;
        // The worker only ends when its lane is dropped or it is aborted, so this arrives.
        let _ = lane.work.send(work);
    }

    fn finish(&mut self, finished: Finished) {
        if let Some(position) = finished.position {
            self.progress.finish(position);
            self.bytes_in_flight -= self.sizes.remove(&position).unwrap_or(0);
        }
        if let Some(lane) = self.lanes.get_mut(&finished.stream) {
            lane.outstanding -= 1;
            if lane.outstanding == 0 {
                // Dropping the sender ends the idle worker.
                self.lanes.remove(&finished.stream);
            }
        }
    }

    /// Write the cursor if it moved and is due; answers when the next write is due.
    async fn flush_if_due(&mut self) -> Option<Instant> {
        if self.progress.cursor() <= self.stored_cursor {
            return None;
        }
        // Also when caught up: a subscriber that follows every group commit would otherwise
        // add a commit (an fsync) of its own for nearly each one. Redelivery after a crash
        // covers at most this interval, and the dedup keys make it harmless.
        let due = self.last_write + CURSOR_EVERY;
        if Instant::now() < due {
            return Some(due);
        }
        self.write_cursor(self.progress.cursor()).await;
        (self.progress.cursor() > self.stored_cursor).then(|| Instant::now() + CURSOR_EVERY)
    }

    async fn write_cursor(&mut self, cursor: Position) -> bool {
        self.last_write = Instant::now();
        let name = crate::store::reaction_cursor(&self.shared.name);
        match self.shared.context.writer.set_cursor(&name, cursor).await {
            Ok(()) => {
                self.stored_cursor = cursor;
                self.shared.counters.lock().expect("counters lock").cursor = cursor;
                true
            }
            Err(error) => {
                // Retried at the next flush; meanwhile a crash only means redelivery.
                tracing::error!(subscriber = self.shared.name, "cannot store the cursor: {error}");
                false
            }
        }
    }

    async fn control(&mut self, control: Control) -> Result<(), String> {
        match control {
            Control::Rewind(position, done) => {
                self.abandon().await;
                tracing::info!(
                    subscriber = self.shared.name,
                    from = self.stored_cursor.get(),
                    to = position.get(),
                    "cursor moved by an operator"
                );
                if !self.write_cursor(position).await {
                    return Err("could not store the rewound cursor".to_owned());
                }
                self.progress = Progress::from(position);
                self.follower.seek(position);
                self.reload_parked().await?;
                let _ = done.send(());
            }
            Control::Retry(stream, reply) => self.queue_on_parked_streams(stream, Work::Retry, reply),
            Control::Discard(stream, reply) => self.queue_on_parked_streams(stream, Work::Discard, reply),
        }
        Ok(())
    }

    /// Queue a retry or discard on `stream` (or on every parked stream) behind the work each
    /// already has, and answer, without waiting here, how many events each released.
    fn queue_on_parked_streams(
        &mut self,
        stream: Option<StreamId>,
        work: fn(oneshot::Sender<u64>) -> Work,
        reply: SequenceReply,
    ) {
        let streams: Vec<StreamId> = match stream {
            Some(stream) => vec![stream],
            None => self.shared.parked.lock().expect("parked lock").keys().cloned().collect(),
        };
        let mut answers = Vec::with_capacity(streams.len());
        for stream in streams {
            let (answer, answered) = oneshot::channel();
            self.dispatch(stream.clone(), work(answer));
            answers.push((stream, answered));
        }
        tokio::spawn(async move {
            let mut counts = Vec::with_capacity(answers.len());
            for (stream, answered) in answers {
                // A worker that stopped first answers nothing: the caller sees a shorter list.
                if let Ok(count) = answered.await {
                    counts.push((stream, count));
                }
            }
            let _ = reply.send(counts);
        });
    }

    async fn reload_parked(&self) -> Result<(), String> {
        let parked = self
            .shared
            .context
            .store
            .parked_streams(&self.shared.name)
            .await
            .map_err(|e| format!("cannot read the parked streams: {e}"))?;
        *self.shared.parked.lock().expect("parked lock") = parked;
        Ok(())
    }

    /// Stop every worker where it is and keep what is known done: the cursor stays below
    /// every unfinished event, which is delivered again by the next run.
    async fn abandon(&mut self) {
        self.workers.abort_all();
        while self.workers.join_next().await.is_some() {}
        while let Ok(finished) = self.finished.try_recv() {
            if let Some(position) = finished.position {
                self.progress.finish(position);
            }
        }
        self.lanes.clear();
        self.sizes.clear();
        self.bytes_in_flight = 0;
        let cursor = self.progress.cursor();
        if cursor > self.stored_cursor {
            self.write_cursor(cursor).await;
        }
    }
}
