//! Components as users see them over HTTP: the list, a deploy's report, an activation's or a
//! rollback's answer. The registry's own types stay free of the document's concerns; these
//! are the only shapes the handlers serialize, so the OpenAPI document describes exactly
//! what is sent.

use crate::components::{
    ComponentSummary, ConsumersReport, Deployed, ReplayExample, ReplayReport, ReplaySummary, Switched,
    VersionSummary,
};
use serde::Serialize;
use serde_json::Value;

/// One component as `GET /components` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ComponentJson {
    pub name: String,
    /// `aggregate` or `projection`.
    pub kind: &'static str,
    pub active_version: u32,
    pub versions: Vec<VersionJson>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionJson {
    pub version: u32,
    /// `sha256:` and the hex digest of the `.wasm` bytes.
    pub digest: String,
    /// The `.wasm` size in bytes.
    pub size: u64,
    /// RFC 3339 in UTC.
    pub deployed_at: String,
    pub active: bool,
    /// The replay check's findings when this version was deployed.
    pub replay: Option<ReplaySummaryJson>,
}

/// How many of the sampled streams a version replayed when it was deployed, and how many came
/// out in a different state than under the version it replaced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplaySummaryJson {
    pub streams: u64,
    pub changed: u64,
    /// `type/id` of one stream whose state changed, if any.
    pub example_stream: Option<String>,
}

/// What a deploy answers: API.md's `{"name", "kind", "version", "digest"}`, with the replay
/// check's report and whether the version is now active.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeployJson {
    pub name: String,
    /// `aggregate` or `projection`.
    pub kind: &'static str,
    /// The version these bytes are (or would be, on a dry run).
    pub version: u32,
    pub digest: String,
    pub active: bool,
    pub dry_run: bool,
    pub replay: ReplayJson,
    /// The consumer check's findings: present when the version changes an event type's
    /// schema (docs/ARCHITECTURE.md, "Schema versions and upcasting").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumersJson>,
}

/// What the consumer check found: the event types whose schema changes, how many stored
/// events of them were sampled, and what each consumer did with them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumersJson {
    pub changed_types: Vec<String>,
    pub sampled: u64,
    pub consumers: Vec<ConsumerJson>,
}

/// One consumer's part of the check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerJson {
    pub name: String,
    /// `reaction` or `projection`.
    pub kind: &'static str,
    /// Sampled events it reads.
    pub events: u64,
    /// Of those, the ones it answers differently in the new schema (other commands, other documents).
    pub changed: u64,
}

/// What a replay check found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayJson {
    /// Streams rebuilt with the version.
    pub streams: u64,
    /// Of those, the ones whose state differs from the running version's.
    pub changed: u64,
    pub example: Option<ReplayExampleJson>,
}

/// One stream whose state the version changes, with both states.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayExampleJson {
    /// `type/id`.
    pub stream: String,
    /// The state under the running version (any JSON value, `null` for none).
    pub before: Value,
    /// The state under the new version.
    pub after: Value,
}

/// What an activation or a rollback answers (fields in the order the host always sent them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SwitchedJson {
    /// The version now active.
    pub active_version: u32,
    pub name: String,
    /// The replay check's findings: none when forced, for a projection, or when the version
    /// was already active.
    pub replay: Option<ReplayJson>,
}

/// What deleting a stored version answers (fields in the order the host always sent them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedVersionJson {
    pub deleted_version: u32,
    /// The bytes the store gave back: the version's `.wasm`, or 0 when another version has
    /// the same bytes.
    pub freed_bytes: u64,
    pub name: String,
}

impl From<ComponentSummary> for ComponentJson {
    fn from(component: ComponentSummary) -> Self {
        ComponentJson {
            name: component.name,
            kind: component.kind.as_str(),
            active_version: component.active_version.get(),
            versions: component.versions.into_iter().map(VersionJson::from).collect(),
        }
    }
}

impl From<VersionSummary> for VersionJson {
    fn from(version: VersionSummary) -> Self {
        VersionJson {
            version: version.version.get(),
            digest: version.digest,
            size: version.size,
            deployed_at: version.deployed_at,
            active: version.active,
            replay: version.replay.map(ReplaySummaryJson::from),
        }
    }
}

impl From<ReplaySummary> for ReplaySummaryJson {
    fn from(summary: ReplaySummary) -> Self {
        ReplaySummaryJson {
            streams: summary.streams,
            changed: summary.changed,
            example_stream: summary.example_stream.map(|stream| stream.to_string()),
        }
    }
}

impl From<Deployed> for DeployJson {
    fn from(deployed: Deployed) -> Self {
        DeployJson {
            name: deployed.name,
            kind: deployed.kind.as_str(),
            version: deployed.version.get(),
            digest: deployed.digest,
            active: deployed.active,
            dry_run: deployed.dry_run,
            replay: deployed.replay.into(),
            consumers: ConsumersJson::of(deployed.consumers),
        }
    }
}

impl ConsumersJson {
    fn of(report: ConsumersReport) -> Option<Self> {
        if report.changed_types.is_empty() {
            return None;
        }
        Some(ConsumersJson {
            changed_types: report.changed_types,
            sampled: report.sampled,
            consumers: report
                .consumers
                .into_iter()
                .map(|c| ConsumerJson { name: c.name, kind: c.kind, events: c.events, changed: c.changed })
                .collect(),
        })
    }
}

impl From<ReplayReport> for ReplayJson {
    fn from(report: ReplayReport) -> Self {
        ReplayJson {
            streams: report.streams,
            changed: report.changed,
            example: report.example.map(ReplayExampleJson::from),
        }
    }
}

impl From<ReplayExample> for ReplayExampleJson {
    fn from(example: ReplayExample) -> Self {
        ReplayExampleJson { stream: example.stream.to_string(), before: example.before, after: example.after }
    }
}

impl SwitchedJson {
    pub fn new(name: String, switched: Switched) -> Self {
        SwitchedJson {
            active_version: switched.version.get(),
            name,
            replay: switched.replay.map(ReplayJson::from),
        }
    }
}
