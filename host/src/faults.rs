//! Test-only fault injection, read from the `CAIRN_FAULTS` environment variable, so the
//! end-to-end tests can make the real binary fail where no component can: a host-side task
//! that panics, an actor held busy.
//!
//! Only debug builds (what `cargo test` builds) read the variable; in a release build every
//! hook is a constant no-op and the variable is ignored.
//!
//! `CAIRN_FAULTS` is a comma-separated list of:
//! - `actor-panic=<CommandType>`: the first command of that type panics its actor;
//! - `actor-stall=<CommandType>[@<stream key prefix>]:<millis>`: every command of that type
//!   (to the streams whose key starts with the prefix, when given) holds its actor (before it
//!   is decided) for that long;
//! - `delivery-panic=<EventType>`: the first delivery of an event of that type panics the
//!   delivery task;
//! - `rebuild-stall=<millis>`: every batch of a view rebuild waits that long first, so a
//!   test can read the old generation while the new one is built;
//! - `commit-fail=<stream key>[:<skip>]`: the group commit holding that stream's first
//!   append (e.g. `account/x`; or the one after `skip` appends) fails, as a full disk would
//!   fail it (after a `commit-stall` of the same commit);
//! - `commit-stall=<stream key>:<millis>[:<skip>]`: the group commit holding that stream's
//!   first append (or the one after `skip` appends) waits that long before it commits, as a
//!   stalled fsync would hold the writer;
//! - `io-error=<stream key>[:<skip>]`: the disk refuses the writes of the group commit
//!   holding that stream's first append (or the one after `skip` appends), as a failing
//!   device would: redb then refuses everything until the file is opened again;
//! - `fsync-error=<stream key>[:<skip>]`: the same commit's writes go through but its fsync
//!   fails, as a device that loses its cache would report;
//! - `commit-answer-lost=<stream key>`: on PostgreSQL, the first group commit holding an
//!   append to that stream commits, and its answer is taken to be lost, as when the
//!   connection drops during COMMIT: the writer must find out that it landed.

use std::time::Duration;

#[cfg(debug_assertions)]
mod injected {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    #[derive(Default)]
    pub struct Faults {
        actor_panic: Option<String>,
        actor_stall: Option<(String, Option<String>, Duration)>,
        delivery_panic: Option<String>,
        rebuild_stall: Option<Duration>,
        commit_fail: Option<(String, u64)>,
        commit_stall: Option<(String, Duration, u64)>,
        io_error: Option<(String, u64)>,
        fsync_error: Option<(String, u64)>,
        commit_answer_lost: Option<String>,
    }

    static ACTOR_PANICKED: AtomicBool = AtomicBool::new(false);
    static DELIVERY_PANICKED: AtomicBool = AtomicBool::new(false);
    static COMMIT_FAIL_APPENDS: AtomicU64 = AtomicU64::new(0);
    static COMMIT_STALL_APPENDS: AtomicU64 = AtomicU64::new(0);
    static IO_ERROR_APPENDS: AtomicU64 = AtomicU64::new(0);
    static FSYNC_ERROR_APPENDS: AtomicU64 = AtomicU64::new(0);
    static COMMIT_ANSWER_LOST: AtomicBool = AtomicBool::new(false);
    /// Set by the writer around the commit the fault is for; read by the file backend.
    pub static IO_ERROR_ARMED: AtomicBool = AtomicBool::new(false);
    pub static FSYNC_ERROR_ARMED: AtomicBool = AtomicBool::new(false);

    static FAULTS: OnceLock<Faults> = OnceLock::new();

    pub fn faults() -> &'static Faults {
        FAULTS.get_or_init(|| parse(&std::env::var("CAIRN_FAULTS").unwrap_or_default()))
    }

    pub fn arm(spec: &str) -> bool {
        FAULTS.set(parse(spec)).is_ok()
    }

    fn parse(text: &str) -> Faults {
        let mut faults = Faults::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some(("actor-panic", command)) => faults.actor_panic = Some(command.to_owned()),
                Some(("delivery-panic", event)) => faults.delivery_panic = Some(event.to_owned()),
                Some(("commit-fail", spec)) => faults.commit_fail = name_and_skip(spec),
                Some(("commit-answer-lost", stream)) => faults.commit_answer_lost = Some(stream.to_owned()),
                Some(("io-error", spec)) => faults.io_error = name_and_skip(spec),
                Some(("fsync-error", spec)) => faults.fsync_error = name_and_skip(spec),
                Some(("rebuild-stall", millis)) if millis.parse::<u64>().is_ok() => {
                    faults.rebuild_stall = millis.parse().ok().map(Duration::from_millis);
                }
                Some(("actor-stall", spec)) => {
                    faults.actor_stall =
                        name_and_millis(spec).map(|(name, millis)| match name.split_once('@') {
                            Some((command, prefix)) => (command.to_owned(), Some(prefix.to_owned()), millis),
                            None => (name, None, millis),
                        })
                }
                Some(("commit-stall", spec)) => faults.commit_stall = stall_after(spec),
                _ => tracing::warn!("ignoring the unknown CAIRN_FAULTS entry {entry:?}"),
            }
        }
        faults
    }

    /// `<name>:<millis>`, split at the last colon (a stream key has none, but be lenient).
    fn name_and_millis(spec: &str) -> Option<(String, Duration)> {
        let (name, millis) = spec.rsplit_once(':')?;
        Some((name.to_owned(), Duration::from_millis(millis.parse().ok()?)))
    }

    /// `<stream key>[:<skip>]`.
    fn name_and_skip(spec: &str) -> Option<(String, u64)> {
        match spec.split_once(':') {
            Some((stream, skip)) => Some((stream.to_owned(), skip.parse().ok()?)),
            None => Some((spec.to_owned(), 0)),
        }
    }

    /// `<stream key>:<millis>[:<skip>]`.
    fn stall_after(spec: &str) -> Option<(String, Duration, u64)> {
        let mut parts = spec.split(':');
        let (stream, millis) = (parts.next()?, parts.next()?.parse().ok()?);
        let skip = match parts.next() {
            Some(skip) => skip.parse().ok()?,
            None => 0,
        };
        parts.next().is_none().then(|| (stream.to_owned(), Duration::from_millis(millis), skip))
    }

    fn first_time(flag: &AtomicBool) -> bool {
        !flag.swap(true, Ordering::SeqCst)
    }

    impl Faults {
        pub fn actor_panic(&self, command_type: &str) -> bool {
            self.actor_panic.as_deref() == Some(command_type) && first_time(&ACTOR_PANICKED)
        }

        pub fn actor_stall(&self, command_type: &str, stream: &str) -> Option<Duration> {
            let (_, _, stall) = self.actor_stall.as_ref().filter(|(command, prefix, _)| {
                command == command_type && prefix.as_ref().is_none_or(|p| stream.starts_with(p.as_str()))
            })?;
            Some(*stall)
        }

        pub fn commit_fail(&self, stream: &str) -> bool {
            let Some((_, skip)) = self.commit_fail.as_ref().filter(|(s, _)| s == stream) else {
                return false;
            };
            COMMIT_FAIL_APPENDS.fetch_add(1, Ordering::SeqCst) == *skip
        }

        pub fn rebuild_stall(&self) -> Option<Duration> {
            self.rebuild_stall
        }

        pub fn commit_answer_lost(&self, stream: &str) -> bool {
            self.commit_answer_lost.as_deref() == Some(stream)
                && !COMMIT_ANSWER_LOST.swap(true, Ordering::SeqCst)
        }

        pub fn commit_stall(&self, stream: &str) -> Option<Duration> {
            let (_, stall, skip) = self.commit_stall.as_ref().filter(|(s, ..)| s == stream)?;
            (COMMIT_STALL_APPENDS.fetch_add(1, Ordering::SeqCst) == *skip).then_some(*stall)
        }

        pub fn io_error(&self, stream: &str) -> bool {
            let Some((_, skip)) = self.io_error.as_ref().filter(|(s, _)| s == stream) else {
                return false;
            };
            IO_ERROR_APPENDS.fetch_add(1, Ordering::SeqCst) == *skip
        }

        pub fn fsync_error(&self, stream: &str) -> bool {
            let Some((_, skip)) = self.fsync_error.as_ref().filter(|(s, _)| s == stream) else {
                return false;
            };
            FSYNC_ERROR_APPENDS.fetch_add(1, Ordering::SeqCst) == *skip
        }

        pub fn delivery_panic(&self, event_type: &str) -> bool {
            self.delivery_panic.as_deref() == Some(event_type) && first_time(&DELIVERY_PANICKED)
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn entries_parse_and_unknown_ones_are_ignored() {
            let faults = super::parse(
                "actor-stall=Hold:250, delivery-panic=AccountCredited,bogus,commit-stall=account/s:40:2,commit-fail=account/f:1",
            );
            assert_eq!(faults.actor_stall("Hold", "a/1"), Some(std::time::Duration::from_millis(250)));
            assert_eq!(faults.actor_stall("Other", "a/1"), None);
            let on_some = super::parse("actor-stall=DebitAccount@account/s:80");
            assert_eq!(
                on_some.actor_stall("DebitAccount", "account/s7"),
                Some(std::time::Duration::from_millis(80))
            );
            assert_eq!(on_some.actor_stall("DebitAccount", "account/rich"), None);
            assert_eq!(faults.delivery_panic.as_deref(), Some("AccountCredited"));
            assert!(faults.actor_panic.is_none());
            assert_eq!(faults.commit_fail, Some(("account/f".to_owned(), 1)));
            assert_eq!(
                faults.commit_stall,
                Some(("account/s".to_owned(), std::time::Duration::from_millis(40), 2))
            );
        }
    }
}

/// Arm the faults of `spec` (the syntax of `CAIRN_FAULTS`) for this process, as the variable
/// would: for in-process tests, which cannot give the process an environment of its own.
/// `false` if the faults were already armed or read, and stay as they were. A release build
/// arms nothing.
pub fn arm(spec: &str) -> bool {
    #[cfg(debug_assertions)]
    return injected::arm(spec);
    #[cfg(not(debug_assertions))]
    {
        let _ = spec;
        false
    }
}

/// Panics the actor deciding `command_type` if a test asked for it (once).
pub fn actor_panic(command_type: &str) {
    #[cfg(debug_assertions)]
    if injected::faults().actor_panic(command_type) {
        panic!("fault injection: actor-panic={command_type}");
    }
    #[cfg(not(debug_assertions))]
    let _ = command_type;
}

/// How long to hold an actor before it decides `command_type`, if a test asked for it.
pub fn actor_stall(command_type: &str, stream: &str) -> Option<Duration> {
    #[cfg(debug_assertions)]
    return injected::faults().actor_stall(command_type, stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = (command_type, stream);
        None
    }
}

/// Panics the delivery task delivering an event `event_type` if a test asked for it (once).
pub fn delivery_panic(event_type: &str) {
    #[cfg(debug_assertions)]
    if injected::faults().delivery_panic(event_type) {
        panic!("fault injection: delivery-panic={event_type}");
    }
    #[cfg(not(debug_assertions))]
    let _ = event_type;
}

/// How long each batch of a view rebuild waits first, if a test asked for it.
pub fn rebuild_stall() -> Option<Duration> {
    #[cfg(debug_assertions)]
    return injected::faults().rebuild_stall();
    #[cfg(not(debug_assertions))]
    None
}

/// Whether the group commit holding an append to `stream` must fail, if a test asked (once).
pub fn commit_fail(stream: &str) -> bool {
    #[cfg(debug_assertions)]
    return injected::faults().commit_fail(stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = stream;
        false
    }
}

/// Whether the answer of the group commit holding an append to `stream` is to be taken as
/// lost, if a test asked (once).
pub fn commit_answer_lost(stream: &str) -> bool {
    #[cfg(debug_assertions)]
    return injected::faults().commit_answer_lost(stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = stream;
        false
    }
}

/// How long the group commit holding an append to `stream` must wait before it commits, if
/// a test asked (once).
pub fn commit_stall(stream: &str) -> Option<Duration> {
    #[cfg(debug_assertions)]
    return injected::faults().commit_stall(stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = stream;
        None
    }
}

/// Whether the group commit holding an append to `stream` must meet a failing disk, if a
/// test asked (once).
pub fn io_error(stream: &str) -> bool {
    #[cfg(debug_assertions)]
    return injected::faults().io_error(stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = stream;
        false
    }
}

/// Whether the group commit holding an append to `stream` must meet a disk whose fsync
/// fails after the writes went through, if a test asked (once).
pub fn fsync_error(stream: &str) -> bool {
    #[cfg(debug_assertions)]
    return injected::faults().fsync_error(stream);
    #[cfg(not(debug_assertions))]
    {
        let _ = stream;
        false
    }
}

/// Make the store files' writes (`writes`) or fsyncs (`fsyncs`) fail from now on, for the
/// commit an `io-error` or `fsync-error` fault is for; `false, false` lets them succeed again.
pub fn arm_disk_faults(writes: bool, fsyncs: bool) {
    #[cfg(debug_assertions)]
    {
        injected::IO_ERROR_ARMED.store(writes, std::sync::atomic::Ordering::SeqCst);
        injected::FSYNC_ERROR_ARMED.store(fsyncs, std::sync::atomic::Ordering::SeqCst);
    }
    #[cfg(not(debug_assertions))]
    let _ = (writes, fsyncs);
}

/// Whether the store files' writes fail now.
#[cfg(debug_assertions)]
pub fn io_error_armed() -> bool {
    injected::IO_ERROR_ARMED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether the store files' fsyncs fail now.
#[cfg(debug_assertions)]
pub fn fsync_error_armed() -> bool {
    injected::FSYNC_ERROR_ARMED.load(std::sync::atomic::Ordering::SeqCst)
}
