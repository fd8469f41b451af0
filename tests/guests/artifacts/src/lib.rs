//! The components only tests load, compiled for `wasm32-wasip2` by this crate's build
//! script: guests that misbehave on command (`faulty`, the logic in `tests/guests/misbehave`),
//! their fixed and broken versions, a twin subscriber, a guest whose `describe` hangs, and
//! projections that fail on purpose. Nothing the host ships depends on this crate.

include!(concat!(env!("OUT_DIR"), "/components.rs"));

#[cfg(test)]
mod tests {
    /// A component binary has the preamble `\0asm` + version 0x0d, layer 1; a core module
    /// has version 1, layer 0.
    #[test]
    fn every_test_guest_is_a_component_not_a_core_module() {
        let guests = [
            ("faulty", super::FAULTY),
            ("faulty-fixed", super::FAULTY_FIXED),
            ("twin", super::TWIN),
            ("faulty-broken", super::FAULTY_BROKEN),
            ("hanging-describe", super::HANGING_DESCRIBE),
            ("fragile-view", super::FRAGILE_VIEW),
            ("fragile-view-fixed", super::FRAGILE_VIEW_FIXED),
        ];
        for (name, bytes) in guests {
            assert_eq!(&bytes[..4], b"\0asm", "{name} is not WebAssembly");
            assert_eq!(&bytes[4..8], &[0x0d, 0x00, 0x01, 0x00], "{name} is not a component");
        }
    }
}
