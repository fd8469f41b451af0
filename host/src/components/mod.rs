//! The component registry: every deployed version of every component, which one is
//! active, and the compiled, ready-to-call active versions.
//!
//! Records and the component bytes live in the event store's file (`components` and
//! `component_blobs` tables), written through the store's writer like every other write,
//! so deployed versions and the active pointer survive a restart and `kill -9`. Compiled
//! code is cached beside it by the runtime. Versions are numbered from 1 per component.
//! An actor reads the active version before every batch, so activating a version is a
//! pointer swap between two batches ([`deploy`] checks a new version before that).

mod changes;
mod consumers;
mod deploy;
mod records;

pub use changes::{ChangeFollower, ChangeKind, ComponentChange, Followed, NotFollowed};

pub use consumers::{CONSUMER_SAMPLE, ConsumerReport, ConsumersReport};
#[cfg(test)]
pub(crate) use deploy::valid_name;
pub use deploy::{
    COMPONENT_NAME_PATTERN, DeployError, DeployOptions, Deployed, MAX_NAME_LEN, ReplayExample, ReplayReport,
};
pub use records::ReplaySummary;

use crate::runtime::{
    AggregateComponent, ComponentDigest, ComponentKind, Loaded, ProjectionComponent, Runtime,
};
use crate::store::{ComponentVersion, EventStore, StoreError, Writer};
use records::ComponentRecord;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// An active aggregate component version, shared by every actor of its type.
pub struct ActiveAggregate {
    pub version: ComponentVersion,
    pub component: AggregateComponent,
}

/// An active projection component version, run by the projection's runner.
pub struct ActiveProjection {
    pub version: ComponentVersion,
    pub component: Arc<ProjectionComponent>,
}

/// One component with its versions, as `GET /components` lists it.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    pub name: String,
    pub kind: ComponentKind,
    pub active_version: ComponentVersion,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone)]
pub struct VersionSummary {
    pub version: ComponentVersion,
    pub digest: String,
    pub size: u64,
    pub deployed_at: String,
    pub active: bool,
    /// The replay check's findings when this version was deployed.
    pub replay: Option<ReplaySummary>,
}

/// Whether an activation or rollback replays recent history through the version first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchCheck {
    /// Like a deploy: the most recently written `sample` streams; a trap refuses the switch.
    Replay { sample: usize },
    /// No check: an operator's emergency (`?force=true`).
    Forced,
}

/// What an activation or rollback did.
#[derive(Debug, Clone)]
pub struct Switched {
    /// The version now active.
    pub version: ComponentVersion,
    /// The replay check's findings (none when forced, for a projection, or when nothing changed).
    pub replay: Option<ReplayReport>,
}

/// Why a version could not be activated or read.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("no component named {0:?} is deployed")]
    UnknownComponent(String),
    #[error("{name} has no version {version}")]
    UnknownVersion { name: String, version: ComponentVersion },
    #[error("{0} has no earlier active version to roll back to")]
    NothingToRollBack(String),
    #[error("{name} v{version} is the active version; activate another one before deleting it")]
    ActiveVersion { name: String, version: ComponentVersion },
    #[error(transparent)]
    Load(#[from] crate::runtime::LoadError),
    /// The version's replay check failed: it cannot rebuild a recent stream.
    #[error(transparent)]
    Replay(DeployError),
    #[error(transparent)]
    NotFollowed(#[from] NotFollowed),
    /// A task of the switch ended before it answered (a host defect).
    #[error("{0}")]
    Interrupted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeployError> for VersionError {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::Store(store) => VersionError::Store(store),
            DeployError::Load(load) => VersionError::Load(load),
            DeployError::NotFollowed(not) => VersionError::NotFollowed(not),
            DeployError::Interrupted(why) => VersionError::Interrupted(why),
            other => VersionError::Replay(other),
        }
    }
}

/// A version another host made active that this one could not load, and the record that
/// made it active (tried again only when the record changes).
struct Unloadable {
    version: ComponentVersion,
    why: String,
    record: Vec<u8>,
}

pub struct ComponentRegistry {
    runtime: Runtime,
    store: EventStore,
    writer: Writer,
    records: RwLock<BTreeMap<String, ComponentRecord>>,
    active: RwLock<HashMap<String, Arc<ActiveAggregate>>>,
    projections: RwLock<HashMap<String, Arc<ActiveProjection>>>,
    /// Deploys, activations and rollbacks one at a time, so each sees the last one's result.
    changing: tokio::sync::Mutex<()>,
    changes: changes::ChangeFeed,
    /// Other hosts change the components too (a cluster): what they stored is taken in
    /// before every change made here, and every moment by [`Self::refresh`].
    shared: std::sync::atomic::AtomicBool,
    /// Versions other hosts made active that this one cannot load: by component, the
    /// version and why. Nothing of such a type is served here until it loads.
    unloadable: RwLock<BTreeMap<String, Unloadable>>,
}

impl ComponentRegistry {
    /// Guest instances alive now (calls in progress).
    pub fn guest_instances(&self) -> u64 {
        self.runtime.instances_in_use()
    }

    /// Load every component's active version from the store and compile (or load the
    /// cached compilation of) each.
    pub async fn open(runtime: Runtime, store: EventStore, writer: Writer) -> Result<Self, DeployError> {
        let mut records = BTreeMap::new();
        let mut active = HashMap::new();
        let mut projections = HashMap::new();
        {
            for (name, record) in store.component_records().await? {
                let record: ComponentRecord = rmp_serde::from_slice(&record)
                    .map_err(|e| StoreError::Corrupt(format!("component record {name}: {e}")))?;
                let bytes = blob(&store, &name, &record, record.active).await?;
                let version = record.active;
                let loaded = runtime.load(&bytes)?;
                runtime.keep_compiled(&loaded);
                match loaded {
                    Loaded::Aggregate(component) => {
                        active.insert(name.clone(), Arc::new(ActiveAggregate { version, component }));
                    }
                    Loaded::Projection(component) => {
                        let component = Arc::new(component);
                        projections.insert(name.clone(), Arc::new(ActiveProjection { version, component }));
                    }
                }
                records.insert(name, record);
            }
        }
        Ok(ComponentRegistry {
            runtime,
            store,
            writer,
            records: RwLock::new(records),
            active: RwLock::new(active),
            projections: RwLock::new(projections),
            changing: tokio::sync::Mutex::new(()),
            changes: changes::ChangeFeed::new(),
            shared: std::sync::atomic::AtomicBool::new(false),
            unloadable: RwLock::new(BTreeMap::new()),
        })
    }

    /// Follow every change to the components from now on; each change is answered once
    /// `follower` (and every other) has applied it (see [`ChangeFollower::applied`]).
    pub fn follow(&self, follower: &'static str) -> ChangeFollower {
        self.changes.follow(follower)
    }

    /// The active version of the projection `name`.
    pub fn active_projection(&self, name: &str) -> Option<Arc<ActiveProjection>> {
        self.projections.read().expect("registry lock").get(name).cloned()
    }

    /// Every projection's name.
    pub fn projection_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.projections.read().expect("registry lock").keys().cloned().collect();
        names.sort();
        names
    }

    /// A stored version of the projection `name`, active or not (a view built by an older
    /// version keeps being served, and updated, by it until its rebuild has caught up).
    pub async fn projection_version(
        &self,
        name: &str,
        version: ComponentVersion,
    ) -> Result<Arc<ProjectionComponent>, VersionError> {
        if let Some(active) = self.active_projection(name)
            && active.version == version
        {
            return Ok(active.component.clone());
        }
        let bytes = self.version_bytes(name, version).await?;
        Ok(Arc::new(self.runtime.load_projection(&bytes)?))
    }

    pub fn is_empty(&self) -> bool {
        self.records.read().expect("registry lock").is_empty()
    }

    /// The active version of the aggregate component for `type_name`.
    pub fn active(&self, type_name: &str) -> Option<Arc<ActiveAggregate>> {
        self.active.read().expect("registry lock").get(type_name).cloned()
    }

    /// Every active aggregate component, by type name.
    pub fn all_active(&self) -> Vec<(String, Arc<ActiveAggregate>)> {
        let active = self.active.read().expect("registry lock");
        active.iter().map(|(name, a)| (name.clone(), a.clone())).collect()
    }

    /// Every component with its versions, for `GET /components`.
    pub fn list(&self) -> Vec<ComponentSummary> {
        let records = self.records.read().expect("registry lock");
        records
            .iter()
            .map(|(name, record)| ComponentSummary {
                name: name.clone(),
                kind: record.kind,
                active_version: record.active,
                versions: record
                    .versions
                    .iter()
                    .map(|v| VersionSummary {
                        version: v.version,
                        digest: ComponentDigest::from_bytes(&v.digest)
                            .map(|d| d.to_string())
                            .unwrap_or_default(),
                        size: v.size,
                        deployed_at: crate::time::rfc3339_seconds(v.deployed_at_micros),
                        active: v.version == record.active,
                        replay: v.replay.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The bytes of one stored version.
    pub async fn version_bytes(
        &self,
        name: &str,
        version: ComponentVersion,
    ) -> Result<Vec<u8>, VersionError> {
        let record = self.record(name)?;
        if record.version(version).is_none() {
            return Err(VersionError::UnknownVersion { name: name.to_owned(), version });
        }
        Ok(blob(&self.store, name, &record, version).await?)
    }

    fn record(&self, name: &str) -> Result<ComponentRecord, VersionError> {
        self.records
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
            .ok_or_else(|| VersionError::UnknownComponent(name.to_owned()))
    }

    /// Make a stored version active (the same swap as a deploy: actors rebuild on it
    /// before their next batch), after the same replay check as a deploy unless `check`
    /// says to skip it. Activating the active version changes nothing.
    pub async fn activate(
        &self,
        name: &str,
        version: ComponentVersion,
        check: SwitchCheck,
    ) -> Result<Switched, VersionError> {
        self.catch_up().await?;
        let switched = self.switch_to(name, version, check).await?;
        self.changes.publish(name, ChangeKind::Activated).await?;
        Ok(switched)
    }

    async fn switch_to(
        &self,
        name: &str,
        version: ComponentVersion,
        check: SwitchCheck,
    ) -> Result<Switched, VersionError> {
        let _changing = self.changing.lock().await;
        let mut record = self.record(name)?;
        if record.version(version).is_none() {
            return Err(VersionError::UnknownVersion { name: name.to_owned(), version });
        }
        if record.active == version {
            return Ok(Switched { version, replay: None });
        }
        record.activate(version);
        let replay = self.switch(name, record, check).await?;
        Ok(Switched { version, replay })
    }

    /// Delete a stored version that is not active: its record, its place in the rollback
    /// history, and its bytes and compiled code unless another version has the same digest.
    /// Answers the bytes freed.
    pub async fn delete_version(&self, name: &str, version: ComponentVersion) -> Result<u64, VersionError> {
        self.catch_up().await?;
        let freed = self.delete_stored(name, version).await?;
        self.changes.publish(name, ChangeKind::Deleted).await?;
        Ok(freed)
    }

    async fn delete_stored(&self, name: &str, version: ComponentVersion) -> Result<u64, VersionError> {
        let _changing = self.changing.lock().await;
        let mut record = self.record(name)?;
        let Some(index) = record.versions.iter().position(|v| v.version == version) else {
            return Err(VersionError::UnknownVersion { name: name.to_owned(), version });
        };
        if record.active == version {
            return Err(VersionError::ActiveVersion { name: name.to_owned(), version });
        }
        let removed = record.versions.remove(index);
        record.history.retain(|v| *v != version);
        record.last_version = record.last_version.max(version);
        let shared = self.records.read().expect("registry lock").iter().any(|(other, r)| {
            r.versions.iter().any(|v| v.digest == removed.digest && (other != name || v.version != version))
        });
        let freed = (!shared).then(|| removed.digest.clone());
        self.writer.delete_component_version(name, record.encode(), freed.clone()).await?;
        self.records.write().expect("registry lock").insert(name.to_owned(), record);
        if let Some(digest) = freed.as_deref().and_then(ComponentDigest::from_bytes) {
            self.runtime.forget_compiled(&digest);
        }
        Ok(freed.map_or(0, |_| removed.size))
    }

    /// Make the version that was active before the current one active again, after the
    /// same replay check as a deploy unless `check` says to skip it.
    pub async fn rollback(&self, name: &str, check: SwitchCheck) -> Result<Switched, VersionError> {
        self.catch_up().await?;
        let switched = self.switch_back(name, check).await?;
        self.changes.publish(name, ChangeKind::RolledBack).await?;
        Ok(switched)
    }

    async fn switch_back(&self, name: &str, check: SwitchCheck) -> Result<Switched, VersionError> {
        let _changing = self.changing.lock().await;
        let mut record = self.record(name)?;
        let previous =
            record.history.pop().ok_or_else(|| VersionError::NothingToRollBack(name.to_owned()))?;
        record.active = previous;
        let replay = self.switch(name, record, check).await?;
        Ok(Switched { version: previous, replay })
    }

    /// Check `record`'s active version against recent history (an aggregate's, unless
    /// forced), then store the record and point the active version at it.
    async fn switch(
        &self,
        name: &str,
        record: ComponentRecord,
        check: SwitchCheck,
    ) -> Result<Option<ReplayReport>, VersionError> {
        let bytes = blob(&self.store, name, &record, record.active).await?;
        let (runtime, store, running) = (self.runtime.clone(), self.store.clone(), self.active(name));
        let type_name = name.to_owned();
        let consumers = consumers::consumers_of(self, name);
        // Loading may compile (when the cache was cleared) and replaying is CPU work: keep
        // both off the async threads.
        let (component, replay) = tokio::task::spawn_blocking(move || {
            let component = runtime.load(&bytes)?;
            let replay = match (&component, check) {
                (Loaded::Aggregate(new), SwitchCheck::Replay { sample }) => {
                    let replay = deploy::replay_check(running.as_deref(), new, &store, &type_name, sample)?;
                    // A switch changes schemas as a deploy does: the consumers must read them.
                    consumers::consumer_check(&consumers, running.as_deref(), new, &store, sample, false)?;
                    Some(replay)
                }
                _ => None,
            };
            Ok::<_, VersionError>((component, replay))
        })
        .await
        .map_err(|e| VersionError::Interrupted(format!("loading a component failed: {e}")))??;
        self.writer.put_component(name, record.encode(), None, None).await?;
        let version = record.active;
        self.records.write().expect("registry lock").insert(name.to_owned(), record);
        self.make_active(name, version, component);
        tracing::info!(
            component = name,
            version = version.get(),
            forced = matches!(check, SwitchCheck::Forced),
            "activated"
        );
        Ok(replay)
    }

    /// Other hosts change the components in the store too: take their changes in before
    /// each made here.
    pub fn share_with_other_hosts(&self) {
        self.shared.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Versions other hosts made active that this host cannot load, with why.
    pub fn unloadable(&self) -> Vec<(String, ComponentVersion, String)> {
        let unloadable = self.unloadable.read().expect("registry lock");
        unloadable.iter().map(|(name, u)| (name.clone(), u.version, u.why.clone())).collect()
    }

    /// Before a change here, in a cluster: the changes other hosts made, so that this one
    /// builds on them (two changes of one component on two hosts at the same moment still
    /// race: the later record wins; docs/ARCHITECTURE.md).
    async fn catch_up(&self) -> Result<(), StoreError> {
        if self.shared.load(std::sync::atomic::Ordering::SeqCst) { self.refresh().await } else { Ok(()) }
    }

    /// In a cluster: take what other hosts changed in the store (a deploy, an activation, a
    /// rollback, a deletion) as if it had been done here, and tell the followers. A version
    /// this host cannot load (a newer binary's) stops its type here, rather than serving the
    /// version before it: it is logged, and retried at the next refresh.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut changed = Vec::new();
        {
            // Read under the lock: a snapshot read before a change made here would undo it.
            let _changing = self.changing.lock().await;
            let stored = self.store.component_records().await?;
            for (name, bytes) in stored {
                let known = self.records.read().expect("registry lock").get(&name).cloned();
                let failed =
                    self.unloadable.read().expect("registry lock").get(&name).map(|u| u.record == bytes);
                if failed == Some(true)
                    || (failed.is_none() && known.as_ref().is_some_and(|k| k.encode() == bytes))
                {
                    continue;
                }
                let record: ComponentRecord = rmp_serde::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("component record {name}: {e}")))?;
                // Loaded again unless only a version that is not active went: whenever the
                // active version or its bytes changed, it failed to load before, or nothing of
                // it runs here.
                let active_digest = |r: &ComponentRecord| r.version(r.active).map(|v| v.digest.clone());
                let running = self.active(&name).is_some() || self.active_projection(&name).is_some();
                let load = failed.is_some()
                    || !running
                    || known.as_ref().is_none_or(|k| {
                        k.active != record.active || active_digest(k) != active_digest(&record)
                    });
                let kind = match &known {
                    None => ChangeKind::Deployed,
                    Some(_) if !load => ChangeKind::Deleted,
                    Some(known) if record.versions.len() > known.versions.len() => ChangeKind::Deployed,
                    Some(_) => ChangeKind::Activated,
                };
                if load {
                    let component = blob(&self.store, &name, &record, record.active).await?;
                    let runtime = self.runtime.clone();
                    let loaded = match tokio::task::spawn_blocking(move || runtime.load(&component)).await {
                        Ok(Ok(component)) => Ok(component),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    match loaded {
                        Ok(component) => {
                            self.unloadable.write().expect("registry lock").remove(&name);
                            self.make_active(&name, record.active, component)
                        }
                        Err(why) => {
                            tracing::error!(
                                component = name,
                                version = record.active.get(),
                                "cannot load the version another host made active, so this host serves \
                                 none of it: {why}"
                            );
                            self.active.write().expect("registry lock").remove(&name);
                            self.projections.write().expect("registry lock").remove(&name);
                            let failure = Unloadable { version: record.active, why, record: bytes };
                            self.unloadable.write().expect("registry lock").insert(name, failure);
                            continue;
                        }
                    }
                    tracing::info!(component = name, version = record.active.get(), "active here too");
                }
                self.records.write().expect("registry lock").insert(name.clone(), record);
                changed.push((name, kind));
            }
        }
        for (name, kind) in changed {
            if let Err(error) = self.changes.publish(&name, kind).await {
                tracing::warn!("a follower did not take a change made on another host: {error}");
            }
        }
        Ok(())
    }

    fn make_active(&self, name: &str, version: ComponentVersion, component: Loaded) {
        self.runtime.keep_compiled(&component);
        match component {
            Loaded::Aggregate(component) => {
                let active = Arc::new(ActiveAggregate { version, component });
                self.active.write().expect("registry lock").insert(name.to_owned(), active);
            }
            Loaded::Projection(component) => {
                let active = Arc::new(ActiveProjection { version, component: Arc::new(component) });
                self.projections.write().expect("registry lock").insert(name.to_owned(), active);
            }
        }
    }
}

/// The stored bytes of `name`'s `version`.
async fn blob(
    store: &EventStore,
    name: &str,
    record: &ComponentRecord,
    version: ComponentVersion,
) -> Result<Vec<u8>, StoreError> {
    let digest = &record
        .version(version)
        .ok_or_else(|| StoreError::Corrupt(format!("component {name} has no version {version}")))?
        .digest;
    store
        .component_bytes(digest)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("component {name} v{version} bytes missing")))
}
