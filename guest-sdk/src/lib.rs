//! # cairn-guest: write event-sourced aggregates for Cairn
//!
//! An aggregate is two pure functions: *decide* (`handle`: state + command → events or a
//! rejection) and *evolve* (`apply`: state + event → state). You write them over plain Rust
//! types with serde derives, implement [`Aggregate`], and call [`export_aggregate!`]; the
//! macro produces the WebAssembly component exports of the `cairn:runtime/aggregate`
//! world. No wit-bindgen or MessagePack code is written by hand.
//!
//! The macro also exports `execute`, which decides and folds in one call (the host's hot
//! path), folding the events from their encoded form exactly as a replay would.
//!
//! Nothing here offers a clock, randomness, I/O or global mutable state: the host hands
//! in everything an aggregate may depend on, so replaying its events always gives the
//! same state. Time, when a rule needs it, comes from the event envelope. The host runs
//! every call on a fresh instance, so a global never survives a call, and it sends
//! `println!`/`eprintln!` output to its log under the component's name.
//!
//! Start with [`Aggregate`], then [`testing`] for the given/when/then test kit. Read
//! models are [`Projection`]s, exported with [`export_projection!`].
//!
//! ```
//! use cairn_guest::{Aggregate, Rejection};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
//! struct Counter { total: i64 }
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! enum CounterCommand { Add { amount: i64 } }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum CounterEvent { Added { amount: i64 } }
//!
//! struct CounterAggregate;
//!
//! impl Aggregate for CounterAggregate {
//!     const TYPE: &'static str = "counter";
//!     type State = Counter;
//!     type Command = CounterCommand;
//!     type Event = CounterEvent;
//!
//!     fn handle(_state: Option<&Counter>, command: CounterCommand) -> Result<Vec<CounterEvent>, Rejection> {
//!         match command {
//!             CounterCommand::Add { amount } if amount <= 0 => {
//!                 Err(Rejection::invalid("amount must be positive"))
//!             }
//!             CounterCommand::Add { amount } => Ok(vec![CounterEvent::Added { amount }]),
//!         }
//!     }
//!
//!     fn apply(state: Option<Counter>, event: &CounterEvent) -> Counter {
//!         let mut state = state.unwrap_or_default();
//!         match event {
//!             CounterEvent::Added { amount } => state.total += amount,
//!         }
//!         state
//!     }
//! }
//!
//! cairn_guest::testing::given::<CounterAggregate>([CounterEvent::Added { amount: 2 }])
//!     .when(CounterCommand::Add { amount: 3 })
//!     .then_events([CounterEvent::Added { amount: 3 }])
//!     .then_state(|state| assert_eq!(state.total, 5));
//! // In a cdylib crate: cairn_guest::export_aggregate!(CounterAggregate);
//! ```

#[doc(hidden)]
pub use cairn_wire::codec;
#[doc(hidden)]
pub mod glue;
pub mod projection;
pub mod testing;
pub mod upcast;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings;
#[cfg(target_arch = "wasm32")]
mod panic_hook;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod projection_bindings;

pub use cairn_wire::{
    COMMAND_REJECTED, CommandRejected, EventEnvelope, INVALID_COMMAND, InternalCommand, InvalidId,
    MAX_ID_LEN, OutgoingCommand, Rejection, Subscription, UNKNOWN_COMMAND, check_aggregate_id,
};
pub use projection::{DocumentStore, Projection, View};
use serde::{Serialize, de::DeserializeOwned};
/// For documents in tests: `then_view(key, json!({...}))`.
pub use serde_json;
pub use upcast::Upcaster;

/// An event-sourced aggregate: one type of entity whose state is the fold of its events.
///
/// `Command` and `Event` are enums whose variant names are the command and event type
/// names users see (`OpenAccount`, `AccountOpened`); their fields are the JSON `data`.
/// Variants with fields should be struct variants so the data is a JSON object.
pub trait Aggregate {
    /// The aggregate type in kebab-case: the `{type}` in `/aggregates/{type}/{id}`.
    const TYPE: &'static str;
    /// Take a snapshot every this many events; 0 leaves it to the host (100).
    const SNAPSHOT_INTERVAL: u32 = 0;

    type State: Serialize + DeserializeOwned;
    type Command: DeserializeOwned;
    type Event: Serialize + DeserializeOwned;

    /// Decide what a command does. `state` is `None` before the first event.
    /// A business refusal is `Err(Rejection)`; nothing is stored for it.
    fn handle(state: Option<&Self::State>, command: Self::Command) -> Result<Vec<Self::Event>, Rejection>;

    /// Evolve the state by one event. Must not fail: the event already happened.
    fn apply(state: Option<Self::State>, event: &Self::Event) -> Self::State;

    /// Other aggregates' events this one reacts to (choreography).
    fn subscriptions() -> Vec<Subscription> {
        Vec::new()
    }

    /// How events stored in an older shape become today's: one step per schema version
    /// and event type, chained by the host before any guest reads a stored event. An event
    /// type with no step is at schema 1.
    fn upcasters() -> Vec<Upcaster> {
        Vec::new()
    }

    /// Commands that only reactions may send: a saga's own steps. Clients are refused
    /// them (HTTP 403 `internal_command`), so nobody can drive a saga from outside.
    fn internal_commands() -> Vec<InternalCommand> {
        Vec::new()
    }

    /// A command to an aggregate of this type, as a reaction sends it:
    /// `AccountAggregate::command_to(&id, &AccountCommand::CloseAccount)`. Built from the
    /// type's own command enum, so a renamed command or field fails to compile.
    fn command_to(id: &str, command: &Self::Command) -> OutgoingCommand
    where
        Self::Command: Serialize,
    {
        OutgoingCommand::command(Self::TYPE, id, command)
    }

    /// The commands to send when a subscribed event is committed. Reactions see only the
    /// event, never a state: they translate, the target aggregate decides.
    fn react(_event: &EventEnvelope) -> Vec<OutgoingCommand> {
        Vec::new()
    }

    /// A command that a reaction to one of this aggregate's events sent was rejected by
    /// its target; decide what that means here (compensate, fail, or ignore).
    fn on_rejected(
        _state: Option<&Self::State>,
        _rejected: CommandRejected,
    ) -> Result<Vec<Self::Event>, Rejection> {
        Ok(Vec::new())
    }
}

/// Export an [`Aggregate`] as the component's `cairn:runtime/aggregate` world.
/// Call it once, at the root of a `cdylib` crate built for `wasm32-wasip2`.
/// On other targets it expands to nothing, so the same crate runs native tests.
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __cairn_export {
            #[allow(unused_imports)]
            use super::*;
            use $crate::bindings::{self as b, Guest};

            struct Component;

            impl Guest for Component {
                fn describe() -> b::AggregateInfo {
                    $crate::bindings::describe::<$aggregate>()
                }
                fn process_command(
                    state: Option<Vec<u8>>,
                    command: b::Command,
                ) -> Result<Vec<b::Event>, b::Rejection> {
                    $crate::bindings::process_command::<$aggregate>(state, command)
                }
                fn apply_event(state: Option<Vec<u8>>, event: b::Event) -> Vec<u8> {
                    $crate::bindings::apply_event::<$aggregate>(state, event)
                }
                fn apply_events(state: Option<Vec<u8>>, events: Vec<b::Event>) -> Option<Vec<u8>> {
                    $crate::bindings::apply_events::<$aggregate>(state, events)
                }
                fn react(event: b::WitEnvelope) -> Vec<b::OutgoingCommand> {
                    $crate::bindings::react::<$aggregate>(event)
                }
            }

            impl $crate::bindings::exports::cairn::runtime::executor::Guest for Component {
                fn execute(state: Option<Vec<u8>>, command: b::Command) -> Result<b::Decided, b::Rejection> {
                    $crate::bindings::execute::<$aggregate>(state, command)
                }
            }

            impl $crate::bindings::exports::cairn::runtime::policy::Guest for Component {
                fn policy() -> $crate::bindings::PolicyInfo {
                    $crate::bindings::policy::<$aggregate>()
                }
            }

            impl $crate::bindings::exports::cairn::runtime::schemas::Guest for Component {
                fn schemas() -> Vec<b::EventSchema> {
                    $crate::bindings::schemas::<$aggregate>()
                }
                fn upcast(events: Vec<b::StoredEvent>) -> Vec<b::StoredEvent> {
                    $crate::bindings::upcast::<$aggregate>(events)
                }
            }

            $crate::bindings::export!(Component with_types_in $crate::bindings);
        }
    };
}

/// Export a [`Projection`] as the component's `cairn:runtime/projection` world.
/// Call it once, at the root of a `cdylib` crate built for `wasm32-wasip2`.
/// On other targets it expands to nothing, so the same crate runs native tests.
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __cairn_export_projection {
            #[allow(unused_imports)]
            use super::*;
            use $crate::projection_bindings::{self as b, Guest};

            struct Component;

            impl Guest for Component {
                fn describe() -> b::ProjectionInfo {
                    $crate::projection_bindings::describe::<$projection>()
                }
                fn handle(event: b::EventEnvelope) {
                    $crate::projection_bindings::handle::<$projection>(event)
                }
            }

            impl b::exports::cairn::runtime::batch_handler::Guest for Component {
                fn handle_batch(events: Vec<b::EventEnvelope>) {
                    $crate::projection_bindings::handle_batch::<$projection>(events)
                }
            }

            $crate::projection_bindings::export!(Component with_types_in $crate::projection_bindings);
        }
    };
}
