//! wit-bindgen glue for the `projection` world, used by [`crate::export_projection!`].

use crate::projection::{self, DocumentStore, Projection};

wit_bindgen::generate!({
    world: "projection",
    path: "../wit",
    default_bindings_module: "cairn_guest::projection_bindings",
    pub_export_macro: true,
});

use cairn::runtime::types::Subscription;
use cairn::runtime::view_store;

/// The host's view store, through the world's imports.
struct HostDocuments;

impl DocumentStore for HostDocuments {
    fn get(&mut self, key: &str) -> Option<String> {
        view_store::get(key)
    }

    fn put(&mut self, key: &str, document: String) {
        view_store::put(key, &document);
    }

    fn delete(&mut self, key: &str) {
        view_store::delete(key);
    }
}

/// Route panic messages to the host (once per instance): see [`crate::panic_hook`].
fn report_panics() {
    crate::panic_hook::install(cairn::runtime::diagnostics::panicked);
}

pub fn describe<P: Projection>() -> ProjectionInfo {
    report_panics();
    ProjectionInfo {
        name: P::NAME.to_owned(),
        subscriptions: P::subscriptions()
            .into_iter()
            .map(|s| Subscription { source_type: s.source_type, event_types: s.event_types })
            .collect(),
    }
}

pub fn handle<P: Projection>(event: EventEnvelope) {
    report_panics();
    projection::handle::<P>(&envelope(event), &mut HostDocuments);
}

pub fn handle_batch<P: Projection>(events: Vec<EventEnvelope>) {
    report_panics();
    let events: Vec<crate::EventEnvelope> = events.into_iter().map(envelope).collect();
    projection::handle_batch::<P>(&events, &mut HostDocuments);
}

fn envelope(event: EventEnvelope) -> crate::EventEnvelope {
    crate::EventEnvelope {
        stream_type: event.stream_type,
        stream_id: event.stream_id,
        version: event.version,
        position: event.position,
        event_type: event.event_type,
        payload: event.payload,
        recorded_at: event.recorded_at,
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
    }
}
