//! The registry's change feed: what the layers that follow components (routing, projections)
//! learn of deploys, activations, rollbacks and deletions.
//!
//! The registry publishes; a follower takes each change and applies it on its own (start a
//! subscriber, rebuild a view), then says so on the change itself. A change is answered to
//! whoever made it once every follower has applied it (all within one deadline), so a client
//! that deploys a projection can read its view at once, as if the registry had done the
//! follower's work itself, without calling up.

use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// How long a change waits for its followers, all together, before it is answered anyway.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

/// Changes kept for a follower that is slow to take them; one that falls further behind
/// hears [`Followed::Missed`] and looks at every component again.
const FEED_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new version was deployed and is active (or an active version's bytes again).
    Deployed,
    Activated,
    RolledBack,
    /// A version that is not active was deleted.
    Deleted,
}

/// One change, and where its followers say they have applied it.
#[derive(Debug, Clone)]
pub struct ComponentChange {
    pub name: String,
    pub kind: ChangeKind,
    acks: mpsc::UnboundedSender<(&'static str, Result<(), String>)>,
}

/// A follower's side of the feed.
pub struct ChangeFollower {
    name: &'static str,
    changes: broadcast::Receiver<ComponentChange>,
}

/// What [`ChangeFollower::next`] heard.
pub enum Followed {
    Change(ComponentChange),
    /// Changes were dropped before this follower took them: look at every component again.
    Missed,
}

impl ChangeFollower {
    /// The next change; `None` once `stop` is cancelled or the registry is gone.
    pub async fn next(&mut self, stop: &CancellationToken) -> Option<Followed> {
        let received = tokio::select! {
            _ = stop.cancelled() => return None,
            received = self.changes.recv() => received,
        };
        match received {
            Ok(change) => Some(Followed::Change(change)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Followed::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// `change` is applied (or could not be, and why).
    pub fn applied(&self, change: &ComponentChange, outcome: Result<(), String>) {
        let _ = change.acks.send((self.name, outcome));
    }
}

/// A follower that could not apply a change that is already stored and active.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{name} is changed, but the {follower} could not follow the change: {error}")]
pub struct NotFollowed {
    pub name: String,
    pub follower: &'static str,
    pub error: String,
}

pub(super) struct ChangeFeed {
    sender: broadcast::Sender<ComponentChange>,
    wait: Duration,
}

impl ChangeFeed {
    pub(super) fn new() -> ChangeFeed {
        ChangeFeed::waiting(FOLLOW_WAIT)
    }

    pub(super) fn waiting(wait: Duration) -> ChangeFeed {
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        ChangeFeed { sender, wait }
    }

    pub(super) fn follow(&self, name: &'static str) -> ChangeFollower {
        ChangeFollower { name, changes: self.sender.subscribe() }
    }

    /// Publish a change of `name` and wait (bounded) until every follower has applied it.
    /// A follower that has ended (its layer stopped) is not waited for.
    pub(super) async fn publish(&self, name: &str, kind: ChangeKind) -> Result<(), NotFollowed> {
        let (acks, mut applied) = mpsc::unbounded_channel();
        let change = ComponentChange { name: name.to_owned(), kind, acks };
        let followers = self.sender.send(change).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut first_failure = None;
        for _ in 0..followers {
            match tokio::time::timeout_at(deadline, applied.recv()).await {
                Ok(Some((follower, Err(error)))) => {
                    first_failure.get_or_insert(NotFollowed { name: name.to_owned(), follower, error });
                }
                Ok(Some((_, Ok(())))) => {}
                // Every follower dropped the change unanswered: they are stopping.
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        component = name,
                        "a follower has not applied the change after {:?}; answering anyway",
                        self.wait
                    );
                    break;
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_change_is_answered_only_once_every_follower_has_applied_it() {
        let feed = Arc::new(ChangeFeed::new());
        let mut quick = feed.follow("quick");
        let mut slow = feed.follow("slow");
        let applied = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(Followed::Change(change)) = quick.next(&CancellationToken::new()).await {
                quick.applied(&change, Ok(()));
            }
        });
        let slow_applied = applied.clone();
        tokio::spawn(async move {
            while let Some(Followed::Change(change)) = slow.next(&CancellationToken::new()).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                slow_applied.store(true, Ordering::SeqCst);
                slow.applied(&change, Ok(()));
            }
        });
        feed.publish("account", ChangeKind::Deployed).await.unwrap();
        assert!(applied.load(Ordering::SeqCst), "answered before the slow follower applied the change");
    }

    #[tokio::test]
    async fn a_follower_that_cannot_apply_a_change_makes_it_an_error_and_one_that_ended_is_not_waited_for() {
        let feed = ChangeFeed::new();
        drop(feed.follow("ended"));
        let mut failing = feed.follow("projections");
        let following = tokio::spawn(async move {
            if let Some(Followed::Change(change)) = failing.next(&CancellationToken::new()).await {
                assert_eq!((change.name.as_str(), change.kind), ("account-info", ChangeKind::Activated));
                failing.applied(&change, Err("the disk is full".to_owned()));
            }
            failing
        });
        let error = feed.publish("account-info", ChangeKind::Activated).await.unwrap_err();
        assert_eq!((error.follower, error.error.as_str()), ("projections", "the disk is full"));
        drop(following.await.unwrap());
        let published =
            tokio::time::timeout(Duration::from_secs(5), feed.publish("account", ChangeKind::Deleted));
        published.await.expect("no follower is left to wait for").unwrap();
    }

    #[tokio::test]
    async fn followers_that_never_answer_hold_a_change_for_one_deadline_in_all() {
        let feed = ChangeFeed::waiting(Duration::from_millis(300));
        let (mut first, mut second) = (feed.follow("first"), feed.follow("second"));
        let silent = tokio::spawn(async move {
            let never = CancellationToken::new();
            let (a, b) = (first.next(&never).await, second.next(&never).await);
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop((a, b, first, second));
        });
        let started = tokio::time::Instant::now();
        feed.publish("account", ChangeKind::Deployed).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "{waited:?}");
        silent.abort();
    }
}
