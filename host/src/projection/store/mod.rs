//! The view store: the projections' documents, each projection's generations and the
//! position each has handled the log up to. Views are derived data: they can always be
//! rebuilt from the log, so a store may make their commits durable lazily (a crash takes a
//! view back a little, never apart), but a batch's documents and its cursor always commit
//! together.
//!
//! [`ViewStore`] is what the projections need of it; [`embedded`] keeps views in a redb
//! file of their own beside the event store, [`postgres`] in the PostgreSQL database that
//! holds the log.

pub mod embedded;
pub mod postgres;

use crate::runtime::{DocumentReader, Writes};
use crate::store::{ComponentVersion, Position, StoreError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The view store the projections use, cheap to clone.
pub type Views = Arc<dyn ViewStore>;

/// One generation of a view: its documents' table, the component version that builds it,
/// and the position it has handled the log up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub id: u32,
    pub version: ComponentVersion,
    pub cursor: Position,
}

/// What is kept per projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// The generation readers get.
    pub live: Generation,
    /// A generation being built beside it (a rebuild), switched to once caught up.
    pub next: Option<Generation>,
}

impl ViewRecord {
    pub(crate) fn generation_mut(&mut self, id: u32) -> Option<&mut Generation> {
        if self.live.id == id {
            Some(&mut self.live)
        } else {
            self.next.as_mut().filter(|next| next.id == id)
        }
    }

    /// A fresh generation number.
    pub fn new_generation_id(&self) -> u32 {
        self.live.id.max(self.next.map_or(0, |n| n.id)) + 1
    }
}

/// How committing a projection batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCommit {
    Done,
    /// The generation is no longer the projection's.
    GenerationGone,
    /// The generation's stored cursor is this, not where the batch started: read again from it.
    CursorMoved(Position),
}

/// Everything the projections keep and read.
#[async_trait]
pub trait ViewStore: Send + Sync + 'static {
    /// Every projection's record.
    async fn records(&self) -> Result<BTreeMap<String, ViewRecord>, StoreError>;

    /// Store a projection's record as given (a new projection, a rebuild starting); a
    /// generation that is no longer in it loses its documents.
    async fn put_record(&self, name: &str, record: &ViewRecord) -> Result<(), StoreError>;

    /// Commit a batch: `writes` into generation `generation`'s documents and its cursor moved
    /// from `from` to `cursor`, in one transaction. Refused when the generation is no longer
    /// the projection's (a rebuild replaced it meanwhile), and when its stored cursor is not
    /// `from`: the batch was read for a view the store no longer holds (a crash or reopen
    /// took back commits that were not yet durable), so committing it would skip the events
    /// in between.
    async fn commit(
        &self,
        name: &str,
        generation: u32,
        writes: &Writes,
        from: Position,
        cursor: Position,
    ) -> Result<BatchCommit, StoreError>;

    /// Make every commit so far durable (at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Make the generation being built the live one, and drop the old one's documents.
    async fn switch(&self, name: &str, generation: u32) -> Result<Option<ViewRecord>, StoreError>;

    /// The live generation's document under `key`, and the position the view had handled
    /// when it was read. `None` for a projection with no view yet.
    async fn document(&self, name: &str, key: &str)
    -> Result<Option<(Position, Option<String>)>, StoreError>;

    /// The live generation's keys after `after`, at most `limit`, leaving out the
    /// projection's own bookkeeping (keys starting with `_`); and the view's position.
    async fn keys(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Position, Vec<String>)>, StoreError>;

    /// How many documents a generation holds (bookkeeping included).
    async fn document_count(&self, name: &str, generation: u32) -> Result<u64, StoreError>;

    /// The committed documents of a generation, for a batch's guest to read. The guest reads
    /// them synchronously in the middle of its call, which runs on a blocking thread: a
    /// reader may wait there for its store.
    async fn reader(&self, name: &str, generation: u32) -> Result<Box<dyn DocumentReader>, StoreError>;
}
