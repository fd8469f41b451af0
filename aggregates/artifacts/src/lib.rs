//! The example aggregate components, compiled for `wasm32-wasip2` by this crate's build
//! script. The host embeds them (a new data directory starts with them deployed) and the
//! tests load them, so `cargo build` / `cargo test` at the root build everything.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The bytes of the example component for an aggregate type, e.g. `money-transfer`.
pub fn component(type_name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(name, _)| *name == type_name).map(|(_, bytes)| *bytes)
}
