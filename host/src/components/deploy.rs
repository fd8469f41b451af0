//! Deploying a version: validate it, replay recent history through it, then store it and
//! make it active — or refuse it and leave the running version as it was.
//!
//! The checks, in order: a kebab-case name; bytes that compile as a component of the
//! `aggregate` world; `describe()` answering within its fuel and naming the same type; then
//! the replay check: the most recently written streams of that type (a bounded sample) are
//! rebuilt with the new version, off the async threads. A trap or a decode failure refuses
//! the deploy naming the stream and the event; a state that differs from the old version's
//! is counted and reported (a changed rule is legitimate, and whoever deploys should see how
//! much it changes). A dry run does every check and changes nothing.

use super::changes::{ChangeKind, NotFollowed};
use super::consumers::{ConsumersReport, consumer_check, consumers_of};
use super::records::{ComponentRecord, ReplaySummary, VersionRecord};
use super::{ActiveAggregate, ComponentRegistry};
use crate::replay::{ReplayError, replay, wait_for};
use crate::runtime::{AggregateComponent, ComponentDigest, ComponentKind, LoadError, Loaded};
use crate::store::{ComponentVersion, CursorStart, EventStore, StoreError, StreamId, Version};
use serde_json::Value;

/// How a deploy is done.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// Run every check, store and activate nothing.
    pub dry_run: bool,
    /// A component that subscribes to events and has no subscriber yet reacts to the whole
    /// log, instead of only to events committed after its deploy.
    pub react_from_beginning: bool,
    /// How many of the most recently written streams of the type the replay check rebuilds.
    pub replay_sample: usize,
    /// The longest compiling the component may take (uploads are bounded, the bundled
    /// components are trusted).
    pub compile_timeout: Option<std::time::Duration>,
    /// The consumer check lets through a reaction that sends other commands for an event
    /// in the new version's schema than in the running one's (see `consumers`).
    pub allow_changed_reactions: bool,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            dry_run: false,
            react_from_beginning: false,
            replay_sample: 100,
            compile_timeout: None,
            allow_changed_reactions: false,
        }
    }
}

/// What a deploy answers (API.md: `{"name", "kind", "version", "digest"}`, plus the replay
/// check's report and whether the version is now active).
#[derive(Debug, Clone)]
pub struct Deployed {
    pub name: String,
    pub kind: ComponentKind,
    /// The version these bytes are (or would be, on a dry run).
    pub version: ComponentVersion,
    pub digest: String,
    pub active: bool,
    pub dry_run: bool,
    pub replay: ReplayReport,
    /// What the consumer check found (an aggregate that changes an event's schema).
    pub consumers: ConsumersReport,
}

/// What the replay check found.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Streams rebuilt with the new version.
    pub streams: u64,
    /// Of those, the ones whose state differs from the running version's.
    pub changed: u64,
    pub example: Option<ReplayExample>,
}

/// One stream whose state the new version changes, with both states.
#[derive(Debug, Clone)]
pub struct ReplayExample {
    pub stream: StreamId,
    pub before: Value,
    pub after: Value,
}

/// Why a deploy was refused; the running version stays active.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("component names are kebab-case ([a-z0-9-], 1 to 64 characters): {0:?}")]
    InvalidName(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(std::time::Duration),
    #[error("the component describes itself as {declared:?}, not {name:?}")]
    NameMismatch { name: String, declared: String },
    #[error("{name} is deployed as {existing}; this component is {new}")]
    KindMismatch { name: String, existing: ComponentKind, new: ComponentKind },
    #[error("replaying {stream} with the new version failed at {detail}")]
    ReplayFailed { stream: StreamId, detail: String },
    /// `detail` names the event and says why.
    #[error("{consumer} cannot read {detail}")]
    ConsumerBreaks { consumer: String, detail: String },
    #[error(transparent)]
    NotFollowed(#[from] NotFollowed),
    /// A task of the deploy ended before it answered (a host defect).
    #[error("{0}")]
    Interrupted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest component name.
pub const MAX_NAME_LEN: usize = 64;

/// [`valid_name`] as a regular expression, for the OpenAPI document.
pub const COMPONENT_NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ComponentRegistry {
    /// Validate, replay-check, store and activate a new version of the aggregate component
    /// `name`. Deploying the bytes of a stored version gives that version back (active
    /// again if it was not); deploying the active version's bytes changes nothing.
    ///
    /// # Errors
    /// The name is not kebab-case, the bytes are not an aggregate component, it describes
    /// itself under another name, replaying recent streams through it fails, or the store
    /// failed. The running version stays.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        self.catch_up().await?;
        let deployed = self.check_and_store(name, bytes, options).await?;
        if deployed.active && !deployed.dry_run {
            self.changes.publish(name, ChangeKind::Deployed).await?;
        }
        Ok(deployed)
    }

    async fn check_and_store(
        &self,
        name: &str,
        bytes: Vec<u8>,
        options: DeployOptions,
    ) -> Result<Deployed, DeployError> {
        if !valid_name(name) {
            return Err(DeployError::InvalidName(name.to_owned()));
        }
        let _changing = self.changing.lock().await;
        let digest = ComponentDigest::of(&bytes);
        let existing = self.records.read().expect("registry lock").get(name).cloned();
        if let Some(record) = &existing
            && let Some(active) = record.version(record.active)
            && active.digest == digest.as_bytes()
        {
            let report = ReplayReport::default();
            let consumers = ConsumersReport::default();
            return Ok(answer(
                name,
                record.kind,
                active.version,
                &digest,
                true,
                options.dry_run,
                report,
                consumers,
            ));
        }
        let runtime = self.runtime.clone();
        let store = self.store.clone();
        let running = self.active(name);
        let type_name = name.to_owned();
        let existing_kind = existing.as_ref().map(|r| r.kind);
        // Compiling is CPU work with a wall-clock bound; a compile that overruns is refused
        // (it finishes in the background, and only warms the compile cache).
        let compile_timeout = options.compile_timeout.unwrap_or(std::time::Duration::MAX);
        let compiling = tokio::task::spawn_blocking(move || runtime.load(&bytes).map(|c| (c, bytes)));
        let (component, bytes) = tokio::time::timeout(compile_timeout, compiling)
            .await
            .map_err(|_| DeployError::CompileTimeout(compile_timeout))?
            .map_err(|e| DeployError::Interrupted(format!("the deploy task failed: {e}")))??;
        let declared = component.declared_name();
        if declared != type_name {
            return Err(DeployError::NameMismatch { name: type_name, declared: declared.to_owned() });
        }
        if let Some(existing) = existing_kind
            && existing != component.kind()
        {
            return Err(DeployError::KindMismatch { name: type_name, existing, new: component.kind() });
        }
        // Replaying is CPU work too: keep it off the async threads. A projection's new version
        // is checked by rebuilding its view beside the live one instead: the live view stays
        // until the new one has caught up.
        let consumers = consumers_of(self, name);
        let (component, report, consumers) = tokio::task::spawn_blocking(move || {
            let (report, consumers) = match &component {
                Loaded::Aggregate(new) => {
                    let report =
                        replay_check(running.as_deref(), new, &store, &type_name, options.replay_sample)?;
                    let consumers = consumer_check(
                        &consumers,
                        running.as_deref(),
                        new,
                        &store,
                        options.replay_sample,
                        options.allow_changed_reactions,
                    )?;
                    (report, consumers)
                }
                Loaded::Projection(_) => (ReplayReport::default(), ConsumersReport::default()),
            };
            Ok::<_, DeployError>((component, report, consumers))
        })
        .await
        .map_err(|e| DeployError::Interrupted(format!("the deploy task failed: {e}")))??;

        let kind = component.kind();
        let stored = existing.as_ref().and_then(|r| r.with_digest(&digest)).map(|v| v.version);
        let mut record = existing.unwrap_or(ComponentRecord {
            kind,
            versions: Vec::new(),
            active: ComponentVersion::ZERO,
            history: Vec::new(),
            last_version: ComponentVersion::ZERO,
        });
        let version = stored.unwrap_or_else(|| record.next_version());
        if options.dry_run {
            return Ok(answer(name, kind, version, &digest, false, true, report, consumers));
        }
        let blob = match stored {
            Some(_) => None,
            None => {
                record.versions.push(VersionRecord {
                    version,
                    digest: digest.as_bytes().to_vec(),
                    deployed_at_micros: crate::time::now_micros(),
                    size: bytes.len() as u64,
                    replay: Some(ReplaySummary {
                        streams: report.streams,
                        changed: report.changed,
                        example_stream: report.example.as_ref().map(|e| e.stream.clone()),
                    }),
                });
                Some((digest.as_bytes().to_vec(), bytes))
            }
        };
        record.activate(version);
        // A component that starts subscribing starts at the head of the log unless asked
        // for history; a running subscriber keeps its cursor (the writer sets only a new one).
        let subscribes = matches!(&component, Loaded::Aggregate(a) if !a.info().subscriptions.is_empty());
        let cursor = subscribes.then(|| {
            let start = if options.react_from_beginning { CursorStart::Beginning } else { CursorStart::Head };
            (crate::store::reaction_cursor(name), start)
        });
        self.writer.put_component(name, record.encode(), blob, cursor).await?;
        self.records.write().expect("registry lock").insert(name.to_owned(), record);
        self.make_active(name, version, component);
        tracing::info!(component = name, %kind, version = version.get(), %digest, streams = report.streams, changed = report.changed, "deployed");
        Ok(answer(name, kind, version, &digest, true, false, report, consumers))
    }
}

#[allow(clippy::too_many_arguments)]
fn answer(
    name: &str,
    kind: ComponentKind,
    version: ComponentVersion,
    digest: &ComponentDigest,
    active: bool,
    dry_run: bool,
    replay: ReplayReport,
    consumers: ConsumersReport,
) -> Deployed {
    Deployed {
        name: name.to_owned(),
        kind,
        version,
        digest: digest.to_string(),
        active,
        dry_run,
        replay,
        consumers,
    }
}

/// Rebuild the most recently written streams of `type_name` with `new`, and compare each
/// with the state the running version builds.
pub(super) fn replay_check(
    running: Option<&ActiveAggregate>,
    new: &AggregateComponent,
    store: &EventStore,
    type_name: &str,
    sample: usize,
) -> Result<ReplayReport, DeployError> {
    let streams = wait_for(store.recent_streams(type_name, sample))?;
    let mut report = ReplayReport { streams: streams.len() as u64, ..ReplayReport::default() };
    for stream in streams {
        let (after, _) =
            replay(new, store, &stream, None, Version::ZERO, Version::MAX).map_err(|error| match error {
                ReplayError::Store(error) => DeployError::Store(error),
                ReplayError::Cancelled => DeployError::Interrupted(error.to_string()),
                // A busy pool is nobody's fault: the deploy is refused as overloaded, not blamed on an event.
                ReplayError::Upcast(upcast) if upcast.is_transient() => {
                    DeployError::Interrupted(upcast.to_string())
                }
                ReplayError::Guest { .. } | ReplayError::Upcast(_) => {
                    DeployError::ReplayFailed { stream: stream.clone(), detail: error.to_string() }
                }
            })?;
        let Some(before) = running.and_then(|running| state_with(running, store, &stream)) else { continue };
        if before != after {
            report.changed += 1;
            report.example.get_or_insert_with(|| ReplayExample {
                stream: stream.clone(),
                before: before.as_deref().map(crate::msgpack::to_json).unwrap_or(Value::Null),
                after: after.as_deref().map(crate::msgpack::to_json).unwrap_or(Value::Null),
            });
        }
    }
    Ok(report)
}

/// The state `running` builds for `stream` (from its own snapshot when it has one);
/// `None` when it cannot (then there is nothing to compare with).
fn state_with(running: &ActiveAggregate, store: &EventStore, stream: &StreamId) -> Option<Option<Vec<u8>>> {
    let component = &running.component;
    let snapshot = wait_for(store.load_snapshot_for(stream, component.digest().as_bytes())).ok()?;
    let (state, version) = snapshot.map_or((None, Version::ZERO), |s| (Some(s.state), s.version));
    replay(component, store, stream, state, version, Version::MAX).ok().map(|(state, _)| state)
}
