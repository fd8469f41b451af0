//! `GET /events/stream`: the global log as Server-Sent Events (API.md, The global log and
//! live events). Each event is one `data:` line of EVENT JSON with `id:` its position.
//!
//! A stream reads the log from the store with a [`LogFollower`] at the pace the client
//! takes events: catching up and following live are the same loop, so there is no gap and
//! no duplicate where one turns into the other, and nothing is buffered for a slow client
//! beyond one page. `Last-Event-ID` (sent by browsers when they reconnect) resumes right
//! after that position. Idle streams get a keep-alive comment every 15 s.
//!
//! A stream ends with an `end` event (`{"reason", "resume_after"}`) at shutdown and when a
//! client that had caught up falls more than `max_lag` events behind the head: pulling keeps
//! memory bounded either way, but a client that cannot keep up with the live log would
//! otherwise hold one of the bounded stream slots while serving it ever older pages, and it
//! would not know it is behind.

use super::AppState;
use super::connections::ClientAddress;
use super::error::ApiError;
use super::extract::{Params, header_text};
use super::openapi::ErrorBody;
use crate::components::ComponentRegistry;
use crate::store::{EventStore, LogFollower, Page, Position, StoredEvent, StreamId};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Log events read from the store at a time, per stream: at most 256, and at most 1 MiB of
/// them (past the first), so a slow client costs one small page of memory whatever the
/// events weigh.
const PAGE: Page = Page::new(256, 1 << 20);
/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which events a client wants; every given field must match.
#[derive(Debug, Default)]
struct Filter {
    stream_type: Option<String>,
    stream: Option<StreamId>,
    event_type: Option<String>,
    correlation_id: Option<String>,
}

impl Filter {
    fn matches(&self, event: &StoredEvent) -> bool {
        self.stream_type.as_ref().is_none_or(|t| *t == event.stream_type)
            && self
                .stream
                .as_ref()
                .is_none_or(|s| s.type_name == event.stream_type && s.id == event.stream_id)
            && self.event_type.as_ref().is_none_or(|t| *t == event.event_type)
            && self.correlation_id.as_ref().is_none_or(|c| *c == event.correlation_id)
    }
}

/// The streams open at once, bounded in all and per client.
#[derive(Clone)]
pub struct LiveStreams {
    permits: Arc<Semaphore>,
    max_per_client: usize,
    /// Open streams by client address.
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_lag: u64,
    stopping: CancellationToken,
}

impl LiveStreams {
    /// At most `max` streams at once, `max_per_client` of them from one client address, each
    /// ended once it falls `max_lag` events behind after catching up; every stream ends when
    /// `stopping` is cancelled.
    pub fn new(max: usize, max_per_client: usize, max_lag: u64, stopping: CancellationToken) -> Self {
        LiveStreams {
            permits: Arc::new(Semaphore::new(max)),
            max_per_client: max_per_client.max(1),
            clients: Arc::default(),
            max_lag,
            stopping,
        }
    }

    /// A slot for one more stream of `client`, or why there is none.
    fn open(&self, client: Option<IpAddr>) -> Result<Slot, ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many live event streams are open",
            )
            .retry_after(1)
        })?;
        if let Some(client) = client {
            let mut clients = self.clients.lock().expect("live stream clients lock");
            let open = clients.entry(client).or_insert(0);
            if *open >= self.max_per_client {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "this client has {} live event streams open, the most one client may (--stream-max-per-client)",
                        self.max_per_client
                    ),
                )
                .retry_after(1));
            }
            *open += 1;
        }
        Ok(Slot { _permit: permit, client, clients: self.clients.clone() })
    }
}

/// One open stream's place in the bounds, given back when the stream ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    client: Option<IpAddr>,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut clients = self.clients.lock().expect("live stream clients lock");
            if let Some(open) = clients.get_mut(&client) {
                *open -= 1;
                if *open == 0 {
                    clients.remove(&client);
                }
            }
        }
    }
}

struct Reader {
    store: EventStore,
    follower: LogFollower,
    filter: Filter,
    pending: VecDeque<StoredEvent>,
    /// The position of the last event read, sent or filtered out: where to resume.
    read_to: Position,
    /// Whether the stream has reached the head once; only then can it fall behind.
    caught_up: bool,
    max_lag: u64,
    stopping: CancellationToken,
    ended: bool,
    /// With `?upcast=true`: the components whose active versions upcast the events.
    upcast: Option<Arc<ComponentRegistry>>,
    /// Why the stream ends once `pending` is sent: an event it cannot upcast.
    closing: Option<String>,
    _slot: Slot,
}

/// `GET /events/stream?after=P&stream_type=&stream=&event_type=&correlation_id=`: the log
/// after `P` (the head when absent: live events only), then live.
#[utoipa::path(get, path = "/events/stream", tag = "log",
    summary = "The log as Server-Sent Events: catch up, then live",
    description = "Each event is an SSE message with `id:` its position and `data:` the EVENT JSON. \
        The stream ends with an `end` event `{\"reason\", \"resume_after\"}` at shutdown or when a \
        client that had caught up falls too far behind the head.",
    params(
        ("after" = Option<u64>, Query, description = "Start after this position (default: the head, so only new events)"),
        ("stream_type" = Option<String>, Query, description = "Only events of this aggregate type"),
        ("stream" = Option<String>, Query, description = "Only events of this stream, e.g. `account/101`"),
        ("event_type" = Option<String>, Query, description = "Only events of this type"),
        ("correlation_id" = Option<String>, Query, description = "Only events of this saga"),
        ("upcast" = Option<bool>, Query, description = "Send the events as the active versions' consumers read them (after their producers' upcasters), not as stored; `event_type` then matches the upcast type"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume right after this position (overrides `after`)"),
    ),
    responses(
        (status = 200, description = "An endless stream of events", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad query or Last-Event-ID", body = ErrorBody),
        (status = 503, description = "Too many streams are open", body = ErrorBody),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    params: Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = header_text(&headers, "last-event-id", 32)?
        .map(|id| {
            id.trim()
                .parse::<Position>()
                .ok()
                .filter(|position| position.get() <= super::extract::MAX_QUERY_INTEGER)
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_header", "Last-Event-ID must be an event's position")
                })
        })
        .transpose()?;
    let after = resume.or(params.u64("after")?.map(Position)).unwrap_or_else(|| state.store.head_position());
    let filter = Filter {
        stream_type: params.text("stream_type")?,
        stream: params.stream("stream")?,
        event_type: params.text("event_type")?,
        correlation_id: params.text("correlation_id")?,
    };
    let upcast = params.flag("upcast")?.then(|| state.components.clone());
    let slot = state.live_streams.open(client.map(|Extension(ClientAddress(address))| address.ip()))?;
    let reader = Reader {
        store: state.store.clone(),
        follower: LogFollower::new(state.store.clone(), after),
        filter,
        pending: VecDeque::new(),
        read_to: after,
        caught_up: false,
        max_lag: state.live_streams.max_lag,
        stopping: state.live_streams.stopping.clone(),
        ended: false,
        upcast,
        closing: None,
        _slot: slot,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok(event), reader))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

impl Reader {
    /// The next SSE event, waiting for commits when everything is sent; `None` once ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let behind = self.store.head_position().saturating_sub(event.position);
                if self.caught_up && behind > self.max_lag {
                    self.pending.clear();
                    self.ended = true;
                    let reason = format!(
                        "the client fell {behind} events behind the head (at most {} allowed); \
                         resume with Last-Event-ID",
                        self.max_lag
                    );
                    return Some(end(&reason, event.position - 1));
                }
                return Some(sse_event(&event));
            }
            if self.ended {
                return None;
            }
            if let Some(reason) = self.closing.take() {
                self.ended = true;
                return Some(end(&reason, self.read_to));
            }
            if self.stopping.is_cancelled() {
                self.ended = true;
                return Some(end("the host is shutting down; resume with Last-Event-ID", self.read_to));
            }
            match self.follower.next_page(PAGE).await {
                Ok(page) if page.is_empty() => {
                    self.caught_up = true;
                    tokio::select! {
                        _ = self.follower.more() => {}
                        _ = self.stopping.cancelled() => {}
                    }
                }
                Ok(page) => {
                    let (page, unreadable) = self.upcast(page).await;
                    match unreadable {
                        None => {}
                        // Overload: what was upcast goes out, the rest is read again shortly.
                        Some(Unreadable::Busy) => {
                            let resume = page.last().map_or(self.read_to, |e| e.position);
                            self.follower.seek(resume);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Some(Unreadable::Event(reason)) => self.closing = Some(reason),
                    }
                    self.read_to = page.last().map_or(self.read_to, |e| e.position);
                    let filter = &self.filter;
                    self.pending.extend(page.into_iter().filter(|e| filter.matches(e)));
                    if self.pending.is_empty() {
                        // A filter catching up over events it does not want reads page after
                        // page without sending anything: let the other tasks of this worker
                        // thread run between pages.
                        tokio::task::yield_now().await;
                    }
                }
                Err(error) => {
                    self.ended = true;
                    let reason = format!("the log could not be read: {error}; resume with Last-Event-ID");
                    return Some(end(&reason, self.read_to));
                }
            }
        }
    }
}

/// Why a page could not be upcast past some event.
enum Unreadable {
    /// Every guest instance slot was busy.
    Busy,
    /// The event's producer cannot upcast it: why, and how to go on.
    Event(String),
}

impl Reader {
    /// `page` as the client asked for it, up to the first event that could not be upcast,
    /// and why it could not.
    async fn upcast(&self, mut page: Vec<StoredEvent>) -> (Vec<StoredEvent>, Option<Unreadable>) {
        let Some(components) = self.upcast.clone() else { return (page, None) };
        // Upcasting runs guest code: off the async threads.
        let upcast = tokio::task::spawn_blocking(move || {
            match crate::upcast::upcast_selected(|t| components.active(t), &mut page, |_| true) {
                Ok(()) => (page, None),
                Err(error) if error.is_transient() => {
                    page.truncate(error.index);
                    (page, Some(Unreadable::Busy))
                }
                Err(error) => {
                    let position = page[error.index].position;
                    page.truncate(error.index);
                    let reason = format!(
                        "{error}; resume with Last-Event-ID: {position} to skip it, or read it as stored \
                         (without upcast)"
                    );
                    (page, Some(Unreadable::Event(reason)))
                }
            }
        });
        upcast.await.unwrap_or_else(|e| {
            (
                Vec::new(),
                Some(Unreadable::Event(format!("the upcast task failed: {e}; resume with Last-Event-ID"))),
            )
        })
    }
}

fn sse_event(event: &StoredEvent) -> Event {
    let json = super::event_json::EventJson::from(event);
    let data = serde_json::to_string(&json).expect("an event serializes to JSON");
    Event::default().id(event.position.to_string()).data(data)
}

/// The last event of a stream: why it ends, and the position to resume after.
fn end(reason: &str, resume_after: Position) -> Event {
    let data = serde_json::json!({"reason": reason, "resume_after": resume_after});
    Event::default().event("end").data(data.to_string())
}
