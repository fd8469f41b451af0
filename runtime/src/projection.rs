//! A projection component version: linked once, instantiated fresh for every batch.
//!
//! The guest's `view-store` imports read through a [`DocumentReader`] (the committed view)
//! and an overlay of the batch's own writes, so a read sees what the batch wrote before it;
//! the overlay is what the caller commits. If the guest traps on an event, what that
//! event had written is taken back, and the writes of the events before it are kept.

use super::guest_io::{self, GuestIo};
use super::{ComponentDigest, Diagnostics, GuestError, Limits, LoadError, instantiation_failure};
use cairn_wire::{EventEnvelope, Subscription};
use std::collections::BTreeMap;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimits};

mod wit {
    wasmtime::component::bindgen!({
        world: "projection-core",
        path: "../wit",
        imports: { default: trappable },
        // The types both worlds share are the aggregate bindings' own, so one conversion
        // serves both.
        with: { "cairn:runtime/types": crate::aggregate::wit::cairn::runtime::types },
    });
}

use crate::aggregate::wit::cairn::runtime::types as witty;
use crate::aggregate::wit_envelope;

/// The longest key a projection may write.
pub const MAX_KEY_BYTES: usize = 1024;

/// What a projection component says about itself through `describe()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionInfo {
    pub name: String,
    pub subscriptions: Vec<Subscription>,
}

impl ProjectionInfo {
    /// Whether the projection is handed an event `event_type` of a `stream_type` stream.
    pub fn wants(&self, stream_type: &str, event_type: &str) -> bool {
        self.subscriptions.iter().any(|s| s.matches(stream_type, event_type))
    }
}

/// The committed documents of the view a batch runs against.
pub trait DocumentReader: Send {
    fn get(&mut self, key: &str) -> Result<Option<String>, String>;
}

/// Writes of a batch, by key: `Some` document, or `None` for a delete.
pub type Writes = BTreeMap<String, Option<String>>;

/// What one batch did.
pub struct BatchOutcome {
    /// The documents written by the events handled.
    pub writes: Writes,
    /// How many events (from the first) were handled.
    pub handled: usize,
    /// The guest failed on event `handled`: why.
    pub failure: Option<GuestError>,
}

struct ViewData {
    limits: StoreLimits,
    io: GuestIo,
    reader: Box<dyn DocumentReader>,
    writes: Writes,
    /// What the event being handled replaced in `writes`, to take it back on a trap.
    undo: Vec<(String, Option<Option<String>>)>,
    /// A whole batch is in one call: a failure drops every write, so none is kept to undo.
    batched: bool,
    max_document_bytes: usize,
    /// The projection's name, for the log.
    component: String,
    diagnostics: Diagnostics,
}

impl wit::cairn::runtime::diagnostics::Host for ViewData {
    fn panicked(&mut self, message: String) -> wasmtime::Result<()> {
        self.diagnostics.panicked(&self.component, message);
        Ok(())
    }
}

impl ViewData {
    fn write(&mut self, key: String, document: Option<String>) -> wasmtime::Result<()> {
        if key.len() > MAX_KEY_BYTES {
            wasmtime::bail!("a view key is {} bytes, more than the {MAX_KEY_BYTES} allowed", key.len());
        }
        // No store could page it, and PostgreSQL's text cannot hold a NUL.
        if key.chars().any(char::is_control) {
            wasmtime::bail!("a view key may not hold control characters: {key:?}");
        }
        if let Some(document) = &document
            && document.len() > self.max_document_bytes
        {
            wasmtime::bail!(
                "the document {key:?} is {} bytes, more than the {} allowed",
                document.len(),
                self.max_document_bytes
            );
        }
        if self.batched {
            self.writes.insert(key, document);
        } else {
            let previous = self.writes.insert(key.clone(), document);
            self.undo.push((key, previous));
        }
        Ok(())
    }

    fn take_back_current_event(&mut self) {
        while let Some((key, previous)) = self.undo.pop() {
            match previous {
                Some(previous) => self.writes.insert(key, previous),
                None => self.writes.remove(&key),
            };
        }
    }
}

impl wit::cairn::runtime::view_store::Host for ViewData {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        if let Some(written) = self.writes.get(&key) {
            return Ok(written.clone());
        }
        self.reader.get(&key).map_err(|e| wasmtime::format_err!("reading the view failed: {e}"))
    }

    fn put(&mut self, key: String, document: String) -> wasmtime::Result<()> {
        if serde_json::from_str::<serde::de::IgnoredAny>(&document).is_err() {
            wasmtime::bail!("the document {key:?} is not JSON");
        }
        self.write(key, Some(document))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.write(key, None)
    }
}

impl wit::cairn::runtime::types::Host for ViewData {}

/// One compiled, linked version of a projection component.
pub struct ProjectionComponent {
    engine: Engine,
    pre: wit::ProjectionCorePre<ViewData>,
    /// Where the bindings' exports are, found once per version.
    indices: wit::ProjectionCoreIndices,
    /// `handle-batch`, when the component exports it (components built before it did not).
    batch: Option<ComponentExportIndex>,
    digest: ComponentDigest,
    info: ProjectionInfo,
    limits: Limits,
}

/// A reader of an empty view, for `describe()`.
struct NoDocuments;

impl DocumentReader for NoDocuments {
    fn get(&mut self, _key: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
}

impl ProjectionComponent {
    pub(super) fn link(
        engine: Engine,
        component: Component,
        digest: ComponentDigest,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let mut linker = Linker::<ViewData>::new(&engine);
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld(format!("{e:#}"));
        wit::ProjectionCore::add_to_linker::<_, HasSelf<ViewData>>(&mut linker, |data| data)
            .map_err(wrong_world)?;
        guest_io::add_to_linker(&mut linker, |data| &mut data.io).map_err(wrong_world)?;
        // Standard streams and an empty environment; whatever else the guest imports traps if called.
        guest_io::trap_other_imports(&mut linker, &component).map_err(wrong_world)?;
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let indices = wit::ProjectionCoreIndices::new(&pre).map_err(wrong_world)?;
        let pre = wit::ProjectionCorePre::new(pre).map_err(wrong_world)?;
        let batch = component
            .get_export_index(None, "cairn:runtime/batch-handler@0.1.0")
            .and_then(|batch| component.get_export_index(Some(&batch), "handle-batch"));
        let mut loaded = ProjectionComponent {
            engine,
            pre,
            indices,
            batch,
            digest,
            info: ProjectionInfo { name: String::new(), subscriptions: Vec::new() },
            limits,
        };
        let (mut store, guest) = loaded.instantiate(Box::new(NoDocuments)).map_err(LoadError::Describe)?;
        // A wrong `handle-batch` signature is found now, not on the first batch.
        if let Some(index) = &loaded.batch
            && let Err(error) = batch_func(&mut store, &guest, index)
        {
            return Err(LoadError::WrongWorld(format!(
                "its handle-batch export does not match the contract: {error}"
            )));
        }
        let described = guest.core.call_describe(&mut store).map_err(|e| {
            LoadError::Describe(store.data_mut().diagnostics.failure(e, limits.fuel_per_call))
        })?;
        loaded.info = ProjectionInfo {
            name: described.name,
            subscriptions: described
                .subscriptions
                .into_iter()
                .map(|s| Subscription::to(&s.source_type, s.event_types))
                .collect(),
        };
        Ok(loaded)
    }

    pub fn digest(&self) -> &ComponentDigest {
        &self.digest
    }

    /// The compiled code, for the compile cache.
    pub(super) fn compiled(&self) -> &Component {
        self.pre.instance_pre().component()
    }

    pub fn info(&self) -> &ProjectionInfo {
        &self.info
    }

    fn instantiate(&self, reader: Box<dyn DocumentReader>) -> Result<(Store<ViewData>, Guest), GuestError> {
        let limits = self.limits.store_limits();
        let data = ViewData {
            limits,
            io: GuestIo::new(&self.info.name),
            reader,
            writes: Writes::new(),
            undo: Vec::new(),
            batched: false,
            max_document_bytes: self.limits.max_document_bytes,
            component: self.info.name.clone(),
            diagnostics: Diagnostics::default(),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limits);
        store.set_fuel(self.limits.fuel_per_call).map_err(|e| GuestError::Trap(e.to_string()))?;
        let failed = |e: wasmtime::Error| instantiation_failure(&e, &self.limits);
        let instance = self.pre.instance_pre().instantiate(&mut store).map_err(failed)?;
        let core = self.indices.load(&mut store, &instance).map_err(failed)?;
        Ok((store, Guest { instance, core }))
    }

    /// Handle `events` in order on one fresh instance, reading the committed view through
    /// `reader`. Stops at the first event the guest fails on.
    ///
    /// A component with `handle-batch` is handed them all in one call, which reads and
    /// writes a document many of them change once. If that call fails, nothing it wrote is
    /// kept, and the events go through `handle` one at a time on a fresh instance: the
    /// answer is then exactly the one-at-a-time answer, the failing event included.
    pub fn handle_batch(&self, events: &[EventEnvelope], reader: Box<dyn DocumentReader>) -> BatchOutcome {
        let (mut store, guest) = match self.instantiate(reader) {
            Ok(instance) => instance,
            Err(failure) => {
                crate::observe::failure(&self.info.name, failure.kind());
                return BatchOutcome { writes: Writes::new(), handled: 0, failure: Some(failure) };
            }
        };
        let Some(index) = self.batch.as_ref().filter(|_| events.len() > 1) else {
            return self.handle_each(store, guest, events);
        };
        // The fuel of a fold of as many events: a looping projection burns no more before the
        // fallback than one call would.
        let fuel = self.limits.fuel_per_call + self.limits.fuel_per_event.saturating_mul(events.len() as u64);
        let started = std::time::Instant::now();
        let envelopes: Vec<witty::EventEnvelope> = events.iter().map(wit_envelope).collect();
        store.data_mut().batched = true;
        let called = store.set_fuel(fuel).and_then(|()| {
            let func = batch_func(&mut store, &guest, index)?;
            func.call(&mut store, (&envelopes,))
        });
        crate::observe::call(&self.info.name, started.elapsed());
        match called {
            Ok(()) => {
                let writes = std::mem::take(&mut store.data_mut().writes);
                BatchOutcome { writes, handled: events.len(), failure: None }
            }
            Err(error) => {
                let failure = store.data_mut().diagnostics.failure(error, fuel);
                tracing::debug!(
                    projection = self.info.name,
                    "a batch of {} events failed in one call ({failure}); handling them one at a time",
                    events.len()
                );
                let reader = store.into_data().reader;
                match self.instantiate(reader) {
                    Ok((store, guest)) => {
                        let outcome = self.handle_each(store, guest, events);
                        if outcome.failure.is_none() {
                            tracing::warn!(
                                projection = self.info.name,
                                "a batch of {} events failed in one call ({failure}) and not one \
                                 at a time: its events are handled one call each",
                                events.len()
                            );
                        }
                        outcome
                    }
                    Err(failure) => {
                        crate::observe::failure(&self.info.name, failure.kind());
                        BatchOutcome { writes: Writes::new(), handled: 0, failure: Some(failure) }
                    }
                }
            }
        }
    }

    /// `events` through `handle`, one call each on `guest`, up to the first that fails.
    fn handle_each(
        &self,
        mut store: Store<ViewData>,
        guest: Guest,
        events: &[EventEnvelope],
    ) -> BatchOutcome {
        for (index, event) in events.iter().enumerate() {
            store.data_mut().undo.clear();
            let started = std::time::Instant::now();
            let called = store
                .set_fuel(self.limits.fuel_per_call)
                .and_then(|()| guest.core.call_handle(&mut store, &wit_envelope(event)));
            crate::observe::call(&self.info.name, started.elapsed());
            if let Err(error) = called {
                store.data_mut().take_back_current_event();
                let writes = std::mem::take(&mut store.data_mut().writes);
                let failure = store.data_mut().diagnostics.failure(error, self.limits.fuel_per_call);
                crate::observe::failure(&self.info.name, failure.kind());
                return BatchOutcome { writes, handled: index, failure: Some(failure) };
            }
        }
        let writes = std::mem::take(&mut store.data_mut().writes);
        BatchOutcome { writes, handled: events.len(), failure: None }
    }
}

/// A fresh instance: the `projection-core` exports through the bindings, `handle-batch`
/// (of the `batch-handler` interface) by name, since components built before it lack it.
struct Guest {
    instance: wasmtime::component::Instance,
    core: wit::ProjectionCore,
}

/// `handle-batch`'s signature, as the `batch-handler` interface declares it.
type BatchFunc<'a> = wasmtime::component::TypedFunc<(&'a [witty::EventEnvelope],), ()>;

fn batch_func<'a>(
    store: &mut Store<ViewData>,
    guest: &Guest,
    index: &ComponentExportIndex,
) -> wasmtime::Result<BatchFunc<'a>> {
    guest.instance.get_typed_func(store, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runtime;

    fn account_event(
        position: u64,
        stream_id: &str,
        event_type: &str,
        data: serde_json::Value,
    ) -> EventEnvelope {
        EventEnvelope {
            stream_type: "account".to_owned(),
            stream_id: stream_id.to_owned(),
            version: position,
            position,
            event_type: event_type.to_owned(),
            payload: rmp_serde::to_vec_named(&data).unwrap(),
            recorded_at: "2026-12-04T12:00:00.000000Z".to_owned(),
            correlation_id: format!("c-{position}"),
            causation_id: None,
        }
    }

    /// Two accounts, one with enough credits that its older transactions move to pages.
    fn history() -> Vec<EventEnvelope> {
        let mut events = vec![
            account_event(1, "A", "AccountOpened", serde_json::json!({"initial_balance": 10})),
            account_event(2, "B", "AccountOpened", serde_json::json!({"initial_balance": 5})),
        ];
        for n in 0..450u64 {
            let (id, balance) = if n % 9 == 0 { ("B", 5 + n) } else { ("A", 10 + n) };
            let credit =
                serde_json::json!({"amount": 1, "transaction_id": format!("t{n}"), "balance": balance});
            events.push(account_event(3 + n, id, "AccountCredited", credit));
        }
        events
    }

    /// `handle-batch` leaves the documents exactly as `handle` of each event does, in fewer
    /// writes.
    #[test]
    fn a_batch_in_one_call_writes_what_one_call_per_event_writes() {
        let runtime = Runtime::new(None, crate::Limits::default()).unwrap();
        let view = runtime.load_projection(cairn_artifacts::component("account-info").unwrap()).unwrap();
        assert!(view.batch.is_some(), "the SDK exports handle-batch");
        let events = history();

        let batched = view.handle_batch(&events, Box::new(NoDocuments));
        assert!(batched.failure.is_none(), "{:?}", batched.failure);
        assert_eq!(batched.handled, events.len());

        let (store, guest) = view.instantiate(Box::new(NoDocuments)).unwrap();
        let one_by_one = view.handle_each(store, guest, &events);
        assert!(one_by_one.failure.is_none());
        assert_eq!(batched.writes, one_by_one.writes);
        let a: serde_json::Value = serde_json::from_str(batched.writes["A"].as_ref().unwrap()).unwrap();
        assert_eq!(a["earlier_transactions"], 300, "{a}");
        assert!(batched.writes.contains_key("A/transactions/3"), "{:?}", batched.writes.keys());
    }

    /// When the one call fails, the events go one at a time: the answer names the event
    /// that failed and keeps what those before it wrote, as without `handle-batch`.
    #[test]
    fn a_failed_batch_is_handled_again_one_event_at_a_time() {
        let runtime = Runtime::new(None, crate::Limits::default()).unwrap();
        let view = runtime.load_projection(cairn_artifacts::component("account-info").unwrap()).unwrap();
        let mut events = history();
        // A credit without its fields: account-info stops there rather than show a wrong view.
        events.insert(100, account_event(10_000, "A", "AccountCredited", serde_json::json!({})));

        let outcome = view.handle_batch(&events, Box::new(NoDocuments));
        assert_eq!(outcome.handled, 100);
        let failure = outcome.failure.expect("the malformed credit fails");
        assert!(
            failure.to_string().contains("AccountCredited at position 10000 does not decode"),
            "{failure}"
        );
        let (store, guest) = view.instantiate(Box::new(NoDocuments)).unwrap();
        let before = view.handle_each(store, guest, &events[..100]);
        assert_eq!(outcome.writes, before.writes, "what the events before it wrote");
    }
}
