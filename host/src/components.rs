//! The component registry: every deployed version of every component, which one is
//! active, and the compiled, ready-to-call active versions.
//!
//! Records and the component bytes live in the event store's file (`components` and
//! `component_blobs` tables) so deployed components survive a restart; compiled code is
//! cached beside it by the runtime. Versions are numbered from 1 per component; an actor
//! reads the active version before every batch, so activating a version is a pointer
//! swap between two batches.

use crate::runtime::{AggregateComponent, ComponentDigest, GuestError, LoadError, Runtime};
use crate::store::tables::{COMPONENT_BLOBS, COMPONENTS};
use crate::store::{EventStore, StoreError, StreamId, Version};
use cairn_guest::glue::RawEvent;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// An active aggregate component version, shared by every actor of its type.
pub struct ActiveAggregate {
    pub version: u32,
    pub component: AggregateComponent,
}

/// Events read from the store per chunk while rebuilding state.
const REPLAY_CHUNK: usize = 4096;

/// Why a stream's state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl ActiveAggregate {
    /// Fold the events of `stream` after `version`, up to `up_to`, into `state` with this
    /// component version; returns the state and the version it reached. Each chunk read
    /// from the store is folded in one guest call.
    pub fn replay(
        &self,
        store: &EventStore,
        stream: &StreamId,
        mut state: Option<Vec<u8>>,
        mut version: Version,
        up_to: Version,
    ) -> Result<(Option<Vec<u8>>, Version), ReplayError> {
        while version < up_to {
            let events = store.read_stream_range(stream, version + 1, up_to, REPLAY_CHUNK)?;
            let Some(last) = events.last() else { break };
            version = last.version;
            let events: Vec<RawEvent> = events
                .into_iter()
                .map(|e| RawEvent { event_type: e.event_type, payload: e.payload })
                .collect();
            state = self.component.apply_events(state.as_deref(), &events)?;
        }
        Ok((state, version))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRecord {
    version: u32,
    #[serde(with = "serde_bytes")]
    digest: Vec<u8>,
    deployed_at_micros: u64,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ComponentRecord {
    kind: String,
    versions: Vec<VersionRecord>,
    active: u32,
}

/// What `deploy` answers (API.md: `{"name", "kind", "version", "digest"}`).
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub name: String,
    pub kind: &'static str,
    pub version: u32,
    pub digest: String,
}

/// One component as `GET /components` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentSummary {
    pub name: String,
    pub kind: String,
    pub active_version: u32,
    pub versions: Vec<VersionSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub version: u32,
    pub digest: String,
    pub size: u64,
    pub deployed_at: String,
    pub active: bool,
}

/// Why a deploy was refused; the running version stays active.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("component names are kebab-case ([a-z0-9-], 1 to 64 characters): {0:?}")]
    InvalidName(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the component describes itself as {declared:?}, not {name:?}")]
    NameMismatch { name: String, declared: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ComponentRegistry {
    runtime: Runtime,
    store: EventStore,
    records: RwLock<BTreeMap<String, ComponentRecord>>,
    active: RwLock<HashMap<String, Arc<ActiveAggregate>>>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ComponentRegistry {
    /// Load every component's active version from the store and compile (or load the
    /// cached compilation of) each.
    pub fn open(runtime: Runtime, store: EventStore) -> Result<Self, DeployError> {
        let mut records = BTreeMap::new();
        let mut active = HashMap::new();
        {
            let read = store.database().begin_read().map_err(StoreError::from)?;
            let table = read.open_table(COMPONENTS).map_err(StoreError::from)?;
            let blobs = read.open_table(COMPONENT_BLOBS).map_err(StoreError::from)?;
            for entry in table.iter().map_err(StoreError::from)? {
                let (name, record) = entry.map_err(StoreError::from)?;
                let name = name.value().to_owned();
                let record: ComponentRecord = rmp_serde::from_slice(record.value())
                    .map_err(|e| StoreError::Corrupt(format!("component record {name}: {e}")))?;
                let current =
                    record.versions.iter().find(|v| v.version == record.active).ok_or_else(|| {
                        StoreError::Corrupt(format!("component {name} has no active version"))
                    })?;
                let bytes =
                    blobs.get(current.digest.as_slice()).map_err(StoreError::from)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("component {name} v{} bytes missing", current.version))
                    })?;
                let component = runtime.load_aggregate(bytes.value())?;
                active
                    .insert(name.clone(), Arc::new(ActiveAggregate { version: current.version, component }));
                records.insert(name, record);
            }
        }
        Ok(ComponentRegistry { runtime, store, records: RwLock::new(records), active: RwLock::new(active) })
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

    /// Validate, store and activate a new version of the aggregate component `name`.
    /// Deploying the bytes of the active version again changes nothing.
    ///
    /// # Errors
    /// The name is not kebab-case, the bytes are not an aggregate component, it describes
    /// itself under another name, or the store failed. The running version stays.
    pub fn deploy(&self, name: &str, bytes: &[u8]) -> Result<Deployed, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::InvalidName(name.to_owned()));
        }
        let component = self.runtime.load_aggregate(bytes)?;
        let declared = &component.info().type_name;
        if declared != name {
            return Err(DeployError::NameMismatch { name: name.to_owned(), declared: declared.clone() });
        }
        let digest = component.digest().clone();
        let mut records = self.records.write().expect("registry lock");
        if let Some(record) = records.get(name)
            && let Some(current) = record.versions.iter().find(|v| v.version == record.active)
            && current.digest == digest.as_bytes()
        {
            return Ok(Deployed {
                name: name.to_owned(),
                kind: "aggregate",
                version: current.version,
                digest: digest.to_string(),
            });
        }
        let mut record = records.get(name).cloned().unwrap_or(ComponentRecord {
            kind: "aggregate".to_owned(),
            versions: Vec::new(),
            active: 0,
        });
        let version = record.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        record.versions.push(VersionRecord {
            version,
            digest: digest.as_bytes().to_vec(),
            deployed_at_micros: crate::time::now_micros(),
            size: bytes.len() as u64,
        });
        record.active = version;
        self.persist(name, &record, Some((&digest, bytes)))?;
        records.insert(name.to_owned(), record);
        self.active
            .write()
            .expect("registry lock")
            .insert(name.to_owned(), Arc::new(ActiveAggregate { version, component }));
        tracing::info!(component = name, version, %digest, "deployed");
        Ok(Deployed { name: name.to_owned(), kind: "aggregate", version, digest: digest.to_string() })
    }

    fn persist(
        &self,
        name: &str,
        record: &ComponentRecord,
        blob: Option<(&ComponentDigest, &[u8])>,
    ) -> Result<(), StoreError> {
        let txn = self.store.database().begin_write()?;
        {
            let mut table = txn.open_table(COMPONENTS)?;
            let encoded = rmp_serde::to_vec(record).expect("encode a component record");
            table.insert(name, encoded.as_slice())?;
            if let Some((digest, bytes)) = blob {
                txn.open_table(COMPONENT_BLOBS)?.insert(digest.as_bytes().as_slice(), bytes)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every component with its versions, for `GET /components`.
    pub fn list(&self) -> Vec<ComponentSummary> {
        let records = self.records.read().expect("registry lock");
        records
            .iter()
            .map(|(name, record)| ComponentSummary {
                name: name.clone(),
                kind: record.kind.clone(),
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
                    })
                    .collect(),
            })
            .collect()
    }
}
