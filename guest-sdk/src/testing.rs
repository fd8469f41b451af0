//! Given / when / then: test an aggregate's rules as a specification.
//!
//! ```text
//! given(past events).when(command).then_events(expected) | .then_rejected("code")
//! ```
//!
//! [`given`] runs the Rust code natively (fast, in `cargo test`). The same scenario can run
//! on more than one [`Backend`]: `cairn_testkit::given` adds the compiled
//! WebAssembly component, so one test proves both the source and the `.wasm` the host
//! will run. Each backend sees the same inputs as bytes, exactly as the host passes them.

use crate::glue::{self, RawCommand, RawEvent, RawStoredEvent};
use crate::{Aggregate, CommandRejected, EventEnvelope, OutgoingCommand, Rejection, codec};
use std::fmt::Debug;
use std::marker::PhantomData;

/// A guest call that trapped (panicked) instead of answering.
pub type Trap = String;

/// Something that can run an aggregate's exports: the native code, or a component.
pub trait Backend {
    /// Shown in failure messages, e.g. `native` or `account.wasm`.
    fn name(&self) -> String;
    fn apply_events(&mut self, state: Option<&[u8]>, events: &[RawEvent]) -> Result<Option<Vec<u8>>, Trap>;
    fn process_command(
        &mut self,
        state: Option<&[u8]>,
        command: &RawCommand,
    ) -> Result<Result<Vec<RawEvent>, Rejection>, Trap>;
    fn react(&mut self, event: &EventEnvelope) -> Result<Vec<OutgoingCommand>, Trap>;
    /// Stored events as the current schemas have them (the aggregate's upcasters, chained).
    fn upcast(&mut self, events: Vec<RawStoredEvent>) -> Result<Vec<RawStoredEvent>, Trap>;
}

/// What a caught panic said: the trap a component would have answered.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> Trap {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs the aggregate's Rust code in this process, through the same byte-level glue the
/// component exports use.
pub struct Native<A>(PhantomData<A>);

impl<A> Default for Native<A> {
    fn default() -> Self {
        Native(PhantomData)
    }
}

impl<A: Aggregate> Backend for Native<A> {
    fn name(&self) -> String {
        "native".to_owned()
    }

    fn apply_events(&mut self, state: Option<&[u8]>, events: &[RawEvent]) -> Result<Option<Vec<u8>>, Trap> {
        Ok(glue::apply_events::<A>(state, events))
    }

    fn process_command(
        &mut self,
        state: Option<&[u8]>,
        command: &RawCommand,
    ) -> Result<Result<Vec<RawEvent>, Rejection>, Trap> {
        Ok(glue::process_command::<A>(state, command))
    }

    fn react(&mut self, event: &EventEnvelope) -> Result<Vec<OutgoingCommand>, Trap> {
        Ok(glue::react::<A>(event))
    }

    fn upcast(&mut self, events: Vec<RawStoredEvent>) -> Result<Vec<RawStoredEvent>, Trap> {
        // A step that cannot decode its event panics, as it traps in the component.
        std::panic::catch_unwind(|| glue::upcast::<A>(events)).map_err(panic_message)
    }
}

/// Start a scenario natively: the aggregate has already recorded `events`.
pub fn given<A: Aggregate + 'static>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    Given::on(vec![Box::new(Native::<A>::default())], events)
}

/// Start a scenario natively from events as an older version stored them: each is its type
/// name, the schema version it was written in and its data, and goes through the aggregate's
/// upcasters as the host passes it, before the fold.
pub fn given_stored<A: Aggregate + 'static>(
    events: impl IntoIterator<Item = (&'static str, u32, serde_json::Value)>,
) -> Given<A> {
    Given::stored(vec![Box::new(Native::<A>::default())], events)
}

/// Start a scenario natively for an aggregate with no events yet.
pub fn given_no_events<A: Aggregate + 'static>() -> Given<A> {
    given::<A>([])
}

/// The past of a scenario, and the backends it runs on.
pub struct Given<A: Aggregate> {
    backends: Vec<Box<dyn Backend>>,
    /// The past as the store holds it: in the schema each event was written in.
    history: Vec<RawStoredEvent>,
    _aggregate: PhantomData<A>,
}

impl<A: Aggregate> Given<A> {
    /// A scenario that runs on each of `backends`.
    pub fn on(backends: Vec<Box<dyn Backend>>, events: impl IntoIterator<Item = A::Event>) -> Self {
        let schemas = glue::schemas::<A>();
        let history = events
            .into_iter()
            .map(|e| {
                let RawEvent { event_type, payload } = RawEvent::from_typed(&e);
                let schema = schemas.get(&event_type).copied().unwrap_or(cairn_wire::FIRST_SCHEMA);
                RawStoredEvent { event_type, schema, payload }
            })
            .collect();
        Given { backends, history, _aggregate: PhantomData }
    }

    /// A scenario on each of `backends` whose past is stored events `(type, schema, data)`.
    pub fn stored(
        backends: Vec<Box<dyn Backend>>,
        events: impl IntoIterator<Item = (&'static str, u32, serde_json::Value)>,
    ) -> Self {
        let history = events
            .into_iter()
            .map(|(event_type, schema, data)| RawStoredEvent {
                event_type: event_type.to_owned(),
                schema,
                payload: codec::encode(&data),
            })
            .collect();
        Given { backends, history, _aggregate: PhantomData }
    }

    /// The aggregate receives `command`.
    pub fn when(self, command: A::Command) -> Then<A>
    where
        A::Command: serde::Serialize,
    {
        self.when_raw(RawCommand::from_typed(&command))
    }

    /// A command this aggregate's reaction sent was rejected; the host hands it back.
    pub fn when_rejected(self, rejected: CommandRejected) -> Then<A> {
        self.when_raw(RawCommand {
            command_type: crate::COMMAND_REJECTED.to_owned(),
            payload: codec::encode(&rejected),
        })
    }

    /// The aggregate receives a command by name with fields given as MessagePack, as a user
    /// would send it: for testing unknown and malformed commands.
    pub fn when_raw(mut self, command: RawCommand) -> Then<A> {
        let mut runs = Vec::new();
        for backend in &mut self.backends {
            let run = (|| {
                let history: Vec<RawEvent> =
                    backend.upcast(self.history.clone())?.into_iter().map(RawStoredEvent::into_raw).collect();
                let state = backend.apply_events(None, &history)?;
                match backend.process_command(state.as_deref(), &command)? {
                    Err(rejection) => Ok(Err(rejection)),
                    Ok(events) => {
                        let after = backend.apply_events(state.as_deref(), &events)?;
                        Ok(Ok((events, after)))
                    }
                }
            })();
            runs.push((backend.name(), run));
        }
        Then { runs, _aggregate: PhantomData }
    }
}

/// One backend's view of an accepted command: its events and the state after them.
struct Accepted<'a> {
    backend: &'a str,
    events: &'a [RawEvent],
    state: Option<&'a [u8]>,
}

type Run = Result<Result<(Vec<RawEvent>, Option<Vec<u8>>), Rejection>, Trap>;

/// What the command did, on every backend; each `then_*` checks all of them.
pub struct Then<A: Aggregate> {
    runs: Vec<(String, Run)>,
    _aggregate: PhantomData<A>,
}

impl<A: Aggregate> Then<A> {
    /// Every backend's accepted outcome; panics naming the backend that rejected or trapped.
    fn accepted(&self) -> Vec<Accepted<'_>> {
        self.runs
            .iter()
            .map(|(backend, run)| match run {
                Ok(Ok((events, state))) => Accepted { backend, events, state: state.as_deref() },
                Ok(Err(rejection)) => {
                    panic!("[{backend}] expected events, but the command was rejected: {rejection}")
                }
                Err(trap) => panic!("[{backend}] the guest trapped: {trap}"),
            })
            .collect()
    }

    /// The command was accepted and recorded exactly `expected`, in order.
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        for Accepted { backend: name, events, .. } in self.accepted() {
            let got: Vec<A::Event> = events
                .iter()
                .map(|e| codec::decode_variant(&e.event_type, &e.payload).expect("event decodes"))
                .collect();
            assert_eq!(got, expected, "[{name}] events differ (left: received, right: expected)");
        }
        self
    }

    /// The command was accepted and recorded nothing.
    pub fn then_no_events(self) -> Self {
        for Accepted { backend: name, events, .. } in self.accepted() {
            assert!(events.is_empty(), "[{name}] expected no events, received {events:?}");
        }
        self
    }

    /// The state after the new events satisfies `check`.
    pub fn then_state(self, check: impl Fn(&A::State)) -> Self {
        for Accepted { backend: name, state, .. } in self.accepted() {
            let state = state.unwrap_or_else(|| panic!("[{name}] the aggregate has no state"));
            let state: A::State = codec::decode(state).expect("state decodes");
            check(&state);
        }
        self
    }

    /// The command was rejected with `code`; returns the message for further checks.
    pub fn then_rejected(self, code: &str) -> Self {
        for (name, run) in &self.runs {
            match run {
                Ok(Err(rejection)) => {
                    assert_eq!(rejection.code, code, "[{name}] rejected, but with another code: {rejection}")
                }
                Ok(Ok((events, _))) => {
                    panic!("[{name}] expected rejection {code}, but it recorded {events:?}")
                }
                Err(trap) => {
                    panic!("[{name}] expected rejection {code}, but the guest trapped: {trap}")
                }
            }
        }
        self
    }

    /// The guest trapped (on its history's upcast or fold, or on the command) saying
    /// `message` among other things, as the host would refuse it.
    pub fn then_trapped(self, message: &str) -> Self {
        for (name, run) in &self.runs {
            match run {
                Err(trap) => {
                    assert!(trap.contains(message), "[{name}] trapped, but not with {message:?}: {trap}")
                }
                Ok(outcome) => panic!("[{name}] expected a trap, but it answered {outcome:?}"),
            }
        }
        self
    }
}

/// The commands an aggregate's reaction sends for `event`, on every backend (all must
/// agree). Use [`OutgoingCommand::new`] to build the expected list.
pub fn reactions_on(backends: &mut [Box<dyn Backend>], event: &EventEnvelope) -> Vec<OutgoingCommand> {
    let mut answers = backends.iter_mut().map(|b| (b.name(), b.react(event)));
    let (first_name, first) = answers.next().expect("at least one backend");
    let first = first.unwrap_or_else(|trap| panic!("[{first_name}] react trapped: {trap}"));
    for (name, answer) in answers {
        let answer = answer.unwrap_or_else(|trap| panic!("[{name}] react trapped: {trap}"));
        assert_eq!(answer, first, "[{name}] reacts differently from [{first_name}]");
    }
    first
}

/// The commands `A` sends when it sees `event`, run natively.
pub fn reactions<A: Aggregate + 'static>(event: &EventEnvelope) -> Vec<OutgoingCommand> {
    reactions_on(&mut [Box::new(Native::<A>::default()) as Box<dyn Backend>], event)
}

/// An envelope of a committed event of another aggregate, to test reactions with.
pub fn envelope<E: serde::Serialize>(
    stream_type: &str,
    stream_id: &str,
    version: u64,
    event: &E,
) -> EventEnvelope {
    let raw = RawEvent::from_typed(event);
    EventEnvelope {
        stream_type: stream_type.to_owned(),
        stream_id: stream_id.to_owned(),
        version,
        position: version,
        event_type: raw.event_type,
        payload: raw.payload,
        recorded_at: "2026-01-01T00:00:00Z".to_owned(),
        correlation_id: "test-correlation".to_owned(),
        causation_id: None,
    }
}

/// Given / then for projections: `given(events).then_view(key, json!({...}))`.
///
/// Events are envelopes of committed events (build them with [`envelope`](super::envelope));
/// the kit numbers their positions in the order given, as the log would. Every backend
/// starts from an empty view and handles the events in one batch, as the host does.
pub mod projection {
    use super::Trap;
    use crate::EventEnvelope;
    use crate::projection::{self, Projection};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    /// Something that can run a projection's `handle`: the native code, or a component.
    pub trait ProjectionBackend {
        /// Shown in failure messages, e.g. `native` or `account_info.wasm`.
        fn name(&self) -> String;
        /// Handle `events` in order against `documents` (JSON text by key).
        fn handle(
            &mut self,
            documents: &mut BTreeMap<String, String>,
            events: &[EventEnvelope],
        ) -> Result<(), Trap>;
    }

    /// Runs the projection's Rust code in this process, through the export's glue.
    pub struct Native<P>(PhantomData<P>);

    impl<P> Default for Native<P> {
        fn default() -> Self {
            Native(PhantomData)
        }
    }

    impl<P: Projection> ProjectionBackend for Native<P> {
        fn name(&self) -> String {
            "native".to_owned()
        }

        fn handle(
            &mut self,
            documents: &mut BTreeMap<String, String>,
            events: &[EventEnvelope],
        ) -> Result<(), Trap> {
            let before = documents.clone();
            // A panic is what a component's trap is; catch it so `then_trapped` can see it.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for event in events {
                    projection::handle::<P>(event, documents);
                }
            }));
            run.map_err(super::panic_message)?;
            // The host hands a component the whole batch in one call (`handle-batch`): it must
            // leave the documents as one call per event does.
            let mut batched = before;
            projection::handle_batch::<P>(events, &mut batched);
            assert_eq!(
                &batched, documents,
                "the events in one batch leave other documents than one at a time: does a \
                 document `View::update` changes lose part of itself in JSON (#[serde(skip)])?"
            );
            Ok(())
        }
    }

    /// Start a scenario natively: the log holds `events`.
    pub fn given<P: Projection + 'static>(events: impl IntoIterator<Item = EventEnvelope>) -> Then<P> {
        given_on(vec![Box::new(Native::<P>::default())], events)
    }

    /// Run `events` through each of `backends`.
    pub fn given_on<P: Projection>(
        backends: Vec<Box<dyn ProjectionBackend>>,
        events: impl IntoIterator<Item = EventEnvelope>,
    ) -> Then<P> {
        let events: Vec<EventEnvelope> = events
            .into_iter()
            .enumerate()
            .map(|(index, event)| EventEnvelope { position: index as u64 + 1, ..event })
            .collect();
        let runs = backends
            .into_iter()
            .map(|mut backend| {
                let mut documents = BTreeMap::new();
                let run = backend.handle(&mut documents, &events).map(|()| documents);
                (backend.name(), run)
            })
            .collect();
        Then { runs, _projection: PhantomData }
    }

    /// The documents (JSON text by key) a backend built, or why it trapped.
    type Built = Result<BTreeMap<String, String>, Trap>;

    /// The view each backend built.
    pub struct Then<P> {
        runs: Vec<(String, Built)>,
        _projection: PhantomData<P>,
    }

    impl<P> Then<P> {
        fn views(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, String>)> {
            self.runs.iter().map(|(name, run)| match run {
                Ok(documents) => (name.as_str(), documents),
                Err(trap) => panic!("[{name}] the projection trapped: {trap}"),
            })
        }

        /// The document under `key` equals `expected` (as JSON values).
        pub fn then_view(self, key: &str, expected: Value) -> Self {
            for (name, documents) in self.views() {
                let text = documents
                    .get(key)
                    .unwrap_or_else(|| panic!("[{name}] no document {key:?}; keys: {:?}", documents.keys()));
                let got: Value = serde_json::from_str(text).expect("documents are JSON");
                assert_eq!(got, expected, "[{name}] document {key:?} differs (left: built, right: expected)");
            }
            self
        }

        /// There is no document under `key`.
        pub fn then_no_view(self, key: &str) -> Self {
            for (name, documents) in self.views() {
                assert!(!documents.contains_key(key), "[{name}] expected no document {key:?}");
            }
            self
        }

        /// The view holds exactly these keys.
        pub fn then_keys<'k>(self, keys: impl IntoIterator<Item = &'k str>) -> Self {
            let expected: Vec<&str> = keys.into_iter().collect();
            for (name, documents) in self.views() {
                let got: Vec<&str> = documents.keys().map(String::as_str).collect();
                assert_eq!(got, expected, "[{name}] keys differ (left: built, right: expected)");
            }
            self
        }

        /// Handling the events trapped on every backend, with a message containing `text`.
        pub fn then_trapped(self, text: &str) -> Self {
            for (name, run) in &self.runs {
                match run {
                    Err(trap) => assert!(trap.contains(text), "[{name}] trapped, but with {trap:?}"),
                    Ok(_) => panic!("[{name}] expected a trap, but the projection handled every event"),
                }
            }
            self
        }
    }
}
