//! The registry's change feed: what the layers that follow components (routing, projections)
//! learn of deploys, activations, rollbacks and deletions.
//!
//! The registry publishes; a follower takes each change and applies it on its own (start a
//! subscriber, rebuild a view), then says so. A change is answered to whoever made it once
//! every follower has applied it, so a client that deploys a projection can read its view
//! at once, as if the registry had done the follower's work itself, without calling up.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How long a change waits for its followers before it is answered anyway.
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

#[derive(Debug, Clone)]
pub struct ComponentChange {
    pub sequence: u64,
    pub name: String,
    pub kind: ChangeKind,
}

/// What a follower did with a change: `Err` says why it could not apply it.
#[derive(Debug, Clone, Default)]
struct Applied {
    sequence: u64,
    error: Option<String>,
}

/// A follower's side of the feed.
pub struct ChangeFollower {
    name: &'static str,
    changes: broadcast::Receiver<ComponentChange>,
    applied: watch::Sender<Applied>,
}

/// What [`ChangeFollower::next`] heard.
pub enum Followed {
    Change(ComponentChange),
    /// Changes were dropped before this follower took them: look at every component again.
    Missed,
    /// The registry is gone.
    Closed,
}

impl ChangeFollower {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub async fn next(&mut self) -> Followed {
        match self.changes.recv().await {
            Ok(change) => Followed::Change(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Followed::Missed,
            Err(broadcast::error::RecvError::Closed) => Followed::Closed,
        }
    }

    /// The change `sequence` is applied (or could not be, and why).
    pub fn applied(&self, sequence: u64, outcome: Result<(), String>) {
        self.applied.send_replace(Applied { sequence, error: outcome.err() });
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
    state: Mutex<FeedState>,
}

struct FeedState {
    sequence: u64,
    followers: Vec<(&'static str, watch::Receiver<Applied>)>,
}

impl ChangeFeed {
    pub(super) fn new() -> ChangeFeed {
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        ChangeFeed { sender, state: Mutex::new(FeedState { sequence: 0, followers: Vec::new() }) }
    }

    pub(super) fn follow(&self, name: &'static str) -> ChangeFollower {
        let mut state = self.state.lock().expect("feed lock");
        let (applied, seen) = watch::channel(Applied { sequence: state.sequence, error: None });
        state.followers.push((name, seen));
        ChangeFollower { name, changes: self.sender.subscribe(), applied }
    }

    /// Publish a change of `name` and wait (bounded) until every follower has applied it.
    pub(super) async fn publish(&self, name: &str, kind: ChangeKind) -> Result<(), NotFollowed> {
        let (sequence, followers) = {
            let mut state = self.state.lock().expect("feed lock");
            // A follower that ended (its layer stopped) waits for nothing.
            state.followers.retain(|(_, seen)| seen.has_changed().is_ok());
            state.sequence += 1;
            let change = ComponentChange { sequence: state.sequence, name: name.to_owned(), kind };
            let _ = self.sender.send(change);
            (state.sequence, state.followers.clone())
        };
        for (follower, mut seen) in followers {
            let waited = tokio::time::timeout(FOLLOW_WAIT, seen.wait_for(|a| a.sequence >= sequence)).await;
            match waited {
                Ok(Ok(applied)) => {
                    if applied.sequence == sequence
                        && let Some(error) = applied.error.clone()
                    {
                        return Err(NotFollowed { name: name.to_owned(), follower, error });
                    }
                }
                // Stopped meanwhile: the host is shutting down.
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    component = name,
                    follower,
                    "the change is not applied after {FOLLOW_WAIT:?}; answering anyway"
                ),
            }
        }
        Ok(())
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
            while let Followed::Change(change) = quick.next().await {
                quick.applied(change.sequence, Ok(()));
            }
        });
        let slow_applied = applied.clone();
        tokio::spawn(async move {
            while let Followed::Change(change) = slow.next().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                slow_applied.store(true, Ordering::SeqCst);
                slow.applied(change.sequence, Ok(()));
            }
        });
        feed.publish("account", ChangeKind::Deployed).await.unwrap();
        assert!(applied.load(Ordering::SeqCst), "answered before the slow follower applied the change");
    }

    #[tokio::test]
    async fn a_follower_that_cannot_apply_a_change_makes_it_an_error_and_one_that_ended_is_not_waited_for() {
        let feed = ChangeFeed::new();
        let ended = feed.follow("ended");
        drop(ended);
        let mut failing = feed.follow("projections");
        let following = tokio::spawn(async move {
            if let Followed::Change(change) = failing.next().await {
                assert_eq!((change.name.as_str(), change.kind), ("account-info", ChangeKind::Activated));
                failing.applied(change.sequence, Err("the disk is full".to_owned()));
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
}
