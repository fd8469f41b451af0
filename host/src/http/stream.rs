//! `GET /events/stream`: the global log as Server-Sent Events (API.md, The global log and
//! live events). Each event is one `data:` line of EVENT JSON with `id:` its position.
//!
//! A stream reads the log from the store with a [`LogFollower`] at the pace the client
//! takes events: catching up and following live are the same loop, so there is no gap and
//! no duplicate where one turns into the other, and nothing is buffered for a slow client
//! beyond one page. `Last-Event-ID` (sent by browsers when they reconnect) resumes right
//! after that position. Idle streams get a keep-alive comment every 15 s; at shutdown every
//! stream ends with an `end` event.

use super::AppState;
use super::error::ApiError;
use super::extract::{Params, header_text};
use crate::store::{LogFollower, Position, StoredEvent};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Log events read from the store at a time, per stream.
const PAGE: usize = 256;
/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which events a client wants; every given field must match.
#[derive(Debug, Default)]
struct Filter {
    stream_type: Option<String>,
    stream: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
}

impl Filter {
    fn matches(&self, event: &StoredEvent) -> bool {
        self.stream_type.as_ref().is_none_or(|t| *t == event.stream_type)
            && self.stream.as_ref().is_none_or(|s| *s == event.stream().key())
            && self.event_type.as_ref().is_none_or(|t| *t == event.event_type)
            && self.correlation_id.as_ref().is_none_or(|c| *c == event.correlation_id)
    }
}

/// The streams open at once, bounded.
#[derive(Clone)]
pub struct LiveStreams {
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl LiveStreams {
    /// At most `max` streams at once; every stream ends when `shutdown` turns true.
    pub fn new(max: usize, shutdown: watch::Receiver<bool>) -> Self {
        LiveStreams { permits: Arc::new(Semaphore::new(max)), shutdown }
    }
}

struct Reader {
    follower: LogFollower,
    filter: Filter,
    pending: VecDeque<StoredEvent>,
    shutdown: watch::Receiver<bool>,
    ended: bool,
    _permit: OwnedSemaphorePermit,
}

/// `GET /events/stream?after=P&stream_type=&stream=&event_type=&correlation_id=`: the log
/// after `P` (the head when absent: live events only), then live.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = header_text(&headers, "last-event-id", 32)?
        .map(|id| {
            id.trim().parse::<Position>().map_err(|_| {
                ApiError::bad_request("invalid_header", "Last-Event-ID must be an event's position")
            })
        })
        .transpose()?;
    let after = resume.or(params.u64("after")?).unwrap_or_else(|| state.store.head_position());
    let filter = Filter {
        stream_type: params.text("stream_type")?,
        stream: params.text("stream")?,
        event_type: params.text("event_type")?,
        correlation_id: params.text("correlation_id")?,
    };
    let permit = state.live_streams.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many live event streams are open")
    })?;
    let reader = Reader {
        follower: LogFollower::new(state.store.clone(), after),
        filter,
        pending: VecDeque::new(),
        shutdown: state.live_streams.shutdown.clone(),
        ended: false,
        _permit: permit,
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
                return Some(sse_event(&event));
            }
            if self.ended {
                return None;
            }
            if *self.shutdown.borrow() {
                self.ended = true;
                return Some(end("the host is shutting down; resume with Last-Event-ID"));
            }
            match self.follower.next_page(PAGE) {
                Ok(page) if page.is_empty() => {
                    tokio::select! {
                        _ = self.follower.more() => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
                Ok(page) => {
                    let filter = &self.filter;
                    self.pending.extend(page.into_iter().filter(|e| filter.matches(e)));
                }
                Err(error) => {
                    self.ended = true;
                    return Some(end(&format!(
                        "the log could not be read: {error}; resume with Last-Event-ID"
                    )));
                }
            }
        }
    }
}

fn sse_event(event: &StoredEvent) -> Event {
    let json = crate::json::EventJson::from(event);
    let data = serde_json::to_string(&json).expect("an event serializes to JSON");
    Event::default().id(event.position.to_string()).data(data)
}

fn end(reason: &str) -> Event {
    Event::default().event("end").data(serde_json::json!({"reason": reason}).to_string())
}
