//! The one queue every durable write goes through, whichever store runs: actors' appends,
//! cursors, dead letters, components, snapshots and retention are requests on it, taken in
//! the order they were made and committed in groups by the store's writer (one transaction
//! and one flush for many of them). [`QueuedWriter`] is the [`StoreWrites`] of any store
//! whose writer takes these requests.

use super::export::ExportRecord;
use super::{
    AppendBatch, AppendError, Committed, CursorStart, DeadLetter, DeadLetterKey, Position, Receipt,
    Reopening, Snapshot, StoreError, StoreWrites, StreamId,
};
use async_trait::async_trait;
use tokio::sync::oneshot;

/// Upper bounds on one group commit, in events and in their payloads' bytes, so one
/// transaction stays reasonably sized (and far below what one PostgreSQL statement takes).
pub(crate) const MAX_EVENTS_PER_COMMIT: usize = 8192;
pub(crate) const MAX_BYTES_PER_COMMIT: usize = 64 << 20;

pub(crate) type Reply = oneshot::Sender<Result<Committed, AppendError>>;
type Done = oneshot::Sender<Result<(), StoreError>>;

pub(crate) enum Request {
    Append(AppendBatch, Reply),
    /// A subscriber's cursor, serialized with the appends it follows.
    Cursor(String, Position, Done),
    /// Park an event for a subscriber (a dead letter), replacing one with the same key.
    Park(DeadLetter, Done),
    /// Remove dead letters: delivered by a retry, or discarded.
    Unpark(Vec<DeadLetterKey>, Done),
    /// A component's registry record, with its bytes for a new version, and the cursor of
    /// its subscriber when it has none yet.
    Component(ComponentWrite, Done),
    /// Forget at most `limit` idempotency keys recorded before the time (µs); answers how
    /// many it forgot.
    ForgetKeys {
        recorded_before: u64,
        limit: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Answered once everything queued before it has been committed (or refused).
    Barrier(oneshot::Sender<()>),
    /// Snapshots a fold passed, for a stream's history (temporal reads).
    KeepSnapshots(StreamId, Vec<Snapshot>, Done),
    /// Records of an export, into a store being imported into.
    Restore(Vec<ExportRecord>, Done),
    /// Commit what was queued before this, then stop.
    Stop,
}

pub(crate) struct ComponentWrite {
    pub name: String,
    pub record: Vec<u8>,
    pub blob: Option<(Vec<u8>, Vec<u8>)>,
    pub cursor: Option<(String, CursorStart)>,
    /// The digest of bytes no version uses any more.
    pub drop_blob: Option<Vec<u8>>,
}

/// Take requests for one group: everything queued after `first`, up to
/// [`MAX_EVENTS_PER_COMMIT`] events or [`MAX_BYTES_PER_COMMIT`] bytes; and whether a `Stop`
/// came (nothing after it is taken).
pub(crate) fn gather(first: Request, mut next: impl FnMut() -> Option<Request>) -> (Vec<Request>, bool) {
    let mut requests = Vec::new();
    let mut events = 0;
    let mut bytes = 0;
    let mut request = Some(first);
    while let Some(taken) = request.take() {
        if let Request::Stop = taken {
            return (requests, true);
        }
        match &taken {
            Request::Append(batch, _) => {
                events += batch.events.len();
                bytes += batch.events.iter().map(|e| e.payload.len()).sum::<usize>();
            }
            Request::Restore(records, _) => events += records.len(),
            _ => {}
        }
        requests.push(taken);
        if events < MAX_EVENTS_PER_COMMIT && bytes < MAX_BYTES_PER_COMMIT {
            request = next();
        }
    }
    (requests, false)
}

/// Answer the barriers of a group that holds nothing else (what came before them is
/// settled); `Some(requests)` when it holds more.
pub(crate) fn only_barriers(requests: Vec<Request>) -> Option<Vec<Request>> {
    if !requests.iter().all(|r| matches!(r, Request::Barrier(_))) {
        return Some(requests);
    }
    for request in requests {
        if let Request::Barrier(reply) = request {
            let _ = reply.send(());
        }
    }
    None
}

/// How a failed group's requests are told.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Failure {
    /// Nothing of the group is stored.
    NotStored,
    /// The group may or may not be stored, and the store could not be read to tell.
    Unknown,
}

/// Answer every request of a group that failed.
pub(crate) fn fail(requests: Vec<Request>, message: &str, failure: Failure) {
    let error = || match failure {
        Failure::NotStored => StoreError::CommitFailed(message.to_owned()),
        Failure::Unknown => StoreError::OutcomeUnknown(message.to_owned()),
    };
    settle(requests, || Err(error().into()), || Err(error()), || Err(error()));
}

/// Answer every request of a group that committed: each append with its answer (in the
/// order of the appends), `ForgetKeys` with how many keys the group forgot.
pub(crate) fn answer(requests: Vec<Request>, appends: Vec<Result<Committed, AppendError>>, forgotten: usize) {
    let mut appends = appends.into_iter();
    settle(requests, || appends.next().expect("an answer for every append"), || Ok(()), || Ok(forgotten));
}

/// Answer each request of a group: appends with `append`, `ForgetKeys` with `forgotten`,
/// the other writes with `done`; barriers once the group is settled either way.
fn settle(
    requests: Vec<Request>,
    mut append: impl FnMut() -> Result<Committed, AppendError>,
    done: impl Fn() -> Result<(), StoreError>,
    forgotten: impl Fn() -> Result<usize, StoreError>,
) {
    for request in requests {
        match request {
            Request::Append(_, reply) => {
                let _ = reply.send(append());
            }
            Request::Cursor(_, _, reply)
            | Request::Park(_, reply)
            | Request::Unpark(_, reply)
            | Request::Component(_, reply)
            | Request::KeepSnapshots(_, _, reply)
            | Request::Restore(_, reply) => {
                let _ = reply.send(done());
            }
            Request::ForgetKeys { reply, .. } => {
                let _ = reply.send(forgotten());
            }
            Request::Barrier(reply) => {
                let _ = reply.send(());
            }
            Request::Stop => {}
        }
    }
}

/// A store's writer as the queue sees it.
#[async_trait]
pub(crate) trait RequestSink: Send + Sync + 'static {
    /// Queue a request; `Closed` when the writer takes no more.
    fn send(&self, request: Request) -> Result<(), StoreError>;

    /// See [`StoreWrites::problem`].
    fn problem(&self) -> Option<String>;

    /// See [`StoreWrites::last_reopening`].
    fn last_reopening(&self) -> Option<Reopening> {
        None
    }

    /// Queue a `Stop` and wait until the writer has committed what came before it.
    async fn stop(&self);
}

/// The [`StoreWrites`] of a store whose writer takes [`Request`]s.
pub(crate) struct QueuedWriter<S>(pub S);

impl<S: RequestSink> QueuedWriter<S> {
    async fn request<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0.send(request(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl<S: RequestSink> StoreWrites for QueuedWriter<S> {
    fn submit(&self, batch: AppendBatch) -> Result<Receipt, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0.send(Request::Append(batch, reply))?;
        Ok(Receipt(answer))
    }

    async fn set_cursor(&self, name: &str, position: Position) -> Result<(), StoreError> {
        self.request(|reply| Request::Cursor(name.to_owned(), position, reply)).await
    }

    async fn park(&self, letter: DeadLetter) -> Result<(), StoreError> {
        self.request(|reply| Request::Park(letter, reply)).await
    }

    async fn unpark(&self, keys: Vec<DeadLetterKey>) -> Result<(), StoreError> {
        self.request(|reply| Request::Unpark(keys, reply)).await
    }

    async fn forget_idempotency_keys(&self, recorded_before: u64, limit: usize) -> Result<usize, StoreError> {
        self.request(|reply| Request::ForgetKeys { recorded_before, limit, reply }).await
    }

    async fn put_component(
        &self,
        name: &str,
        record: Vec<u8>,
        blob: Option<(Vec<u8>, Vec<u8>)>,
        cursor: Option<(String, CursorStart)>,
    ) -> Result<(), StoreError> {
        let write = ComponentWrite { name: name.to_owned(), record, blob, cursor, drop_blob: None };
        self.request(|reply| Request::Component(write, reply)).await
    }

    async fn delete_component_version(
        &self,
        name: &str,
        record: Vec<u8>,
        drop_blob: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let write = ComponentWrite { name: name.to_owned(), record, blob: None, cursor: None, drop_blob };
        self.request(|reply| Request::Component(write, reply)).await
    }

    async fn keep_snapshots(&self, stream: &StreamId, snapshots: Vec<Snapshot>) -> Result<(), StoreError> {
        self.request(|reply| Request::KeepSnapshots(stream.clone(), snapshots, reply)).await
    }

    async fn restore(&self, records: Vec<ExportRecord>) -> Result<(), StoreError> {
        self.request(|reply| Request::Restore(records, reply)).await
    }

    async fn barrier(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0.send(Request::Barrier(reply))?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    fn problem(&self) -> Option<String> {
        self.0.problem()
    }

    fn last_reopening(&self) -> Option<Reopening> {
        self.0.last_reopening()
    }

    async fn shutdown(&self) {
        self.0.stop().await;
    }
}
