//! A panic in a component ends in a trap. Rust's default panic hook would first read the
//! environment (`RUST_BACKTRACE`) and write to stderr, which the host does not grant, so
//! the message would be lost and the trap would name a missing import. This hook hands the
//! message to the host's `diagnostics.panicked` instead; the host logs it and puts it in
//! the error it answers.

use std::sync::Once;

/// The most of a panic message sent to the host.
const MAX_MESSAGE: usize = 4096;

/// Install the hook, once per instance.
pub fn install(report: fn(&str)) {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(move |info| {
            let mut message = info.to_string();
            if message.len() > MAX_MESSAGE {
                let mut end = MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            report(&message);
        }));
    });
}
