//! JSON ⇄ MessagePack: users speak JSON, components speak MessagePack maps with field
//! names, so the host converts without asking the guest. (How an event looks over HTTP is
//! the HTTP layer's: `http/event_json.rs`.)

use serde_json::Value;

/// A JSON value as the MessagePack a component decodes.
pub fn to_msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encode JSON as MessagePack")
}

/// MessagePack written by a component, as JSON. Components write serde data, so this
/// only fails for a component that writes something else; that is shown, not hidden.
pub fn to_json(bytes: &[u8]) -> Value {
    rmp_serde::from_slice(bytes).unwrap_or_else(|e| Value::String(format!("<undecodable MessagePack: {e}>")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_msgpack() {
        let value = json!({"amount": 5500, "id": "101", "nested": {"list": [1, -2, 3.5, null, true]}});
        assert_eq!(to_json(&to_msgpack(&value)), value);
    }

    #[test]
    fn undecodable_bytes_are_reported_not_hidden() {
        assert!(to_json(&[0xc1]).as_str().unwrap().starts_with("<undecodable"));
    }

    /// Any JSON value: every number serde_json holds (negative, beyond i64, fractional),
    /// any string, nested arrays and objects.
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
            ".{0,24}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_json_value_round_trips_through_msgpack(value in any_json()) {
            prop_assert_eq!(to_json(&to_msgpack(&value)), value);
        }

        #[test]
        fn every_json_text_accepted_round_trips(value in any_json()) {
            // What a request body holds: the text, parsed, as a component receives it.
            let text = serde_json::to_string(&value).unwrap();
            let parsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(to_json(&to_msgpack(&parsed)), parsed);
        }

        #[test]
        fn arbitrary_bytes_from_a_guest_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = to_json(&bytes);
        }
    }
}
