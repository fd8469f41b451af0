//! An aggregate component version: linked once, instantiated afresh for every call.

use super::guest_io::{self, GuestIo};
use super::{ComponentDigest, Diagnostics, GuestError, Limits, LoadError, instantiation_failure};
use cairn_wire::{EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription};
use cairn_wire::{FIRST_SCHEMA, RawCommand, RawEvent, RawStoredEvent};
use std::collections::BTreeMap;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, StoreLimits};

pub(crate) mod wit {
    wasmtime::component::bindgen!({
        world: "aggregate-core",
        path: "../wit",
    });
}

use wit::cairn::runtime::types as witty;

/// An event as the WIT `event-envelope` both worlds take (`react`, a projection's `handle`).
pub(crate) fn wit_envelope(event: &EventEnvelope) -> witty::EventEnvelope {
    witty::EventEnvelope {
        stream_type: event.stream_type.clone(),
        stream_id: event.stream_id.clone(),
        version: event.version,
        position: event.position,
        event_type: event.event_type.clone(),
        payload: event.payload.clone(),
        recorded_at: event.recorded_at.clone(),
        correlation_id: event.correlation_id.clone(),
        causation_id: event.causation_id.clone(),
    }
}

/// An accepted command: its events and the state after them.
#[derive(Debug, PartialEq, Eq)]
pub struct Executed {
    pub events: Vec<RawEvent>,
    pub state: Option<Vec<u8>>,
}

/// What a component says about itself through `describe()` (and `policy()`, when it has it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AggregateInfo {
    pub type_name: String,
    pub subscriptions: Vec<Subscription>,
    pub snapshot_interval: u32,
    /// Commands only reactions may send.
    pub internal_commands: Vec<InternalCommand>,
    /// Each event type's current schema version, where it is past the first.
    pub schemas: BTreeMap<String, u32>,
}

impl AggregateInfo {
    /// The rule for `command_type` if only reactions may send it.
    pub fn internal(&self, command_type: &str) -> Option<&InternalCommand> {
        self.internal_commands.iter().find(|c| c.command_type == command_type)
    }

    /// The schema version this version writes (and upcasts to) events of `event_type` in.
    pub fn schema_of(&self, event_type: &str) -> u32 {
        self.schemas.get(event_type).copied().unwrap_or(FIRST_SCHEMA)
    }

    /// Whether a stored event must pass through this version's upcasters before a guest sees it.
    pub fn needs_upcast(&self, event_type: &str, schema: u32) -> bool {
        schema < self.schema_of(event_type)
    }

    /// Whether an event reaches this component's `react`; `is_reply` tells whether a
    /// reaction to an event of this component's own type caused it.
    pub fn reacts_to(&self, stream_type: &str, event_type: &str, is_reply: bool) -> bool {
        self.subscriptions.iter().any(|s| s.accepts(stream_type, event_type, is_reply))
    }
}

struct GuestData {
    limits: StoreLimits,
    io: GuestIo,
    /// The type name, for the log.
    component: String,
    diagnostics: Diagnostics,
}

impl wit::cairn::runtime::diagnostics::Host for GuestData {
    fn panicked(&mut self, message: String) {
        self.diagnostics.panicked(&self.component, message);
    }
}

impl wit::cairn::runtime::types::Host for GuestData {}

struct Instance<'a> {
    store: Store<GuestData>,
    guest: Guest<'a>,
}

/// A fresh instance's exports: those of `aggregate-core` through the bindings, `execute`
/// (of the `executor` interface) by name, since components built before it lack it.
struct Guest<'a> {
    instance: wasmtime::component::Instance,
    /// Where the bindings' exports are, found once per version: loading them is a lookup
    /// and a type check per export, so a call loads them only when it uses them (a
    /// command's `execute` does not).
    indices: &'a wit::AggregateCoreIndices,
}

/// Events folded in one guest call: at most this many, and this many bytes of them past the
/// first (the guest's memory is capped, 64 MiB by default).
const FOLD_CHUNK_EVENTS: usize = 512;
const FOLD_CHUNK_BYTES: usize = 4 << 20;

/// `policy`'s signature, as the `policy` interface declares it.
type PolicyFunc = wasmtime::component::TypedFunc<(), (PolicyInfo,)>;

/// What `policy` answers (the interface is looked up by name, as `execute` is).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
struct PolicyInfo {
    #[component(name = "internal-commands")]
    internal_commands: Vec<witty::InternalCommand>,
    subscriptions: Vec<witty::SubscriptionRule>,
}

/// `schemas` and `upcast`'s signatures, as the `schemas` interface declares them.
type SchemasFunc = wasmtime::component::TypedFunc<(), (Vec<witty::EventSchema>,)>;
type UpcastFunc<'a> = wasmtime::component::TypedFunc<(&'a [witty::StoredEvent],), (Vec<witty::StoredEvent>,)>;

/// `execute`'s signature, as the `executor` interface declares it.
type ExecuteFunc<'a> = wasmtime::component::TypedFunc<
    (Option<&'a [u8]>, &'a witty::Command),
    (Result<witty::Decided, witty::Rejection>,),
>;

fn call_schemas(
    store: &mut Store<GuestData>,
    func: SchemasFunc,
) -> wasmtime::Result<Vec<witty::EventSchema>> {
    let (schemas,) = func.call(&mut *store, ())?;
    Ok(schemas)
}

/// The most event types a component may declare schema versions for.
const MAX_SCHEMAS: usize = 1024;
/// The highest schema version an event type may be at (every store keeps it as a 32-bit integer).
pub const MAX_SCHEMA_VERSION: u32 = 1_000_000;

/// The declared schema versions, checked: each type once, named as an event type may be,
/// each version at least the first.
fn schema_versions(
    declared: Vec<witty::EventSchema>,
    limits: &Limits,
) -> Result<BTreeMap<String, u32>, LoadError> {
    if declared.len() > MAX_SCHEMAS {
        return Err(LoadError::WrongWorld(format!(
            "it declares schema versions for {} event types; at most {MAX_SCHEMAS} are allowed",
            declared.len()
        )));
    }
    let mut schemas = BTreeMap::new();
    for schema in declared {
        limits
            .check_event_types([schema.event_type.as_str()])
            .map_err(|error| LoadError::WrongWorld(format!("its schemas: {error}")))?;
        if !(FIRST_SCHEMA..=MAX_SCHEMA_VERSION).contains(&schema.version) {
            return Err(LoadError::WrongWorld(format!(
                "it declares schema version {} for {:?}; versions go from {FIRST_SCHEMA} to \
                 {MAX_SCHEMA_VERSION}",
                schema.version, schema.event_type
            )));
        }
        let event_type = schema.event_type.clone();
        if schemas.insert(schema.event_type, schema.version).is_some() {
            return Err(LoadError::WrongWorld(format!("it declares the schema of {event_type:?} twice")));
        }
    }
    schemas.retain(|_, version| *version > FIRST_SCHEMA);
    Ok(schemas)
}

fn call_policy(store: &mut Store<GuestData>, func: PolicyFunc) -> wasmtime::Result<PolicyInfo> {
    let (policy,) = func.call(&mut *store, ())?;
    Ok(policy)
}

impl Guest<'_> {
    /// The `aggregate-core` exports through the generated bindings.
    fn core(&self, store: &mut Store<GuestData>) -> wasmtime::Result<wit::AggregateCore> {
        self.indices.load(store, &self.instance)
    }

    fn execute_func<'a>(
        &self,
        store: &mut Store<GuestData>,
        index: &ComponentExportIndex,
    ) -> wasmtime::Result<ExecuteFunc<'a>> {
        self.instance.get_typed_func(store, index)
    }

    fn upcast_func<'a>(
        &self,
        store: &mut Store<GuestData>,
        index: &ComponentExportIndex,
    ) -> wasmtime::Result<UpcastFunc<'a>> {
        self.instance.get_typed_func(store, index)
    }

    fn call_execute(
        &self,
        store: &mut Store<GuestData>,
        index: &ComponentExportIndex,
        state: Option<&[u8]>,
        command: &witty::Command,
    ) -> wasmtime::Result<Result<witty::Decided, witty::Rejection>> {
        let (answer,) = self.execute_func(store, index)?.call(&mut *store, (state, command))?;
        Ok(answer)
    }
}

/// One compiled, linked version of an aggregate component.
pub struct AggregateComponent {
    engine: Engine,
    pre: InstancePre<GuestData>,
    indices: wit::AggregateCoreIndices,
    /// `execute`, when the component exports it (components built before it did not).
    execute: Option<ComponentExportIndex>,
    /// `upcast`, when the component exports the `schemas` interface.
    upcast: Option<ComponentExportIndex>,
    digest: ComponentDigest,
    info: AggregateInfo,
    limits: Limits,
}

impl AggregateComponent {
    pub(super) fn link(
        engine: Engine,
        component: Component,
        digest: ComponentDigest,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let mut linker = Linker::<GuestData>::new(&engine);
        wit::AggregateCore::add_to_linker::<_, HasSelf<GuestData>>(&mut linker, |data| data)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        guest_io::add_to_linker(&mut linker, |data| &mut data.io)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        // Standard streams and an empty environment; whatever else the guest imports traps if called.
        guest_io::trap_other_imports(&mut linker, &component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let indices =
            wit::AggregateCoreIndices::new(&pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let execute = component
            .get_export_index(None, "cairn:runtime/executor@0.1.0")
            .and_then(|executor| component.get_export_index(Some(&executor), "execute"));
        let policy = component
            .get_export_index(None, "cairn:runtime/policy@0.1.0")
            .and_then(|policy| component.get_export_index(Some(&policy), "policy"));
        let schemas_interface = component.get_export_index(None, "cairn:runtime/schemas@0.1.0");
        let schemas = schemas_interface
            .as_ref()
            .and_then(|schemas| component.get_export_index(Some(schemas), "schemas"));
        let upcast = schemas_interface
            .as_ref()
            .and_then(|schemas| component.get_export_index(Some(schemas), "upcast"));
        let mut loaded = AggregateComponent {
            engine,
            pre,
            indices,
            execute,
            upcast,
            digest,
            info: AggregateInfo::default(),
            limits,
        };
        let execute = loaded.execute;
        let upcast = loaded.upcast;
        let (signature, described, policy, schemas) = loaded
            .call(limits.fuel_per_call, |store, guest| {
                // A wrong `execute` signature is found now, not on the first command.
                let signature = execute.as_ref().map(|index| guest.execute_func(store, index).map(drop));
                let described = guest.core(store)?.call_describe(&mut *store)?;
                // `policy` runs in the same fresh instance: describing is one call's worth.
                let policy = match &policy {
                    None => None,
                    Some(index) => {
                        Some(match guest.instance.get_typed_func::<(), (PolicyInfo,)>(&mut *store, index) {
                            Ok(func) => Ok(call_policy(store, func)?),
                            Err(error) => Err(error),
                        })
                    }
                };
                let schemas = match (&schemas, &upcast) {
                    (None, None) => None,
                    (Some(_), None) => Some(Err(wasmtime::Error::msg("it has `schemas` but no `upcast`"))),
                    (None, Some(_)) => Some(Err(wasmtime::Error::msg("it has `upcast` but no `schemas`"))),
                    (Some(schemas), Some(upcast)) => Some(
                        match guest.upcast_func(store, upcast).map_err(|e| e.context("`upcast`")).and_then(
                            |_| {
                                guest
                                    .instance
                                    .get_typed_func::<(), _>(&mut *store, schemas)
                                    .map_err(|e| e.context("`schemas`"))
                            },
                        ) {
                            Ok(func) => Ok(call_schemas(store, func)?),
                            Err(error) => Err(error),
                        },
                    ),
                };
                Ok((signature, described, policy, schemas))
            })
            .map_err(LoadError::Describe)?;
        if let Some(Err(error)) = signature {
            return Err(LoadError::WrongWorld(format!(
                "its execute export does not match the contract: {error}"
            )));
        }
        let schemas = match schemas {
            None => BTreeMap::new(),
            Some(Err(error)) => {
                return Err(LoadError::WrongWorld(format!(
                    "its schemas export does not match the contract: {error:#}"
                )));
            }
            Some(Ok(declared)) => schema_versions(declared, &limits)?,
        };
        let mut subscriptions: Vec<Subscription> = described
            .subscriptions
            .into_iter()
            .map(|s| Subscription::to(&s.source_type, s.event_types))
            .collect();
        let mut internal_commands = Vec::new();
        match policy {
            None => {}
            Some(Err(error)) => {
                return Err(LoadError::WrongWorld(format!(
                    "its policy export does not match the contract: {error}"
                )));
            }
            Some(Ok(policy)) => {
                subscriptions = policy
                    .subscriptions
                    .into_iter()
                    .map(|s| Subscription {
                        source_type: s.source_type,
                        event_types: s.event_types,
                        replies_only: s.replies_only,
                    })
                    .collect();
                internal_commands = policy
                    .internal_commands
                    .into_iter()
                    .map(|c| InternalCommand { command_type: c.command_type, source_types: c.source_types })
                    .collect();
            }
        }
        loaded.info = AggregateInfo {
            type_name: described.type_name,
            subscriptions,
            snapshot_interval: described.snapshot_interval,
            internal_commands,
            schemas,
        };
        Ok(loaded)
    }

    pub fn digest(&self) -> &ComponentDigest {
        &self.digest
    }

    /// The compiled code, for the compile cache.
    pub(super) fn compiled(&self) -> &Component {
        self.pre.component()
    }

    pub fn info(&self) -> &AggregateInfo {
        &self.info
    }

    fn instantiate(&self) -> Result<Instance<'_>, GuestError> {
        let limits = self.limits.store_limits();
        let component = self.info.type_name.clone();
        let io = GuestIo::new(&component);
        let mut store = Store::new(
            &self.engine,
            GuestData { limits, io, component, diagnostics: Diagnostics::default() },
        );
        store.limiter(|data| &mut data.limits);
        store.set_fuel(self.limits.fuel_per_call).map_err(|e| GuestError::Trap(e.to_string()))?;
        let instance =
            self.pre.instantiate(&mut store).map_err(|e| instantiation_failure(&e, &self.limits))?;
        Ok(Instance { store, guest: Guest { instance, indices: &self.indices } })
    }

    /// Run `f` on a fresh instance with `fuel`, so nothing an earlier call left in the
    /// guest's globals or memory reaches this one.
    fn call<R>(
        &self,
        fuel: u64,
        f: impl FnOnce(&mut Store<GuestData>, &Guest<'_>) -> wasmtime::Result<R>,
    ) -> Result<R, GuestError> {
        let started = std::time::Instant::now();
        let mut instance = self.instantiate().inspect_err(|failure| {
            crate::observe::failure(&self.info.type_name, failure.kind());
        })?;
        instance.store.set_fuel(fuel).map_err(|e| GuestError::Trap(e.to_string()))?;
        let called = f(&mut instance.store, &instance.guest);
        crate::observe::call(&self.info.type_name, started.elapsed());
        called.map_err(|error| {
            let failure = instance.store.data_mut().diagnostics.failure(error, fuel);
            crate::observe::failure(&self.info.type_name, failure.kind());
            failure
        })
    }

    /// Decide: the events `command` causes in `state`, or the rejection.
    pub fn process_command(
        &self,
        state: Option<&[u8]>,
        command: &RawCommand,
    ) -> Result<Result<Vec<RawEvent>, Rejection>, GuestError> {
        let command =
            witty::Command { command_type: command.command_type.clone(), payload: command.payload.clone() };
        let answer = self.call(self.limits.fuel_per_call, |store, guest| {
            guest.core(store)?.call_process_command(store, state, &command)
        })?;
        let bytes = match &answer {
            Ok(events) => events.iter().map(|e| e.event_type.len() + e.payload.len()).sum(),
            Err(rejection) => rejection.code.len() + rejection.message.len(),
        };
        self.limits.bound_output(bytes)?;
        if let Ok(events) = &answer {
            self.limits.check_event_types(events.iter().map(|e| e.event_type.as_str()))?;
        }
        Ok(answer
            .map(|events| {
                events
                    .into_iter()
                    .map(|e| RawEvent { event_type: e.event_type, payload: e.payload })
                    .collect()
            })
            .map_err(|r| Rejection { code: r.code, message: r.message }))
    }

    /// Decide and fold in one call: the events `command` causes in `state` and the state
    /// after them, or the rejection. A component without `execute` (built before it
    /// existed) is asked twice, `process-command` then `apply-events`, with the same answer.
    /// The call gets the fuel of both (a decide and a fold); its events and its state are
    /// each bounded as those two calls' outputs are.
    pub fn execute(
        &self,
        state: Option<&[u8]>,
        command: &RawCommand,
    ) -> Result<Result<Executed, Rejection>, GuestError> {
        let Some(index) = &self.execute else {
            return match self.process_command(state, command)? {
                Err(rejection) => Ok(Err(rejection)),
                Ok(events) if events.is_empty() => {
                    Ok(Ok(Executed { events, state: state.map(<[u8]>::to_vec) }))
                }
                Ok(events) => {
                    let state = self.apply_events(state, &events)?;
                    Ok(Ok(Executed { events, state }))
                }
            };
        };
        let command =
            witty::Command { command_type: command.command_type.clone(), payload: command.payload.clone() };
        let fuel = 2 * self.limits.fuel_per_call;
        let answer = self.call(fuel, |store, guest| guest.call_execute(store, index, state, &command))?;
        match answer {
            Err(rejection) => {
                self.limits.bound_output(rejection.code.len() + rejection.message.len())?;
                Ok(Err(Rejection { code: rejection.code, message: rejection.message }))
            }
            Ok(decided) => {
                self.limits.bound_output(
                    decided.events.iter().map(|e| e.event_type.len() + e.payload.len()).sum(),
                )?;
                self.limits.bound_output(decided.state.as_ref().map_or(0, Vec::len))?;
                self.limits.check_event_types(decided.events.iter().map(|e| e.event_type.as_str()))?;
                let events = decided
                    .events
                    .into_iter()
                    .map(|e| RawEvent { event_type: e.event_type, payload: e.payload })
                    .collect();
                Ok(Ok(Executed { events, state: decided.state }))
            }
        }
    }

    /// Evolve: `state` after `events`, folded inside the guest in one call per chunk.
    pub fn apply_events(
        &self,
        state: Option<&[u8]>,
        events: &[RawEvent],
    ) -> Result<Option<Vec<u8>>, GuestError> {
        let mut state = state.map(<[u8]>::to_vec);
        // Chunks bound the memory one call needs (the events are copied into the guest's
        // memory, which is capped) and its fuel.
        let mut rest = events;
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take(FOLD_CHUNK_EVENTS)
                .take_while(|e| {
                    let fits = bytes == 0 || bytes + e.payload.len() <= FOLD_CHUNK_BYTES;
                    bytes += e.payload.len();
                    fits
                })
                .count()
                .max(1);
            let (chunk, later) = rest.split_at(take);
            rest = later;
            let chunk: Vec<witty::Event> = chunk
                .iter()
                .map(|e| witty::Event { event_type: e.event_type.clone(), payload: e.payload.clone() })
                .collect();
            let fuel = self.limits.fuel_per_call + self.limits.fuel_per_event * chunk.len() as u64;
            state = self.call(fuel, |store, guest| {
                guest.core(store)?.call_apply_events(store, state.as_deref(), &chunk)
            })?;
            self.limits.bound_output(state.as_ref().map_or(0, Vec::len))?;
        }
        Ok(state)
    }

    /// `events` as this version's consumers see them: each one stored in an older schema than
    /// this version's passes through its upcasters, in one guest call per chunk; the others
    /// are left as they are. On a failure, the index of the event it failed on (a chunk that
    /// fails is tried again one event at a time to find it) and why; a transient failure
    /// ([`GuestError::is_transient`]) is no event's fault and names the first of its chunk.
    pub fn upcast(&self, events: &mut [RawStoredEvent]) -> Result<(), (usize, GuestError)> {
        // An event in a schema newer than this version's cannot be read; every one before it
        // is still upcast, so a reader can take the events up to it.
        let mut newer = None;
        let mut stale = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let current = self.info.schema_of(&event.event_type);
            if event.schema > current {
                let error = GuestError::SchemaUnknown {
                    event_type: event.event_type.clone(),
                    stored: event.schema,
                    current,
                };
                newer = Some((i, error));
                break;
            }
            if event.schema < current {
                stale.push(i);
            }
        }
        self.upcast_stale(events, &stale)?;
        newer.map_or(Ok(()), Err)
    }

    /// Upcast the events at `stale` (indices into `events`, in order), in chunks.
    fn upcast_stale(
        &self,
        events: &mut [RawStoredEvent],
        stale: &[usize],
    ) -> Result<(), (usize, GuestError)> {
        // A schema past the first is only ever declared together with `upcast` (see `link`).
        let Some(index) = &self.upcast else { return Ok(()) };
        let mut rest = stale;
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take(FOLD_CHUNK_EVENTS)
                .enumerate()
                .take_while(|&(n, &i)| {
                    bytes += events[i].event_type.len() + events[i].payload.len();
                    n == 0 || bytes <= FOLD_CHUNK_BYTES
                })
                .count();
            let (chunk, later) = rest.split_at(take);
            rest = later;
            match self.upcast_chunk(index, events, chunk) {
                Ok(()) => {}
                Err(error) if error.is_transient() || chunk.len() == 1 => return Err((chunk[0], error)),
                // The chunk may have failed for one event or only for its size or fuel: one
                // at a time tells, and keeps what passes.
                Err(_) => {
                    for &i in chunk {
                        self.upcast_chunk(index, events, &[i]).map_err(|error| (i, error))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Upcast the events at `chunk` (indices into `events`) in one call; they are replaced
    /// only when every answer is right.
    fn upcast_chunk(
        &self,
        index: &ComponentExportIndex,
        events: &mut [RawStoredEvent],
        chunk: &[usize],
    ) -> Result<(), GuestError> {
        let input: Vec<witty::StoredEvent> = chunk
            .iter()
            .map(|&i| witty::StoredEvent {
                event_type: events[i].event_type.clone(),
                schema: events[i].schema,
                payload: events[i].payload.clone(),
            })
            .collect();
        let fuel = self.limits.fuel_per_call + self.limits.fuel_per_event * chunk.len() as u64;
        let upcast = self.call(fuel, |store, guest| {
            let (upcast,) = guest.upcast_func(store, index)?.call(&mut *store, (&input,))?;
            Ok(upcast)
        })?;
        // Each event may grow, but a call answers at most twice what it was given (or the
        // output bound, if more): an upcast reshapes data, it does not make it up.
        let input_bytes: usize = input.iter().map(|e| e.event_type.len() + e.payload.len()).sum();
        let output_bytes: usize = upcast.iter().map(|e| e.event_type.len() + e.payload.len()).sum();
        let limit = self.limits.max_output_bytes.max(2 * input_bytes);
        if output_bytes > limit {
            return Err(GuestError::OutputTooLarge { bytes: output_bytes, limit });
        }
        if upcast.len() != chunk.len() {
            return Err(GuestError::Trap(format!(
                "upcast answered {} events for {}: it must answer each one",
                upcast.len(),
                chunk.len()
            )));
        }
        for (stored, event) in input.iter().zip(&upcast) {
            self.limits.bound_output(event.event_type.len() + event.payload.len())?;
            self.limits.check_event_types([event.event_type.as_str()])?;
            let current = self.info.schema_of(&event.event_type);
            if event.schema != current {
                return Err(GuestError::Trap(format!(
                    "upcast answered {:?} (stored as {:?} at schema {}) at schema {}, but this \
                     version writes it at schema {current}: an upcaster is missing a step",
                    event.event_type, stored.event_type, stored.schema, event.schema
                )));
            }
        }
        for (&i, event) in chunk.iter().zip(upcast) {
            events[i] =
                RawStoredEvent { event_type: event.event_type, schema: event.schema, payload: event.payload };
        }
        Ok(())
    }

    /// The commands the component sends when `event` (one it subscribes to) is committed.
    pub fn react(&self, event: &EventEnvelope) -> Result<Vec<OutgoingCommand>, GuestError> {
        let envelope = wit_envelope(event);
        let commands = self.call(self.limits.fuel_per_call, |store, guest| {
            guest.core(store)?.call_react(store, &envelope)
        })?;
        let bytes = commands
            .iter()
            .map(|c| {
                c.target_type.len()
                    + c.target_id.len()
                    + c.command.command_type.len()
                    + c.command.payload.len()
            })
            .sum();
        self.limits.bound_output(bytes)?;
        Ok(commands
            .into_iter()
            .map(|c| OutgoingCommand {
                target_type: c.target_type,
                target_id: c.target_id,
                command_type: c.command.command_type,
                payload: c.command.payload,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, Runtime};
    use cairn_wire::RawCommand;
    use std::time::Instant;

    fn json(bytes: &[u8]) -> serde_json::Value {
        rmp_serde::from_slice(bytes).unwrap()
    }

    /// `execute` answers what `process-command` then `apply-events` answer, accepted or
    /// refused; a component without it (`execute: None`) is asked the two-call way.
    #[test]
    fn execute_is_decide_then_fold_in_one_call() {
        let runtime = Runtime::new(None, Limits::default()).unwrap();
        let mut account = runtime.load_aggregate(cairn_artifacts::component("account").unwrap()).unwrap();
        assert!(account.execute.is_some(), "the SDK exports execute");
        let command = |command_type: &str, data: serde_json::Value| RawCommand {
            command_type: command_type.to_owned(),
            payload: rmp_serde::to_vec_named(&data).unwrap(),
        };
        let open = command("OpenAccount", serde_json::json!({"initial_balance": 100}));
        let debit = command("DebitAccount", serde_json::json!({"amount": 30, "transaction_id": "t1"}));
        for two_calls in [false, true] {
            if two_calls {
                account.execute = None;
            }
            let super::Executed { events: opened, state } = account.execute(None, &open).unwrap().unwrap();
            assert_eq!(opened, account.process_command(None, &open).unwrap().unwrap());
            assert_eq!(state, account.apply_events(None, &opened).unwrap());
            let super::Executed { events: debited, state: after } =
                account.execute(state.as_deref(), &debit).unwrap().unwrap();
            assert_eq!(after, account.apply_events(state.as_deref(), &debited).unwrap());
            assert_eq!(json(after.as_deref().unwrap())["balance"], 70);
            let refused = account.execute(after.as_deref(), &open).unwrap().unwrap_err();
            assert_eq!(refused, account.process_command(after.as_deref(), &open).unwrap().unwrap_err());
            assert_eq!(refused.code, "account_already_open");
        }
    }

    fn schema(event_type: &str, version: u32) -> super::witty::EventSchema {
        super::witty::EventSchema { event_type: event_type.to_owned(), version }
    }

    /// Declared schema versions are kept past the first only; a type declared twice or a
    /// version below the first refuses the component.
    #[test]
    fn declared_schemas_are_checked() {
        let limits = Limits::default();
        let check = |declared| super::schema_versions(declared, &limits);
        let schemas = check(vec![schema("AccountCredited", 2), schema("AccountOpened", 1)]).unwrap();
        assert_eq!(schemas.into_iter().collect::<Vec<_>>(), [("AccountCredited".to_owned(), 2)]);
        let twice = check(vec![schema("A", 2), schema("A", 3)]).unwrap_err();
        assert!(twice.to_string().contains("declares the schema of \"A\" twice"), "{twice}");
        let zero = check(vec![schema("A", 0)]).unwrap_err();
        assert!(zero.to_string().contains("versions go from 1"), "{zero}");
        let unnamed = check(vec![schema("", 2)]).unwrap_err();
        assert!(unnamed.to_string().contains("must be non-empty"), "{unnamed}");
    }

    #[test]
    /// account-v3 upcasts version 1's events in chunks; one it cannot decode fails alone,
    /// named by its index, and every event before it is upcast; an event stored at a schema
    /// newer than the component's is refused before any call.
    fn upcasting_names_the_one_event_that_fails_and_refuses_a_newer_schema() {
        let runtime = Runtime::new(None, Limits::default()).unwrap();
        let v3 = runtime.load_aggregate(cairn_artifacts::ACCOUNT_V3).unwrap();
        let stored = |event_type: &str, schema: u32, data: serde_json::Value| cairn_wire::RawStoredEvent {
            event_type: event_type.to_owned(),
            schema,
            payload: rmp_serde::to_vec_named(&data).unwrap(),
        };
        let credit = |n: i64| {
            stored(
                "AccountCredited",
                1,
                serde_json::json!({"amount": 1, "transaction_id": "t", "balance": n}),
            )
        };
        let mut events: Vec<_> = (0..10).map(credit).collect();
        events[7] = stored("AccountCredited", 1, serde_json::json!({"amount": "one"}));
        let (index, error) = v3.upcast(&mut events).unwrap_err();
        assert_eq!(index, 7, "{error}");
        assert!(error.to_string().contains("upcasting AccountCredited from schema 1 failed"), "{error}");
        assert!(events[..7].iter().all(|e| e.schema == 2), "the events before it are upcast");
        assert_eq!(json(&events[3].payload)["balance"], serde_json::json!({"cents": 3, "currency": "EUR"}));
        assert_eq!(events[7].schema, 1, "the failed event is left as stored");

        let mut newer = vec![credit(1), stored("AccountClosed", 2, serde_json::json!({}))];
        let (index, error) = v3.upcast(&mut newer).unwrap_err();
        assert_eq!(index, 1);
        assert!(matches!(error, super::GuestError::SchemaUnknown { stored: 2, current: 1, .. }), "{error}");
        assert_eq!(newer[0].schema, 2, "the events before it are upcast");
    }

    /// A component that declares no schema past the first (the Account's first version)
    /// writes every event at schema 1 and upcasts nothing.
    #[test]
    fn a_component_that_declares_no_schemas_upcasts_nothing() {
        let runtime = Runtime::new(None, Limits::default()).unwrap();
        let account = runtime.load_aggregate(cairn_artifacts::component("account").unwrap()).unwrap();
        assert!(account.info().schemas.is_empty());
        assert_eq!(account.info().schema_of("AccountCredited"), 1);
        assert!(!account.info().needs_upcast("AccountCredited", 1));
        let stored = cairn_wire::RawStoredEvent {
            event_type: "AccountCredited".to_owned(),
            schema: 1,
            payload: vec![0x80],
        };
        let mut events = vec![stored.clone()];
        account.upcast(&mut events).unwrap();
        assert_eq!(events, [stored]);
    }

    /// What a fresh instance per call costs: a decide on a fresh instance from the pooling
    /// allocator (what the host does) next to the same decide on one reused instance.
    #[test]
    #[ignore = "a measurement: cargo test -p cairn-runtime --lib measure_instance -- --ignored --nocapture"]
    fn measure_instance_cost() {
        let runtime = Runtime::new(None, Limits::default()).unwrap();
        let account = runtime.load_aggregate(cairn_artifacts::component("account").unwrap()).unwrap();
        let open = RawCommand {
            command_type: "OpenAccount".to_owned(),
            payload: rmp_serde::to_vec_named(&serde_json::json!({"initial_balance": 100})).unwrap(),
        };
        let command =
            super::witty::Command { command_type: open.command_type.clone(), payload: open.payload.clone() };
        const N: u32 = 20_000;
        for round in 0..3 {
            let mut reused = account.instantiate().unwrap();
            let core = reused.guest.core(&mut reused.store).unwrap();
            let started = Instant::now();
            for _ in 0..N {
                reused.store.set_fuel(1_000_000).unwrap();
                core.call_process_command(&mut reused.store, None, &command).unwrap().unwrap();
            }
            let on_reused = started.elapsed() / N;
            let started = Instant::now();
            for _ in 0..N {
                account.process_command(None, &open).unwrap().unwrap();
            }
            let on_fresh = started.elapsed() / N;
            let started = Instant::now();
            for _ in 0..N {
                account.execute(None, &open).unwrap().unwrap();
            }
            println!(
                "a whole command (execute: decide and fold) on a fresh instance {:?}",
                started.elapsed() / N
            );
            let started = Instant::now();
            for _ in 0..N {
                drop(account.instantiate().unwrap());
            }
            println!("an instance alone {:?}", started.elapsed() / N);
            let ratio = on_fresh.as_secs_f64() / on_reused.as_secs_f64();
            println!(
                "round {round}: a decide on a reused instance {on_reused:?}, on a fresh one {on_fresh:?} ({ratio:.2}x)"
            );
        }
    }
}
