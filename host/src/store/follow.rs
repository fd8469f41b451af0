//! Following the global log: read forward page by page from a position, and wait for the
//! next commit once everything is read. Routing's subscribers and the projections both
//! follow the log with it; neither polls with a sleep.

use super::{EventStore, Page, Position, StoreError, StoredEvent};
use tokio::sync::watch;

pub struct LogFollower {
    store: EventStore,
    head: watch::Receiver<Position>,
    /// The position of the last event read (or the start position).
    after: Position,
}

impl LogFollower {
    /// A follower that reads the events after `after` next.
    pub fn new(store: EventStore, after: Position) -> Self {
        let head = store.subscribe_head();
        LogFollower { store, head, after }
    }

    /// Read on from the event after `after`.
    pub fn seek(&mut self, after: Position) {
        self.after = after;
    }

    /// A page of the events after the last one read, in log order; empty when the follower
    /// has read everything committed.
    pub async fn next_page(&mut self, page: impl Into<Page>) -> Result<Vec<StoredEvent>, StoreError> {
        // Mark the head seen before reading, so a commit during the read wakes `more`.
        self.head.borrow_and_update();
        let events = self.store.read_all(self.after, page.into()).await?;
        if let Some(last) = events.last() {
            self.after = last.position;
        }
        Ok(events)
    }

    /// Wait until the log has events after the last one read. Cancel-safe, for `select!`.
    pub async fn more(&mut self) {
        while *self.head.borrow_and_update() <= self.after {
            if self.head.changed().await.is_err() {
                // The writer is gone: nothing will ever be committed again.
                std::future::pending::<()>().await;
            }
        }
    }
}
