//! # cairn-testkit: given / when / then against the compiled component as well as the Rust source
//!
//! What an aggregate's or projection's tests need and nothing of the server: wasmtime (through
//! `cairn-runtime`) and the bundled components (`cairn-artifacts`).
//!
//! [`given`] runs each scenario twice, with one vocabulary: natively (the aggregate's
//! Rust code) and through wasmtime on the `.wasm` the host runs, so a test proves the
//! component, not only its source. See `cairn_guest::testing` for the assertions.

use cairn_guest::glue::{RawCommand, RawEvent, RawStoredEvent};
use cairn_guest::testing::{Backend, Given, Native, Trap};
use cairn_guest::{Aggregate, EventEnvelope, OutgoingCommand, Rejection};
use cairn_runtime::{AggregateComponent, GuestError, Limits, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Components compiled once per test process, by aggregate type.
fn compiled(type_name: &str) -> Arc<AggregateComponent> {
    compiled_as(type_name, || {
        cairn_artifacts::component(type_name)
            .unwrap_or_else(|| panic!("no bundled component for aggregate type {type_name}"))
    })
}

/// The component `bytes` gives, compiled once per test process under `key`.
fn compiled_as(key: &str, bytes: impl FnOnce() -> &'static [u8]) -> Arc<AggregateComponent> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<AggregateComponent>>>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| Runtime::new(None, Limits::default()).expect("wasmtime engine"));
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("component cache lock");
    cache
        .entry(key.to_owned())
        .or_insert_with(|| Arc::new(runtime.load_aggregate(bytes()).expect("the component loads")))
        .clone()
}

/// Runs an aggregate's exports on its compiled component.
pub struct ComponentBackend {
    name: String,
    component: Arc<AggregateComponent>,
}

impl ComponentBackend {
    /// The bundled component for `type_name` (e.g. `account` → `account.wasm`).
    pub fn bundled(type_name: &str) -> Self {
        ComponentBackend {
            name: format!("{}.wasm", type_name.replace('-', "_")),
            component: compiled(type_name),
        }
    }

    /// The component of `bytes`, named `name` in failures: an example version's own
    /// `.wasm` (e.g. `cairn_artifacts::ACCOUNT_V3`), which is not the bundled one of its type.
    pub fn of(name: &str, bytes: &'static [u8]) -> Self {
        ComponentBackend { name: format!("{name}.wasm"), component: compiled_as(name, || bytes) }
    }
}

fn trap(error: GuestError) -> Trap {
    error.to_string()
}

impl Backend for ComponentBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn apply_events(&mut self, state: Option<&[u8]>, events: &[RawEvent]) -> Result<Option<Vec<u8>>, Trap> {
        self.component.apply_events(state, events).map_err(trap)
    }

    fn process_command(
        &mut self,
        state: Option<&[u8]>,
        command: &RawCommand,
    ) -> Result<Result<Vec<RawEvent>, Rejection>, Trap> {
        self.component.process_command(state, command).map_err(trap)
    }

    fn react(&mut self, event: &EventEnvelope) -> Result<Vec<OutgoingCommand>, Trap> {
        self.component.react(event).map_err(trap)
    }

    fn upcast(&mut self, mut events: Vec<RawStoredEvent>) -> Result<Vec<RawStoredEvent>, Trap> {
        self.component.upcast(&mut events).map_err(|(index, error)| format!("event {index}: {error}"))?;
        Ok(events)
    }
}

fn both<A: Aggregate + 'static>() -> Vec<Box<dyn Backend>> {
    vec![Box::new(Native::<A>::default()), Box::new(ComponentBackend::bundled(A::TYPE))]
}

/// Start a scenario that runs natively and on the bundled component of `A::TYPE`.
pub fn given<A: Aggregate + 'static>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    Given::on(both::<A>(), events)
}

/// A scenario from events as an older version stored them `(type, schema, data)`, on both
/// backends: the upcasters run natively and in the component.
pub fn given_stored<A: Aggregate + 'static>(
    events: impl IntoIterator<Item = (&'static str, u32, cairn_guest::serde_json::Value)>,
) -> Given<A> {
    Given::stored(both::<A>(), events)
}

/// A scenario natively and on the component `bytes` (see [`ComponentBackend::of`]).
pub fn given_on<A: Aggregate + 'static>(
    name: &str,
    bytes: &'static [u8],
    events: impl IntoIterator<Item = A::Event>,
) -> Given<A> {
    Given::on(vec![Box::new(Native::<A>::default()), Box::new(ComponentBackend::of(name, bytes))], events)
}

/// A scenario from stored events `(type, schema, data)`, natively and on the component
/// `bytes` (see [`ComponentBackend::of`]).
pub fn given_stored_on<A: Aggregate + 'static>(
    name: &str,
    bytes: &'static [u8],
    events: impl IntoIterator<Item = (&'static str, u32, cairn_guest::serde_json::Value)>,
) -> Given<A> {
    Given::stored(vec![Box::new(Native::<A>::default()), Box::new(ComponentBackend::of(name, bytes))], events)
}

/// A scenario for an aggregate with no events yet, on both backends.
pub fn given_no_events<A: Aggregate + 'static>() -> Given<A> {
    given::<A>([])
}

/// The commands `A` sends for `event`, checked to be the same natively and on the component.
pub fn reactions<A: Aggregate + 'static>(event: &EventEnvelope) -> Vec<OutgoingCommand> {
    cairn_guest::testing::reactions_on(&mut both::<A>(), event)
}

/// What the component `bytes` says about itself (see [`ComponentBackend::of`]).
pub fn describe_of(name: &str, bytes: &'static [u8]) -> cairn_runtime::AggregateInfo {
    compiled_as(name, || bytes).info().clone()
}

/// What the bundled component of `A::TYPE` says about itself.
pub fn describe<A: Aggregate + 'static>() -> cairn_runtime::AggregateInfo {
    compiled(A::TYPE).info().clone()
}

/// Given / then for projections, natively and on the bundled component of `P::NAME`.
pub mod projection {
    use cairn_guest::EventEnvelope;
    use cairn_guest::Projection;
    use cairn_guest::testing::Trap;
    use cairn_guest::testing::projection::{Native, ProjectionBackend, Then, given_on};
    use cairn_runtime::{DocumentReader, Limits, ProjectionComponent, Runtime};
    use std::collections::BTreeMap;

    /// Runs a projection's `handle` on its compiled component, as the host does: one
    /// batch on a fresh instance, reading the documents as they were before it.
    pub struct ComponentBackend {
        name: String,
        component: ProjectionComponent,
    }

    impl ComponentBackend {
        /// The bundled component of the projection `name` (e.g. `account-info`).
        pub fn bundled(name: &str) -> Self {
            let bytes = cairn_artifacts::component(name)
                .unwrap_or_else(|| panic!("no bundled component for projection {name}"));
            let runtime = Runtime::new(None, Limits::default()).expect("wasmtime engine");
            let component = runtime.load_projection(bytes).expect("the bundled projection loads");
            ComponentBackend { name: format!("{}.wasm", name.replace('-', "_")), component }
        }
    }

    struct Snapshot(BTreeMap<String, String>);

    impl DocumentReader for Snapshot {
        fn get(&mut self, key: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(key).cloned())
        }
    }

    impl ProjectionBackend for ComponentBackend {
        fn name(&self) -> String {
            self.name.clone()
        }

        fn handle(
            &mut self,
            documents: &mut BTreeMap<String, String>,
            events: &[EventEnvelope],
        ) -> Result<(), Trap> {
            let outcome = self.component.handle_batch(events, Box::new(Snapshot(documents.clone())));
            for (key, document) in outcome.writes {
                match document {
                    Some(document) => documents.insert(key, document),
                    None => documents.remove(&key),
                };
            }
            outcome.failure.map_or(Ok(()), |failure| Err(failure.to_string()))
        }
    }

    /// Start a scenario that runs natively and on the bundled component of `P::NAME`.
    pub fn given<P: Projection + 'static>(events: impl IntoIterator<Item = EventEnvelope>) -> Then<P> {
        given_on(vec![Box::new(Native::<P>::default()), Box::new(ComponentBackend::bundled(P::NAME))], events)
    }
}
