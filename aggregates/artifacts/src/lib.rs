//! The example aggregate components, compiled for `wasm32-wasip2` by this crate's build
//! script. The host embeds them (a new data directory starts with them deployed) and the
//! tests load them. Components only tests load are in `cairn-test-guests`.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The bytes of the example component for an aggregate type, e.g. `money-transfer`.
pub fn component(type_name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(name, _)| *name == type_name).map(|(_, bytes)| *bytes)
}

#[cfg(test)]
mod tests {
    /// A component binary has the preamble `\0asm` + version 0x0d, layer 1; a core module
    /// has version 1, layer 0.
    #[test]
    fn every_artifact_is_a_component_not_a_core_module() {
        let examples = [
            ("account-v2", super::ACCOUNT_V2),
            ("account-v3", super::ACCOUNT_V3),
            ("money-transfer-v2", super::MONEY_TRANSFER_V2),
            ("account-info-v2", super::ACCOUNT_INFO_V2),
        ];
        for (name, bytes) in super::BUNDLED.iter().chain(examples.iter()) {
            assert_eq!(&bytes[..4], b"\0asm", "{name} is not WebAssembly");
            assert_eq!(&bytes[4..8], &[0x0d, 0x00, 0x01, 0x00], "{name} is not a component");
        }
    }
}
