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
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimits};

mod wit {
    wasmtime::component::bindgen!({
        world: "projection",
        path: "../wit",
        imports: { default: trappable },
        // The types both worlds share are the aggregate bindings' own, so one conversion
        // serves both.
        with: { "cairn:runtime/types": crate::aggregate::wit::cairn::runtime::types },
    });
}

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
        let previous = self.writes.insert(key.clone(), document);
        self.undo.push((key, previous));
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
    pre: wit::ProjectionPre<ViewData>,
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
        wit::Projection::add_to_linker::<_, HasSelf<ViewData>>(&mut linker, |data| data)
            .map_err(wrong_world)?;
        guest_io::add_to_linker(&mut linker, |data| &mut data.io).map_err(wrong_world)?;
        // Standard streams and an empty environment; whatever else the guest imports traps if called.
        guest_io::trap_other_imports(&mut linker, &component).map_err(wrong_world)?;
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = wit::ProjectionPre::new(pre).map_err(wrong_world)?;
        let mut loaded = ProjectionComponent {
            engine,
            pre,
            digest,
            info: ProjectionInfo { name: String::new(), subscriptions: Vec::new() },
            limits,
        };
        let (mut store, guest) = loaded.instantiate(Box::new(NoDocuments)).map_err(LoadError::Describe)?;
        let described = guest.call_describe(&mut store).map_err(|e| {
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

    fn instantiate(
        &self,
        reader: Box<dyn DocumentReader>,
    ) -> Result<(Store<ViewData>, wit::Projection), GuestError> {
        let limits = self.limits.store_limits();
        let data = ViewData {
            limits,
            io: GuestIo::new(&self.info.name),
            reader,
            writes: Writes::new(),
            undo: Vec::new(),
            max_document_bytes: self.limits.max_document_bytes,
            component: self.info.name.clone(),
            diagnostics: Diagnostics::default(),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limits);
        store.set_fuel(self.limits.fuel_per_call).map_err(|e| GuestError::Trap(e.to_string()))?;
        let guest = self.pre.instantiate(&mut store).map_err(|e| instantiation_failure(&e, &self.limits))?;
        Ok((store, guest))
    }

    /// Handle `events` in order on one fresh instance, reading the committed view through
    /// `reader`. Stops at the first event the guest fails on.
    pub fn handle_batch(&self, events: &[EventEnvelope], reader: Box<dyn DocumentReader>) -> BatchOutcome {
        let (mut store, guest) = match self.instantiate(reader) {
            Ok(instance) => instance,
            Err(failure) => {
                crate::observe::failure(&self.info.name, failure.kind());
                return BatchOutcome { writes: Writes::new(), handled: 0, failure: Some(failure) };
            }
        };
        for (index, event) in events.iter().enumerate() {
            store.data_mut().undo.clear();
            let started = std::time::Instant::now();
            let called = store
                .set_fuel(self.limits.fuel_per_call)
                .and_then(|()| guest.call_handle(&mut store, &wit_envelope(event)));
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
