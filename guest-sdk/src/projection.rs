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
pub struct View<'a> {
    store: &'a mut dyn DocumentStore,
}

impl<'a> View<'a> {
    pub fn new(store: &'a mut dyn DocumentStore) -> Self {
        View { store }
    }

    /// The document under `key`, if there is one.
    ///
    /// # Panics
    /// The stored document does not decode as `D`: it was written with another type, which
    /// a deploy of a new version (which rebuilds the view from the log) resolves.
    pub fn get<D: DeserializeOwned>(&mut self, key: &str) -> Option<D> {
        let text = self.store.get(key)?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("the document {key:?} does not decode as {}: {e}", std::any::type_name::<D>())
        }))
    }

    /// Store `document` under `key`, replacing what was there.
    pub fn put<D: Serialize + ?Sized>(&mut self, key: &str, document: &D) {
        let text = serde_json::to_string(document)
            .unwrap_or_else(|e| panic!("the document {key:?} cannot be written as JSON: {e}"));
        self.store.put(key, text);
    }

    /// Remove the document under `key` (nothing happens if there is none).
    pub fn delete(&mut self, key: &str) {
        self.store.delete(key);
    }

    /// Read the document under `key` (or `D::default()`), change it with `f`, store it.
    pub fn update<D: Serialize + DeserializeOwned + Default>(&mut self, key: &str, f: impl FnOnce(&mut D)) {
        let mut document = self.get(key).unwrap_or_default();
        f(&mut document);
        self.put(key, &document);
    }
}

/// Run one event through `P` against `store`: what the component export does.
pub fn handle<P: Projection>(event: &EventEnvelope, store: &mut dyn DocumentStore) {
    P::handle(event, &mut View::new(store));
}
