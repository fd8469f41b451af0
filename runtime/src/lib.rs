//! The WebAssembly runtime: one wasmtime [`Engine`], components compiled once per digest
//! (and cached on disk so a restart does not recompile), and a fresh instance for every
//! call, taken from wasmtime's pooling allocator.
//!
//! Components are meant to be pure functions of their inputs (DESIGN.md, "the one idea"),
//! but a guest can keep a global, a `static` or a heap between calls. A fresh instance per
//! call makes that harmless: nothing one call leaves behind reaches the next, so replay
//! folds exactly as the original run did and no aggregate sees another's leftovers. The
//! pooling allocator keeps this cheap: memory slots are reserved once and reset with
//! copy-on-write images instead of mapped anew (`measure_instance_cost` has the figure).
//! Every wasmtime type stays inside this crate; the host calls [`AggregateComponent`] and
//! [`ProjectionComponent`], and learns what calls cost through [`observe`].
//!
//! Guests get no capabilities: standard output and error go to the log (`guest_io`), the
//! environment is empty, and every other import is defined as a trap.
//! Each call runs with a fuel budget (a deterministic bound on time) and a memory cap.

mod aggregate;
mod digest;
mod guest_io;
pub mod observe;
mod projection;

pub use aggregate::{AggregateComponent, AggregateInfo, Executed};
pub use digest::ComponentDigest;
pub use projection::{
    BatchOutcome, DocumentReader, MAX_KEY_BYTES, ProjectionComponent, ProjectionInfo, Writes,
};

use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What went wrong inside a guest call. The caller's state is untouched either way.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    /// The guest trapped (panicked, hit `unreachable`, touched an import it may not use).
    #[error("the component trapped: {0}")]
    Trap(String),
    /// The guest used up its fuel: it ran too long.
    #[error("the component ran out of its time budget ({0} fuel)")]
    Timeout(u64),
    /// The guest answered more bytes (events, state or commands) than one call may return.
    #[error("the component returned {bytes} bytes from one call; at most {limit} are allowed")]
    OutputTooLarge { bytes: usize, limit: usize },
    /// Every instance slot of the pool is in use by another call; try again shortly.
    #[error("every one of the {0} guest instance slots is busy; try again")]
    Busy(u32),
    /// A stored event is in a schema newer than this version knows: a newer version wrote
    /// it (and was rolled back), so this one cannot read it.
    #[error(
        "{event_type:?} is stored at schema {stored}, newer than this version's {current}: \
         only a version that reads schema {stored} can take this stream"
    )]
    SchemaUnknown { event_type: String, stored: u32, current: u32 },
}

impl GuestError {
    /// Worth trying again as it is: the guest did nothing wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, GuestError::Busy(_))
    }

    /// `trap`, `timeout`, `output_too_large`, `busy` or `schema_unknown`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestError::Trap(_) => "trap",
            GuestError::Timeout(_) => "timeout",
            GuestError::OutputTooLarge { .. } => "output_too_large",
            GuestError::Busy(_) => "busy",
            GuestError::SchemaUnknown { .. } => "schema_unknown",
        }
    }
}

/// A failed instantiation: a full pool is worth a retry, anything else is the component's.
fn instantiation_failure(error: &wasmtime::Error, limits: &Limits) -> GuestError {
    if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        GuestError::Busy(limits.max_instances)
    } else {
        GuestError::Trap(format!("{error:#}"))
    }
}

/// What the guest told the host before it failed (its panic message, bounded).
#[derive(Default)]
struct Diagnostics {
    panic: Option<String>,
}

/// The most of a guest's panic message the host keeps.
const MAX_PANIC_MESSAGE: usize = 4096;

impl Diagnostics {
    fn panicked(&mut self, component: &str, mut message: String) {
        if message.len() > MAX_PANIC_MESSAGE {
            let mut end = MAX_PANIC_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        tracing::warn!(component, "the guest panicked: {message}");
        self.panic = Some(message);
    }

    /// A failed call as the caller sees it: out of fuel, or a trap told with the guest's
    /// own panic message when it sent one, else the trap's cause (never a backtrace).
    fn failure(&mut self, error: wasmtime::Error, fuel: u64) -> GuestError {
        let panic = self.panic.take();
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => GuestError::Timeout(fuel),
            trap => GuestError::Trap(match panic {
                Some(message) => message,
                None => trap.map_or_else(|| error.root_cause().to_string(), ToString::to_string),
            }),
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("create the wasmtime engine: {0}")]
    Engine(String),
    #[error("create the compiled-component cache {}: {error}", .dir.display())]
    CacheDir { dir: PathBuf, error: std::io::Error },
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component does not implement the cairn:runtime/aggregate or projection world: {0}")]
    WrongWorld(String),
    #[error("the component trapped while describing itself: {0}")]
    Describe(GuestError),
}

/// How much of an instance slot's memory is reset in place (memset) rather than returned to
/// the kernel (madvise, then a page fault per page the next call touches). A call touches
/// its stack, the data and the first heap pages; for a guest built with a small stack (the
/// SDK's guide and our build use 128 KiB) that is all inside this much, and the reset costs
/// less than the faults. Measured with `measure_instance_cost`: 96 µs per call at 64 KiB,
/// 70 µs at 256 KiB. Resetting only the pages a call wrote (`pagemap_scan`, Linux 6.7+) was
/// measured too and left off: criterion's command on a fresh instance took 22.7–22.9 µs with
/// it and 21.5–23.1 µs without, back to back (the ioctl costs what the memset saves).
const MEMORY_KEPT_RESIDENT: usize = 256 << 10;
const TABLE_KEPT_RESIDENT: usize = 64 << 10;

/// Bounds on every guest call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel for one call (about one unit per WebAssembly instruction).
    pub fuel_per_call: u64,
    /// Extra fuel per event when folding many events in one call.
    pub fuel_per_event: u64,
    /// The most linear memory one instance may grow to.
    pub max_memory_bytes: usize,
    /// Guest instances that may exist at once across all components (each call has its own).
    pub max_instances: u32,
    /// The largest document a projection may write.
    pub max_document_bytes: usize,
    /// The most bytes one call may return: a command's events, a folded state, a reaction's
    /// commands.
    pub max_output_bytes: usize,
}

impl Limits {
    /// What one instance may hold besides its memory's size: a component has a few core
    /// instances, memories and tables; these bounds leave room and stop a hostile one.
    pub(crate) fn store_limits(&self) -> wasmtime::StoreLimits {
        wasmtime::StoreLimitsBuilder::new()
            .memory_size(self.max_memory_bytes)
            .memories(4)
            .tables(16)
            .table_elements(100_000)
            .instances(32)
            .build()
    }

    /// The pooling allocator's slots. A component is a few core instances (the guest's
    /// module and the shims that route its imports), each with at most one memory and a few
    /// tables; the per-store limits above stop a component that wants more.
    fn pool(&self) -> PoolingAllocationConfig {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(self.max_instances)
            .total_core_instances(self.max_instances * 4)
            .total_memories(self.max_instances)
            .total_tables(self.max_instances * 4)
            .max_memory_size(self.max_memory_bytes)
            .table_elements(100_000)
            .linear_memory_keep_resident(MEMORY_KEPT_RESIDENT)
            .table_keep_resident(TABLE_KEPT_RESIDENT);
        pool
    }

    /// Refuse a call's output beyond `max_output_bytes`.
    /// The events a call answered, refused when one's type holds a control character: no
    /// store could show it, and PostgreSQL's text cannot hold a NUL.
    pub(crate) fn check_event_types<'a>(
        &self,
        types: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), GuestError> {
        for event_type in types {
            if event_type.is_empty() || event_type.chars().any(char::is_control) {
                return Err(GuestError::Trap(format!(
                    "the component answered an event type {event_type:?}: an event type must be \
                     non-empty and hold no control characters"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn bound_output(&self, bytes: usize) -> Result<(), GuestError> {
        if bytes > self.max_output_bytes {
            return Err(GuestError::OutputTooLarge { bytes, limit: self.max_output_bytes });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 200_000_000,
            fuel_per_event: 2_000_000,
            max_memory_bytes: 64 << 20,
            max_instances: 256,
            max_document_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

/// The engine plus where compiled code is cached.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache: Option<CompileCache>,
    limits: Limits,
}

/// Where compiled code is kept between runs.
#[derive(Clone)]
struct CompileCache {
    dir: PathBuf,
    /// The engine's compatibility hash: part of every file name.
    engine: u64,
    /// Other hosts use the directory too: nothing is removed from it.
    shared: bool,
}

impl Runtime {
    /// A runtime that caches compiled components in `cache_dir` (none: compile every time).
    pub fn new(cache_dir: Option<&Path>, limits: Limits) -> Result<Self, StartError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        // For profiling guests with `perf`: /tmp/perf-<pid>.map names their compiled code.
        if std::env::var_os("CAIRN_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(limits.pool()));
        let engine = Engine::new(&config).map_err(|e| StartError::Engine(e.to_string()))?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::CacheDir { dir: dir.to_owned(), error: e })?;
        }
        // Code compiled by another wasmtime or engine configuration gets a name of its own,
        // so hosts that differ can share a directory without recompiling each other's away.
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut engine_hash);
        let cache = cache_dir.map(|dir| CompileCache {
            dir: dir.to_path_buf(),
            engine: std::hash::Hasher::finish(&engine_hash),
            shared: false,
        });
        Ok(Runtime { engine, cache, limits })
    }

    /// The cache is shared with other hosts: a deleted version's compiled code stays (another
    /// host may run the same component), for the operator to clear.
    pub fn share_cache(mut self) -> Self {
        if let Some(cache) = &mut self.cache {
            cache.shared = true;
        }
        self
    }

    /// Where the compiled code of `digest` is cached, if there is a cache.
    fn cached_path(&self, digest: &ComponentDigest) -> Option<PathBuf> {
        let cache = self.cache.as_ref()?;
        Some(cache.dir.join(format!("{}-{:016x}.cwasm", digest.hex(), cache.engine)))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Guest instances alive now (calls in progress), across every component.
    pub fn instances_in_use(&self) -> u64 {
        self.engine.pooling_allocator_metrics().map_or(0, |m| m.component_instances())
    }

    /// Remove the compiled code cached for `digest` (its component version was deleted).
    pub fn forget_compiled(&self, digest: &ComponentDigest) {
        if self.cache.as_ref().is_some_and(|cache| cache.shared) {
            return;
        }
        if let Some(path) = self.cached_path(digest)
            && let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "could not remove cached compiled code: {error}");
        }
    }

    /// Keep `loaded`'s compiled code in the cache, so a restart deserializes it instead of
    /// compiling: for versions that are activated, never for ones a deploy only checked (a
    /// refused or dry-run upload must not leave megabytes behind).
    /// The file is written off the async threads when there are any.
    pub fn keep_compiled(&self, loaded: &Loaded) {
        let (digest, component) = match loaded {
            Loaded::Aggregate(aggregate) => (aggregate.digest(), aggregate.compiled().clone()),
            Loaded::Projection(projection) => (projection.digest(), projection.compiled().clone()),
        };
        let Some(path) = self.cached_path(digest) else { return };
        if path.exists() {
            return;
        }
        let write = move || match component.serialize() {
            Ok(compiled) => {
                let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
                // Synced before the rename, so the name never stands for a file a power loss
                // emptied; another host reads the whole file or none.
                let written = std::fs::File::create(&tmp).and_then(|mut file| {
                    std::io::Write::write_all(&mut file, &compiled)?;
                    file.sync_all()
                });
                if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(path = %path.display(), "could not cache compiled component: {e}");
                }
            }
            Err(e) => tracing::warn!("could not serialize compiled component: {e}"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// Compile `bytes`, or load the compiled code cached for their digest.
    fn compile(&self, digest: &ComponentDigest, bytes: &[u8]) -> Result<Component, LoadError> {
        let cached = self.cached_path(digest);
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of cairn into the compile
            // cache, a directory only cairn writes (the data directory's, or one the operator
            // gave for several hosts); wasmtime checks the engine configuration and version
            // in its header and refuses a mismatch, after which we recompile.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cached compiled component unusable, recompiling: {e}")
                }
            }
        }
        Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))
    }

    /// Compile and link an aggregate component and ask it to describe itself.
    pub fn load_aggregate(&self, bytes: &[u8]) -> Result<AggregateComponent, LoadError> {
        match self.load(bytes)? {
            Loaded::Aggregate(component) => Ok(component),
            Loaded::Projection(_) => {
                Err(LoadError::WrongWorld("this is a projection, not an aggregate".into()))
            }
        }
    }

    /// Compile and link a projection component and ask it to describe itself.
    pub fn load_projection(&self, bytes: &[u8]) -> Result<ProjectionComponent, LoadError> {
        match self.load(bytes)? {
            Loaded::Projection(component) => Ok(component),
            Loaded::Aggregate(_) => {
                Err(LoadError::WrongWorld("this is an aggregate, not a projection".into()))
            }
        }
    }

    /// Compile a component, tell its world from its exports, link it and ask it to
    /// describe itself.
    pub fn load(&self, bytes: &[u8]) -> Result<Loaded, LoadError> {
        let digest = ComponentDigest::of(bytes);
        let component = self.compile(&digest, bytes)?;
        let exports: Vec<String> =
            component.component_type().exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let exports_fn = |name: &str| exports.iter().any(|e| e == name);
        if exports_fn("process-command") {
            AggregateComponent::link(self.engine.clone(), component, digest, self.limits)
                .map(Loaded::Aggregate)
        } else if exports_fn("handle") {
            ProjectionComponent::link(self.engine.clone(), component, digest, self.limits)
                .map(Loaded::Projection)
        } else {
            Err(LoadError::WrongWorld(format!(
                "it exports neither process-command nor handle (its exports: {})",
                exports.join(", ")
            )))
        }
    }
}

/// Which world a component implements. Stored and shown as `aggregate` or `projection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ComponentKind {
    Aggregate,
    Projection,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Aggregate => "aggregate",
            ComponentKind::Projection => "projection",
        }
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ComponentKind> for String {
    fn from(kind: ComponentKind) -> String {
        kind.as_str().to_owned()
    }
}

impl TryFrom<String> for ComponentKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "aggregate" => Ok(ComponentKind::Aggregate),
            "projection" => Ok(ComponentKind::Projection),
            other => Err(format!("no component kind is called {other:?}")),
        }
    }
}

/// A loaded component of either world.
pub enum Loaded {
    Aggregate(AggregateComponent),
    Projection(ProjectionComponent),
}

impl Loaded {
    pub fn kind(&self) -> ComponentKind {
        match self {
            Loaded::Aggregate(_) => ComponentKind::Aggregate,
            Loaded::Projection(_) => ComponentKind::Projection,
        }
    }

    /// The name the component gives itself.
    pub fn declared_name(&self) -> &str {
        match self {
            Loaded::Aggregate(component) => &component.info().type_name,
            Loaded::Projection(component) => &component.info().name,
        }
    }
}
