//! MessagePack encoding shared by guests, the host and the test kit.
//!
//! Commands and events cross the component boundary as a type name plus a MessagePack
//! map of named fields. A Rust enum serializes (externally tagged) as a one-entry map
//! `{variant: fields}`; these functions split that into `(name, fields)` and back, so
//! the name can travel beside the payload and the payload stays a plain map the host
//! can show as JSON.

use serde::{Serialize, de::DeserializeOwned};

/// A MessagePack empty map: the payload of a command or event without fields.
pub const EMPTY_MAP: &[u8] = &[0x80];

/// Why bytes could not become the type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Encode a value as a MessagePack map with field names.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data structures into a Vec cannot fail for derive-based types.
    rmp_serde::to_vec_named(value).expect("MessagePack encoding of a serde type")
}

/// Decode a value from MessagePack.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}

/// Split an enum value into its variant name and the MessagePack map of its fields.
pub fn encode_variant<T: Serialize>(value: &T) -> (String, Vec<u8>) {
    let bytes = encode(value);
    let mut reader = bytes.as_slice();
    if let Ok(1) = rmp::decode::read_map_len(&mut reader)
        && let Ok((name, rest)) = rmp::decode::read_str_from_slice(reader)
    {
        return (name.to_owned(), rest.to_vec());
    }
    match rmp::decode::read_str_from_slice(bytes.as_slice()) {
        // A unit variant serializes as its bare name.
        Ok((name, _)) => (name.to_owned(), EMPTY_MAP.to_vec()),
        Err(_) => panic!("encode_variant needs an enum, not {}", std::any::type_name::<T>()),
    }
}

/// Decode, naming the field that failed (`field \`amount\` has the wrong type`): the
/// message reaches the user who sent the command.
fn decode_with_path<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        // The path starts with the variant name, which the caller already names.
        let path = error.path().to_string();
        let field = path.split_once('.').map(|(_, rest)| rest).unwrap_or("");
        let inner = error.into_inner().to_string();
        let what = if inner.contains("wrong msgpack marker") || inner.contains("invalid type") {
            "has the wrong type".to_owned()
        } else {
            inner
        };
        match field {
            "" | "?" => CodecError(what),
            field => CodecError(format!("field `{field}` {what}")),
        }
    })
}

/// Rebuild an enum value from its variant name and the MessagePack map of its fields.
pub fn decode_variant<T: DeserializeOwned>(name: &str, payload: &[u8]) -> Result<T, CodecError> {
    let mut tagged = Vec::with_capacity(payload.len() + name.len() + 6);
    rmp::encode::write_map_len(&mut tagged, 1).expect("write to Vec");
    rmp::encode::write_str(&mut tagged, name).expect("write to Vec");
    tagged.extend_from_slice(payload);
    match decode_with_path(&tagged) {
        Ok(value) => Ok(value),
        Err(first) => {
            // A unit variant (`CloseAccount`) carries no fields; accept `{}` or nil for it.
            if payload == EMPTY_MAP || payload == [0xc0] {
                let mut bare = Vec::new();
                rmp::encode::write_str(&mut bare, name).expect("write to Vec");
                if let Ok(value) = rmp_serde::from_slice(&bare) {
                    return Ok(value);
                }
            }
            Err(first)
        }
    }
}

/// Whether a decoding error says the variant name is unknown (as opposed to bad fields).
pub fn is_unknown_variant(error: &CodecError) -> bool {
    error.0.contains("unknown variant")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Circle { radius: u32 },
        Empty,
        Pair(u8, u8),
    }

    #[test]
    fn struct_variant_round_trips_through_name_and_map() {
        let (name, payload) = encode_variant(&Shape::Circle { radius: 3 });
        assert_eq!(name, "Circle");
        let as_map: std::collections::BTreeMap<String, u32> = decode(&payload).unwrap();
        assert_eq!(as_map["radius"], 3);
        assert_eq!(decode_variant::<Shape>(&name, &payload).unwrap(), Shape::Circle { radius: 3 });
    }

    #[test]
    fn unit_variant_travels_as_an_empty_map() {
        let (name, payload) = encode_variant(&Shape::Empty);
        assert_eq!((name.as_str(), payload.as_slice()), ("Empty", EMPTY_MAP));
        assert_eq!(decode_variant::<Shape>("Empty", EMPTY_MAP).unwrap(), Shape::Empty);
    }

    #[test]
    fn tuple_variant_round_trips() {
        let (name, payload) = encode_variant(&Shape::Pair(1, 2));
        assert_eq!(decode_variant::<Shape>(&name, &payload).unwrap(), Shape::Pair(1, 2));
    }

    #[test]
    fn unknown_name_is_told_apart_from_bad_fields() {
        let err = decode_variant::<Shape>("Square", EMPTY_MAP).unwrap_err();
        assert!(is_unknown_variant(&err), "{err}");
        let bad = encode(&std::collections::BTreeMap::from([("radius", "big")]));
        let err = decode_variant::<Shape>("Circle", &bad).unwrap_err();
        assert!(!is_unknown_variant(&err), "{err}");
        assert_eq!(err.to_string(), "field `radius` has the wrong type");
        let err = decode_variant::<Shape>("Circle", EMPTY_MAP).unwrap_err();
        assert_eq!(err.to_string(), "missing field `radius`");
    }
}
