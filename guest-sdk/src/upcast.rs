//! Upcasters: how an aggregate reads events stored in an older shape of their data.
//!
//! Each step takes one event type from one schema version to the next, and may rename the
//! type: from the old fields to the new (`Upcaster::step::<OldFields, NewFields>(
//! "AccountCredited", 1, |old| new)`), or from the old event enum to the new one
//! (`Upcaster::event("AccountCredited", 1, |old: v1::Event| Event::from(old))`, the form to
//! use when the old version's types are kept as a library). The host passes every stored
//! event older than the current schema through the steps, chained, before any guest sees
//! it; stored events are never rewritten.

use crate::codec;
use cairn_wire::{FIRST_SCHEMA, RawStoredEvent};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;

/// A step: the stored payload to the upcast one, and the event type it answers when the step
/// decides it (an enum step; it must be the one declared).
type Step = Box<dyn Fn(&str, &[u8]) -> Result<(Option<String>, Vec<u8>), String>>;

/// One step of an event type's schema: from the shape stored at `from` to the shape at
/// `from + 1`.
pub struct Upcaster {
    event_type: String,
    from: u32,
    to_type: String,
    step: Step,
}

impl Upcaster {
    /// Events of `event_type` stored at schema `from` are decoded as `Old` and become `New`
    /// at schema `from + 1`.
    pub fn step<Old, New>(event_type: &str, from: u32, upcast: impl Fn(Old) -> New + 'static) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        Upcaster::new(
            event_type,
            from,
            Box::new(move |_, payload| {
                let old: Old = codec::decode(payload).map_err(|e| e.to_string())?;
                Ok((None, codec::encode(&upcast(old))))
            }),
        )
    }

    /// Events of `event_type` stored at schema `from` are decoded as a variant of the old
    /// event enum `Old` and become the variant of `New` that `upcast` answers, at schema
    /// `from + 1`. The variant must be of the same type name (or the one given to
    /// [`Upcaster::renamed`]).
    pub fn event<Old, New>(event_type: &str, from: u32, upcast: impl Fn(Old) -> New + 'static) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        Upcaster::new(
            event_type,
            from,
            Box::new(move |event_type, payload| {
                let old: Old = codec::decode_variant(event_type, payload).map_err(|e| e.to_string())?;
                let (new_type, payload) = codec::encode_variant(&upcast(old));
                Ok((Some(new_type), payload))
            }),
        )
    }

    fn new(event_type: &str, from: u32, step: Step) -> Self {
        Upcaster { event_type: event_type.to_owned(), from, to_type: event_type.to_owned(), step }
    }

    /// The step also renames the event type: the upcast event is a `to` at schema `from + 1`.
    pub fn renamed(mut self, to: &str) -> Self {
        self.to_type = to.to_owned();
        self
    }
}

/// Each event type's current schema version, past the first: one more than the highest step
/// that starts from it or lands on it.
pub fn schemas(upcasters: &[Upcaster]) -> BTreeMap<String, u32> {
    let mut schemas = BTreeMap::new();
    for upcaster in upcasters {
        for event_type in [&upcaster.event_type, &upcaster.to_type] {
            let current = schemas.entry(event_type.clone()).or_insert(FIRST_SCHEMA);
            *current = (*current).max(upcaster.from + 1);
        }
    }
    schemas
}

/// `event` through every step from its stored schema on, in order.
///
/// # Panics
/// When a step cannot decode the event's data (the guest traps; the host names the event).
pub fn upcast(upcasters: &[Upcaster], mut event: RawStoredEvent) -> RawStoredEvent {
    while let Some(step) =
        upcasters.iter().find(|u| u.event_type == event.event_type && u.from == event.schema)
    {
        let (answered, payload) = (step.step)(&event.event_type, &event.payload).unwrap_or_else(|e| {
            panic!("upcasting {} from schema {} failed: {e}", event.event_type, event.schema)
        });
        if let Some(answered) = answered
            && answered != step.to_type
        {
            panic!(
                "upcasting {} from schema {} answered a {answered}, but the step is declared to give a {}",
                event.event_type, event.schema, step.to_type
            );
        }
        event.payload = payload;
        event.event_type.clone_from(&step.to_type);
        event.schema += 1;
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct CreditedV1 {
        amount: i64,
    }
    #[derive(Serialize, Deserialize)]
    struct Money {
        cents: i64,
        currency: String,
    }
    #[derive(Serialize, Deserialize)]
    struct CreditedV2 {
        amount: Money,
    }

    fn upcasters() -> Vec<Upcaster> {
        vec![
            Upcaster::step("Credited", 1, |old: CreditedV1| CreditedV2 {
                amount: Money { cents: old.amount, currency: "EUR".to_owned() },
            }),
            Upcaster::step("Credited", 2, |same: CreditedV2| same).renamed("Deposited"),
        ]
    }

    fn stored(event_type: &str, schema: u32, data: serde_json::Value) -> RawStoredEvent {
        RawStoredEvent { event_type: event_type.to_owned(), schema, payload: codec::encode(&data) }
    }

    #[test]
    fn steps_chain_from_the_stored_schema_and_may_rename() {
        let schemas = schemas(&upcasters());
        assert_eq!(schemas.get("Credited"), Some(&3));
        assert_eq!(schemas.get("Deposited"), Some(&3));
        for from in [
            stored("Credited", 1, serde_json::json!({"amount": 5})),
            stored("Credited", 2, serde_json::json!({"amount": {"cents": 5, "currency": "EUR"}})),
        ] {
            let upcast = upcast(&upcasters(), from);
            assert_eq!((upcast.event_type.as_str(), upcast.schema), ("Deposited", 3));
            let data: serde_json::Value = codec::decode(&upcast.payload).unwrap();
            assert_eq!(data, serde_json::json!({"amount": {"cents": 5, "currency": "EUR"}}));
        }
        let current = stored("Deposited", 3, serde_json::json!({"amount": {"cents": 1, "currency": "EUR"}}));
        assert_eq!(upcast(&upcasters(), current.clone()), current, "nothing to do at the current schema");
    }

    #[derive(Deserialize)]
    enum OldEvent {
        Credited { amount: i64 },
    }
    #[derive(Serialize)]
    enum NewEvent {
        Credited { amount: Money },
        Deposited { amount: Money },
    }

    #[test]
    fn an_enum_step_reads_the_old_variant_and_must_answer_the_declared_type() {
        let step = |rename: bool| {
            let step = Upcaster::event("Credited", 1, move |old: OldEvent| {
                let OldEvent::Credited { amount } = old;
                let amount = Money { cents: amount, currency: "EUR".to_owned() };
                if rename { NewEvent::Deposited { amount } } else { NewEvent::Credited { amount } }
            });
            vec![step]
        };
        let upcast_event = upcast(&step(false), stored("Credited", 1, serde_json::json!({"amount": 7})));
        assert_eq!((upcast_event.event_type.as_str(), upcast_event.schema), ("Credited", 2));
        let data: serde_json::Value = codec::decode(&upcast_event.payload).unwrap();
        assert_eq!(data, serde_json::json!({"amount": {"cents": 7, "currency": "EUR"}}));
        let undeclared = std::panic::catch_unwind(|| {
            upcast(&step(true), stored("Credited", 1, serde_json::json!({"amount": 7})))
        });
        assert!(undeclared.is_err(), "a rename that is not declared is refused");
    }

    #[test]
    #[should_panic(expected = "upcasting Credited from schema 1 failed")]
    fn a_step_that_cannot_decode_its_event_panics_naming_it() {
        upcast(&upcasters(), stored("Credited", 1, serde_json::json!({"amount": "five"})));
    }
}
