//! Projections: read models built from committed events.
//!
//! A projection names the events it subscribes to and, for each one, updates JSON
//! documents in a view the host keeps (`views.redb`). The host calls [`Projection::handle`]
//! for every subscribed event in log order, in batches; the documents a batch writes commit
//! together with the view's position, so after a crash no update is lost or applied twice.
//! Within a batch, [`View::get`] sees the batch's own writes.
//!
//! Documents are plain serde types: the SDK turns them into JSON text and back, so a
//! projection never touches JSON or wit-bindgen. Keys that start with `_` are the
//! projection's own bookkeeping (an index for a join, say): stored and committed like any
//! other document, never listed or served over HTTP.
//!
//! ```
//! use cairn_guest::{EventEnvelope, Projection, Subscription, View};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Total { count: u64 }
//!
//! #[derive(Deserialize)]
//! struct Added { amount: i64 }
//!
//! struct Totals;
//!
//! impl Projection for Totals {
//!     const NAME: &'static str = "totals";
//!
//!     fn subscriptions() -> Vec<Subscription> {
//!         vec![Subscription::to("counter", ["Added"])]
//!     }
//!
//!     fn handle(event: &EventEnvelope, view: &mut View<'_>) {
//!         let Ok(Added { amount }) = event.data::<Added>() else { return };
//!         let mut total: Total = view.get(&event.stream_id).unwrap_or_default();
//!         total.count += amount as u64;
//!         view.put(&event.stream_id, &total);
//!     }
//! }
//! // In a cdylib crate: cairn_guest::export_projection!(Totals);
//! ```

use crate::{EventEnvelope, Subscription};
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::collections::BTreeMap;

/// A read model: which events it follows and what each does to its documents.
pub trait Projection {
    /// The projection's name in kebab-case: the `{projection}` in `/views/{projection}/{key}`.
    const NAME: &'static str;

    /// The events this projection is handed, of one or more aggregate types.
    fn subscriptions() -> Vec<Subscription>;

    /// Update the view for one committed event. Must not fail: the event already
    /// happened. A panic stops the projection at this event (the host reports it in
    /// `GET /views` and keeps serving the documents as they were).
    fn handle(event: &EventEnvelope, view: &mut View<'_>);
}

/// Where documents are read from and written to, as JSON text: the host's view store in
/// a component, a map in tests.
pub trait DocumentStore {
    fn get(&mut self, key: &str) -> Option<String>;
    fn put(&mut self, key: &str, document: String);
    fn delete(&mut self, key: &str);
}

/// An in-memory document store: what the test kit runs projections against.
impl DocumentStore for BTreeMap<String, String> {
    fn get(&mut self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }

    fn put(&mut self, key: &str, document: String) {
        self.insert(key.to_owned(), document);
    }

    fn delete(&mut self, key: &str) {
        self.remove(key);
    }
}

/// The projection's documents, typed.
///
/// Documents changed through [`View::update`] stay decoded in the view until it is dropped
/// (or the document is read, written or deleted another way), then are written once: a
/// batch of events that change one document many times reads and writes its JSON once.
pub struct View<'a> {
    store: &'a mut dyn DocumentStore,
    /// Documents `update` changed and has not written yet, by key.
    pending: BTreeMap<String, Pending>,
}

/// A decoded document waiting to be written, with the function that writes it as JSON.
struct Pending {
    document: Box<dyn Any>,
    to_json: fn(&str, &dyn Any) -> String,
}

fn to_json<D: Serialize + 'static>(key: &str, document: &dyn Any) -> String {
    let document = document.downcast_ref::<D>().expect("a pending document keeps its type");
    serde_json::to_string(document)
        .unwrap_or_else(|e| panic!("the document {key:?} cannot be written as JSON: {e}"))
}

impl<'a> View<'a> {
    pub fn new(store: &'a mut dyn DocumentStore) -> Self {
        View { store, pending: BTreeMap::new() }
    }

    /// The document under `key`, if there is one.
    ///
    /// # Panics
    /// The stored document does not decode as `D`: it was written with another type, which
    /// a deploy of a new version (which rebuilds the view from the log) resolves.
    pub fn get<D: DeserializeOwned>(&mut self, key: &str) -> Option<D> {
        self.write_pending(key);
        let text = self.store.get(key)?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("the document {key:?} does not decode as {}: {e}", std::any::type_name::<D>())
        }))
    }

    /// Store `document` under `key`, replacing what was there.
    pub fn put<D: Serialize + ?Sized>(&mut self, key: &str, document: &D) {
        self.pending.remove(key);
        let text = serde_json::to_string(document)
            .unwrap_or_else(|e| panic!("the document {key:?} cannot be written as JSON: {e}"));
        self.store.put(key, text);
    }

    /// Remove the document under `key` (nothing happens if there is none).
    pub fn delete(&mut self, key: &str) {
        self.pending.remove(key);
        self.store.delete(key);
    }

    /// Read the document under `key` (or `D::default()`), change it with `f`, store it;
    /// answers what `f` answers. The document stays decoded in the view, so the next
    /// `update` of it in the same batch neither reads nor writes JSON: `D`'s JSON form should
    /// hold all of it (no `#[serde(skip)]` field `f` relies on), since between the events of a
    /// batch `f` sees the value, not its JSON read back.
    pub fn update<D, R>(&mut self, key: &str, f: impl FnOnce(&mut D) -> R) -> R
    where
        D: Serialize + DeserializeOwned + Default + 'static,
    {
        if let Some(pending) = self.pending.get_mut(key)
            && let Some(document) = pending.document.downcast_mut::<D>()
        {
            return f(document);
        }
        let mut document: D = self.get(key).unwrap_or_default();
        let answer = f(&mut document);
        self.pending.insert(key.to_owned(), Pending { document: Box::new(document), to_json: to_json::<D> });
        answer
    }

    /// Write the document `update` keeps under `key`, if it keeps one.
    fn write_pending(&mut self, key: &str) {
        if let Some(pending) = self.pending.remove(key) {
            let text = (pending.to_json)(key, pending.document.as_ref());
            self.store.put(key, text);
        }
    }

    /// Write every document `update` keeps.
    pub fn flush(&mut self) {
        for (key, pending) in std::mem::take(&mut self.pending) {
            let text = (pending.to_json)(&key, pending.document.as_ref());
            self.store.put(&key, text);
        }
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        // A handler that panicked changed nothing: its event is handled again or not at all.
        if !std::thread::panicking() {
            self.flush();
        }
    }
}

/// Run one event through `P` against `store`: what the component export does.
pub fn handle<P: Projection>(event: &EventEnvelope, store: &mut dyn DocumentStore) {
    P::handle(event, &mut View::new(store));
}

/// Run `events` through `P` in order against one view, written once at the end: what the
/// component's `handle-batch` export does. Its documents end as [`handle`] of each would
/// leave them.
pub fn handle_batch<P: Projection>(events: &[EventEnvelope], store: &mut dyn DocumentStore) {
    let mut view = View::new(store);
    for event in events {
        P::handle(event, &mut view);
    }
    view.flush();
}

#[cfg(test)]
mod tests {
    use super::View;
    use std::collections::BTreeMap;

    /// A document `update` keeps decoded is what every other access to its key sees, and is
    /// written once, when the view is done.
    #[test]
    fn documents_update_keeps_are_written_once_and_seen_by_every_other_access() {
        let mut store = BTreeMap::new();
        {
            let mut view = View::new(&mut store);
            view.update("n", |n: &mut u64| *n += 1);
            view.update("n", |n: &mut u64| *n += 1);
            let read: Option<u64> = view.get("n");
            assert_eq!(read, Some(2), "a read writes the kept document first");
            view.update("n", |n: &mut u64| *n += 1);
            let answer = view.update("n", |n: &mut u64| {
                *n += 1;
                *n * 10
            });
            assert_eq!(answer, 40, "update answers what its closure answers");

            view.update("p", |p: &mut u64| *p = 7);
            view.put("p", &1u64);
            view.update("d", |d: &mut u64| *d = 7);
            view.delete("d");
            // Another type under the same key: the kept one is written, then read as the new type.
            view.update("t", |t: &mut u64| *t = 5);
            view.update("t", |t: &mut serde_json::Value| *t = serde_json::json!([t.clone()]));
        }
        assert_eq!(store.get("n").map(String::as_str), Some("4"));
        assert_eq!(store.get("p").map(String::as_str), Some("1"), "a put replaces what update kept");
        assert_eq!(store.get("d"), None, "a delete drops what update kept");
        assert_eq!(store.get("t").map(String::as_str), Some("[5]"));
    }
}
