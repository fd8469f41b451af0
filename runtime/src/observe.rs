//! What the runtime tells about the guest calls it runs: how long each took and which
//! failed. The runtime publishes; whoever keeps figures (the host's metrics) installs an
//! observer once, and without one nothing is recorded.

use std::sync::OnceLock;
use std::time::Duration;

/// Told about every guest call.
pub trait CallObserver: Send + Sync {
    /// A call of `component` that returned, and how long it took.
    fn call(&self, component: &str, took: Duration);
    /// A call of `component` that failed: `kind` is [`crate::GuestError::kind`].
    fn failure(&self, component: &str, kind: &'static str);
}

static OBSERVER: OnceLock<&'static dyn CallObserver> = OnceLock::new();

/// Install the process's observer; `false` if one is installed already (it stays).
pub fn install(observer: &'static dyn CallObserver) -> bool {
    OBSERVER.set(observer).is_ok()
}

pub(crate) fn call(component: &str, took: Duration) {
    if let Some(observer) = OBSERVER.get() {
        observer.call(component, took);
    }
}

pub(crate) fn failure(component: &str, kind: &'static str) {
    if let Some(observer) = OBSERVER.get() {
        observer.failure(component, kind);
    }
}
