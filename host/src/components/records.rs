//! What the registry keeps per component in the store's `components` table.

use crate::runtime::ComponentDigest;
use crate::runtime::ComponentKind;
use crate::store::{ComponentVersion, StreamId};
use serde::{Deserialize, Serialize};

/// One deployed version of a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    pub version: ComponentVersion,
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    pub deployed_at_micros: u64,
    pub size: u64,
    /// What the replay check found when this version was deployed.
    #[serde(default)]
    pub replay: Option<ReplaySummary>,
}

/// A component: its kind, every version, the active one, and the ones active before it
/// (most recent last), which `rollback` goes back through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ComponentRecord {
    pub kind: ComponentKind,
    pub versions: Vec<VersionRecord>,
    pub active: ComponentVersion,
    #[serde(default)]
    pub history: Vec<ComponentVersion>,
    /// The highest version number ever given, deleted ones included, so a number is never
    /// given twice (events name the version that wrote them).
    #[serde(default)]
    pub last_version: ComponentVersion,
}

impl ComponentRecord {
    pub fn version(&self, version: ComponentVersion) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The number the next new version gets.
    pub fn next_version(&self) -> ComponentVersion {
        self.versions.iter().map(|v| v.version).max().unwrap_or(ComponentVersion::ZERO).max(self.last_version)
            + 1
    }

    pub fn with_digest(&self, digest: &ComponentDigest) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.digest == digest.as_bytes())
    }

    /// Make `version` the active one, remembering the one it replaces.
    pub fn activate(&mut self, version: ComponentVersion) {
        if self.active != version {
            if self.active != 0 {
                self.history.push(self.active);
            }
            self.active = version;
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("encode a component record")
    }
}

/// How many of the sampled streams a new version replayed, and how many came out in a
/// different state than under the version it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySummary {
    pub streams: u64,
    pub changed: u64,
    /// One stream whose state changed, if any.
    pub example_stream: Option<StreamId>,
}

#[cfg(test)]
mod tests {
    use super::ComponentKind;

    /// Records written before the kind was a type held it as a plain string: it still
    /// decodes, and is written the same way.
    #[test]
    fn a_component_kind_is_stored_as_the_string_it_always_was() {
        for (kind, text) in
            [(ComponentKind::Aggregate, "aggregate"), (ComponentKind::Projection, "projection")]
        {
            let old = rmp_serde::to_vec_named(text).unwrap();
            assert_eq!(rmp_serde::to_vec_named(&kind).unwrap(), old);
            assert_eq!(rmp_serde::from_slice::<ComponentKind>(&old).unwrap(), kind);
        }
        assert!(rmp_serde::from_slice::<ComponentKind>(&rmp_serde::to_vec_named("view").unwrap()).is_err());
    }
}
