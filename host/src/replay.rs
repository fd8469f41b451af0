//! Rebuilding an aggregate's state from its events with one component version: what an
//! actor does when it wakes or the active version changes, what a temporal read does, and
//! what a deploy's replay check does with a new version before it may go live.
//!
//! Events are read in chunks and each chunk is folded in one guest call (`apply-events`):
//! crossing the component boundary costs more than a fold step. When a chunk traps, the
//! events of that chunk are folded one at a time to name the one that failed. Events stored
//! in an older schema than the component's are upcast first (`crate::upcast`).

use crate::runtime::{AggregateComponent, GuestError};
use crate::store::{EventStore, Page, StoreError, StreamId, Version};
use cairn_wire::RawEvent;
use tokio_util::sync::CancellationToken;

/// Events read from the store per chunk: at most 4096, and 8 MiB of them past the first.
const CHUNK: Page = Page::new(4096, 8 << 20);

/// Wait for a store read from a fold. Folds run on blocking threads (`spawn_blocking`),
/// which keeps guest calls off the async threads; their reads are waited for there.
///
/// # Panics
/// On an async worker thread or outside a runtime: folds must run in `spawn_blocking`.
pub(crate) fn wait_for<F: Future>(read: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(read)
}

/// Why a stream's state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The component failed on the event at `version` (its fold trapped or ran out of time,
    /// e.g. because it cannot decode that event).
    #[error("event {version} ({event_type}): {error}")]
    Guest { version: Version, event_type: String, error: GuestError },
    /// The component's upcasters failed on a stored event before the fold could read it.
    #[error(transparent)]
    Upcast(Box<crate::upcast::UpcastError>),
    /// Whoever asked stopped waiting (a request that timed out), so the fold stopped.
    #[error("the fold was cancelled")]
    Cancelled,
}

/// How a fold goes: where it may stop early, and which states it keeps on the way.
#[derive(Debug, Default)]
pub struct Fold<'a> {
    /// Set when the fold's answer is no longer wanted; checked between chunks.
    pub cancelled: Option<&'a CancellationToken>,
    /// Keep the state at every multiple of this many versions (a snapshot interval), so a
    /// long fold leaves snapshots behind it and the next one is short.
    pub checkpoint_every: Option<u64>,
}

/// The most bytes of snapshot history per event it saves from folding: a snapshot joins a
/// stream's history only if its state is at most this many bytes per event since the last
/// one. A small state is kept at every interval; a large one less often, so the history
/// stays the size of the log (about one event's worth per event), not the square of it
/// for a state that grows with its stream.
pub const HISTORY_BYTES_PER_EVENT: usize = 256;

/// Whether a snapshot of `state_bytes`, `since` events after the stream's last history
/// snapshot, is worth keeping in the history.
pub fn worth_keeping(state_bytes: usize, since: u64) -> bool {
    (state_bytes as u64) <= HISTORY_BYTES_PER_EVENT as u64 * since
}

/// The most state bytes a fold keeps as checkpoints: a long stream of large states would
/// otherwise hold them all in memory at once. Past it the fold keeps none; later folds fill
/// in the rest.
const CHECKPOINT_BYTES: usize = 32 << 20;

/// The state of a stream after a fold, and what it kept on the way.
#[derive(Debug)]
pub struct Folded {
    pub state: Option<Vec<u8>>,
    pub version: Version,
    /// `(version, state)` at each multiple of `checkpoint_every` the fold passed.
    pub checkpoints: Vec<(Version, Option<Vec<u8>>)>,
}

/// Fold the events of `stream` after `version`, up to `up_to`, into `state`; returns the
/// state and the version it reached. Runs guest code and waits for store reads: call it from
/// a blocking thread (`spawn_blocking`), never on an async worker thread.
pub fn replay(
    component: &AggregateComponent,
    store: &EventStore,
    stream: &StreamId,
    state: Option<Vec<u8>>,
    version: Version,
    up_to: Version,
) -> Result<(Option<Vec<u8>>, Version), ReplayError> {
    let folded = replay_with(component, store, stream, state, version, up_to, &Fold::default())?;
    Ok((folded.state, folded.version))
}

/// [`replay`], cancellable and keeping checkpoints as `fold` asks.
pub fn replay_with(
    component: &AggregateComponent,
    store: &EventStore,
    stream: &StreamId,
    mut state: Option<Vec<u8>>,
    mut version: Version,
    up_to: Version,
    fold: &Fold<'_>,
) -> Result<Folded, ReplayError> {
    let mut checkpoints = Vec::new();
    let mut checkpoint_bytes = 0;
    let mut last_kept = version;
    while version < up_to {
        if fold.cancelled.is_some_and(CancellationToken::is_cancelled) {
            return Err(ReplayError::Cancelled);
        }
        // A chunk ends at the next checkpoint, so the state there is one the fold reaches.
        let chunk_end = match fold.checkpoint_every.filter(|&every| every > 0) {
            Some(every) => up_to.min(Version((version.get() / every + 1).saturating_mul(every))),
            None => up_to,
        };
        let mut events = wait_for(store.read_stream_range(stream, version + 1, chunk_end, CHUNK))?;
        let Some(last) = events.last().map(|e| e.version) else { break };
        let first = version + 1;
        crate::upcast::upcast_with(component, &mut events).map_err(|e| ReplayError::Upcast(Box::new(e)))?;
        let raw: Vec<RawEvent> =
            events.into_iter().map(|e| RawEvent { event_type: e.event_type, payload: e.payload }).collect();
        state = match component.apply_events(state.as_deref(), &raw) {
            Ok(folded) => folded,
            Err(error) => return Err(locate_failure(component, state, first, &raw, error)),
        };
        version = last;
        if let Some(every) = fold.checkpoint_every
            && every > 0
            && version.get().is_multiple_of(every)
            && checkpoint_bytes < CHECKPOINT_BYTES
            && worth_keeping(state.as_ref().map_or(0, Vec::len), version.saturating_sub(last_kept))
        {
            checkpoint_bytes += state.as_ref().map_or(0, Vec::len);
            checkpoints.push((version, state.clone()));
            last_kept = version;
        }
    }
    Ok(Folded { state, version, checkpoints })
}

/// Fold `events` (versions from `first`) one at a time to find the one the component fails
/// on; `chunk_error` is the answer if none fails alone.
fn locate_failure(
    component: &AggregateComponent,
    mut state: Option<Vec<u8>>,
    first: Version,
    events: &[RawEvent],
    chunk_error: GuestError,
) -> ReplayError {
    for (offset, event) in events.iter().enumerate() {
        match component.apply_events(state.as_deref(), std::slice::from_ref(event)) {
            Ok(folded) => state = folded,
            Err(error) => {
                return ReplayError::Guest {
                    version: first + offset as u64,
                    event_type: event.event_type.clone(),
                    error,
                };
            }
        }
    }
    let last = events.last();
    ReplayError::Guest {
        version: first + events.len().saturating_sub(1) as u64,
        event_type: last.map(|e| e.event_type.clone()).unwrap_or_default(),
        error: chunk_error,
    }
}
