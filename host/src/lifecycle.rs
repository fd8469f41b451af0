//! Who starts, supervises and stops the host's background parts.
//!
//! The host holds one root [`CancellationToken`]; each layer gets a [`Part`]: a child token
//! that tells its tasks to stop and a [`TaskTracker`] that tells the host when they have.
//! The host stops its parts one after the other ([`crate::host::Host::shutdown`]), so a
//! layer never loses what the layer above it still hands down. Inside a part, "stopping"
//! is the error [`Stopped`], carried by `?`.
//!
//! Long-running loops (a subscriber, a projection's runner, the retention sweeper) run
//! under [`supervise`]: a run that fails or panics is recorded and started again, after a
//! pause that doubles while failures come soon after one another.

use std::future::Future;
use std::time::{Duration, Instant};
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// The host is stopping: what was asked of a part was not done, and need not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host is stopping")]
pub struct Stopped;

/// One layer's share of the lifecycle: its stop signal and its tasks.
#[derive(Debug, Clone)]
pub struct Part {
    token: CancellationToken,
    tracker: TaskTracker,
    /// When set, the part's supervised loops run only while it is `true` (in a cluster, on
    /// the one host that holds the lease of that work), and stop when it turns `false`.
    gate: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Part {
    /// A part that stops when `parent` does, or when it is stopped itself.
    pub fn child_of(parent: &CancellationToken) -> Part {
        Part { token: parent.child_token(), tracker: TaskTracker::new(), gate: None }
    }

    /// The same part, its supervised loops running only while `gate` is `true`.
    pub fn gated(self, gate: Option<tokio::sync::watch::Receiver<bool>>) -> Part {
        Part { gate, ..self }
    }

    /// Whether the part is gated at all (in a cluster).
    pub fn is_gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Whether the part's supervised loops may run now (always, unless gated).
    pub fn may_run(&self) -> bool {
        self.gate.as_ref().is_none_or(|gate| *gate.borrow())
    }

    /// Wait until the part's loops may run; `Err(Stopped)` if the part stops first.
    pub(crate) async fn opened(&self) -> Result<(), Stopped> {
        let Some(gate) = &self.gate else { return self.check() };
        let mut gate = gate.clone();
        tokio::select! {
            opened = gate.wait_for(|open| *open) => opened.map(|_| ()).map_err(|_| Stopped),
            _ = self.token.cancelled() => Err(Stopped),
        }
    }

    /// Resolves once the gate closes (never, without one).
    pub(crate) async fn closed(&self) {
        match &self.gate {
            Some(gate) => {
                let mut gate = gate.clone();
                let _ = gate.wait_for(|open| !*open).await;
            }
            None => std::future::pending().await,
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// `Err(Stopped)` once the part is stopping: a check for loops, carried by `?`.
    pub fn check(&self) -> Result<(), Stopped> {
        if self.token.is_cancelled() { Err(Stopped) } else { Ok(()) }
    }

    /// Sleep for `duration`, unless the part stops first.
    pub async fn pause(&self, duration: Duration) -> Result<(), Stopped> {
        tokio::select! {
            _ = tokio::time::sleep(duration) => self.check(),
            _ = self.token.cancelled() => Err(Stopped),
        }
    }

    /// Tell every task of the part to stop, and wait until all have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How long a supervisor waits before it starts a failed run again.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// A run that lasted this long before failing starts the next pause from `first`.
    pub reset_after: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, reset_after: Duration::from_secs(30) }
    }
}

/// Where a supervised part's failures are shown (its status page, its counters).
pub trait FailureRecord: Send + Sync {
    fn record_failure(&self, error: &str);
}

/// How a supervised run ended.
pub type RunResult = Result<(), RunFailed>;

/// A run that failed, with what to show of it; the supervisor starts it again.
#[derive(Debug)]
pub struct RunFailed(pub String);

/// Run `run` until it ends well or `part` stops; a run that fails or panics is recorded in
/// `status` and started again after `backoff`. Each run is a task of its own, so a panic in
/// it is caught here; the part's token ends the pauses between runs.
pub async fn supervise<F, Fut>(
    name: &str,
    backoff: Backoff,
    status: &dyn FailureRecord,
    part: &Part,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    let mut pause = backoff.first;
    loop {
        if part.opened().await.is_err() {
            return;
        }
        let started = Instant::now();
        let mut running = tokio::spawn(run());
        let ended = tokio::select! {
            ended = &mut running => ended,
            _ = part.closed() => {
                // The lease of this work moved to another host: stop here, as a crash would
                // (cursors and views have not passed what is unfinished), and wait for it again.
                running.abort();
                let _ = running.await;
                tracing::info!(part = name, "stopped: another host runs it now");
                continue;
            }
        };
        let error = match ended {
            Ok(Ok(())) => return,
            Ok(Err(_)) if part.is_stopping() => return,
            Ok(Err(RunFailed(error))) => error,
            Err(join) if join.is_panic() => format!("{name} panicked: {}", panic_message(join.into_panic())),
            Err(join) => format!("{name} ended: {join}"),
        };
        if started.elapsed() > backoff.reset_after {
            pause = backoff.first;
        }
        tracing::error!(part = name, "restarting in {pause:?}: {error}");
        status.record_failure(&error);
        if part.pause(pause).await.is_err() {
            return;
        }
        pause = (pause * 2).min(backoff.max);
    }
}

/// The text of a panic's payload (a `&str` or a `String`, as `panic!` makes them).
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Failures(Mutex<Vec<String>>);

    impl FailureRecord for Failures {
        fn record_failure(&self, error: &str) {
            self.0.lock().unwrap().push(error.to_owned());
        }
    }

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            reset_after: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn a_run_that_panics_or_fails_is_recorded_and_started_again_until_it_ends_well() {
        let part = Part::child_of(&CancellationToken::new());
        let failures = Failures::default();
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        supervise("test part", quick(), &failures, &part, move || {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => panic!("first run"),
                    1 => Err(RunFailed("second run".to_owned())),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let failures = failures.0.into_inner().unwrap();
        assert_eq!(failures, vec!["test part panicked: first run".to_owned(), "second run".to_owned()]);
    }

    /// In a cluster the routing and the projections run only on the host holding their
    /// lease: no run starts while the gate is shut, a run is stopped when it shuts, and one
    /// starts again when it opens, none of it recorded as a failure.
    #[tokio::test]
    async fn a_gated_part_runs_only_while_its_gate_is_open() {
        let root = CancellationToken::new();
        let (gate, watched) = tokio::sync::watch::channel(false);
        let part = Part::child_of(&root).gated(Some(watched));
        assert!(!part.may_run());
        let runs = std::sync::Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let supervised = {
            let part = part.clone();
            tokio::spawn(async move {
                let failures = Failures::default();
                let token = part.token().clone();
                supervise("gated part", quick(), &failures, &part, move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Runs until the part stops.
                    let token = token.clone();
                    async move {
                        token.cancelled().await;
                        Ok(())
                    }
                })
                .await;
                failures.0.into_inner().unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing runs while the gate is shut");
        gate.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        gate.send(false).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        gate.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the run stopped when the gate shut, and ran again");
        root.cancel();
        let failures = tokio::time::timeout(Duration::from_secs(10), supervised).await.unwrap().unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[tokio::test]
    async fn a_stopping_part_ends_its_supervision_during_a_pause_and_records_nothing_more() {
        let root = CancellationToken::new();
        let part = Part::child_of(&root);
        let failures = Failures::default();
        let slow = Backoff { first: Duration::from_secs(3600), ..quick() };
        let stopper = {
            let root = root.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                root.cancel();
            })
        };
        let supervised = supervise("failing part", slow, &failures, &part, || async {
            Err(RunFailed("always".to_owned()))
        });
        tokio::time::timeout(Duration::from_secs(10), supervised).await.expect("the stop ends the pause");
        stopper.await.unwrap();
        assert_eq!(failures.0.into_inner().unwrap().len(), 1);
        assert_eq!(part.check(), Err(Stopped));
    }

    #[tokio::test]
    async fn stopping_a_part_waits_for_its_tasks_and_leaves_its_parent_running() {
        let root = CancellationToken::new();
        let part = Part::child_of(&root);
        let finished = std::sync::Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            let (token, finished) = (part.token().clone(), finished.clone());
            part.tracker().spawn(async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        part.stop().await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert!(!root.is_cancelled());
    }
}
