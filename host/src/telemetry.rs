//! Prometheus metrics, served at `GET /metrics` (API.md, Operations).
//!
//! Counters and histograms are recorded where things happen, with the `metrics` facade;
//! gauges that describe a state (live actors, the head, lags, dead letters) are read when
//! the host is scraped. Names follow Prometheus conventions: a `cairn_` prefix, base units
//! (seconds), `_total` for counters.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Buckets for latencies in seconds: 100 µs to 10 s.
const SECONDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Buckets for how many appends one group commit holds.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The process-wide recorder, installed at the first call; `None` if another recorder was
/// installed first (then `/metrics` answers 503).
pub fn install() -> Option<PrometheusHandle> {
    // One recorder per process: a second host in it (an in-process test) shares it.
    static INSTALLED: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Option<PrometheusHandle> {
    cairn_runtime::observe::install(&GuestCalls);
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("cairn_commit_batch_appends".to_owned()), BATCH)
        });
    match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!("metrics are off: {error}");
            None
        }
    }
}

/// A command answered over HTTP: `outcome` is `accepted`, `rejected` (the aggregate said no)
/// or `failed` (anything else: conflict, overload, trap, storage).
pub fn command(type_name: &str, outcome: &'static str, took: Duration) {
    metrics::counter!("cairn_commands_total", "type" => type_name.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("cairn_command_duration_seconds", "type" => type_name.to_owned())
        .record(took.as_secs_f64());
}

/// A span the trace export queue had no room for (`--otlp-endpoint`): dropped, not waited for.
pub fn span_dropped() {
    metrics::counter!("cairn_trace_spans_dropped_total").increment(1);
}

/// Spans the collector took.
pub fn spans_exported(count: u64) {
    metrics::counter!("cairn_trace_spans_exported_total").increment(count);
}

/// Spans a failed export request carried (the collector down, slow or refusing): lost.
pub fn span_export_failed(count: u64, error: &str) {
    metrics::counter!("cairn_trace_spans_failed_total").increment(count);
    // At most once a minute: a collector that is down fails every second.
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().expect("export log lock");
    if last.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!("exporting {count} spans failed: {error}");
    }
}

/// One group commit: its appends, events and how long the transaction and fsync took.
pub fn group_commit(appends: usize, events: u64, took: Duration) {
    metrics::counter!("cairn_events_appended_total").increment(events);
    metrics::histogram!("cairn_commit_batch_appends").record(appends as f64);
    metrics::histogram!("cairn_commit_duration_seconds").record(took.as_secs_f64());
}

/// One fsync of a store file (`events.redb`, `views.redb`): the disk's share of a commit,
/// which `cairn_commit_duration_seconds` holds together with the transaction.
pub fn fsync(file: &str, took: Duration) {
    metrics::histogram!("cairn_fsync_duration_seconds", "file" => file.to_owned()).record(took.as_secs_f64());
}

/// A group commit that failed (nothing of it is stored).
pub fn commit_failed() {
    metrics::counter!("cairn_commit_failures_total").increment(1);
}

/// Actors asked to passivate because the live-actor cap was reached.
pub fn actors_asked_to_passivate(count: usize) {
    metrics::counter!("cairn_actor_evictions_total").increment(count as u64);
}

/// Idempotency keys forgotten by the retention sweep.
pub fn idempotency_keys_forgotten(count: usize) {
    metrics::counter!("cairn_idempotency_keys_forgotten_total").increment(count as u64);
}

/// The runtime's guest calls, as metrics.
struct GuestCalls;

impl cairn_runtime::observe::CallObserver for GuestCalls {
    fn call(&self, component: &str, took: Duration) {
        metrics::histogram!("cairn_guest_call_duration_seconds", "component" => component.to_owned())
            .record(took.as_secs_f64());
    }

    /// A guest call that trapped (`kind` = `trap`) or ran out of fuel (`timeout`).
    fn failure(&self, component: &str, kind: &'static str) {
        metrics::counter!("cairn_guest_failures_total", "component" => component.to_owned(), "kind" => kind)
            .increment(1);
    }
}

/// An HTTP request answered: by route (the router's pattern, not the path) and status.
pub fn http_request(route: &str, status: u16, took: Duration) {
    metrics::counter!("cairn_http_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("cairn_http_request_duration_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
}

/// A gauge of the host's state, set when scraped.
pub fn gauge(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// A gauge with one label, set when scraped.
pub fn labelled_gauge(name: &'static str, label: &'static str, value_of_label: &str, value: f64) {
    metrics::gauge!(name, label => value_of_label.to_owned()).set(value);
}

/// Partition leases this host took over (after a host died or left, or at its start).
pub fn leases_taken(count: usize) {
    metrics::counter!("cairn_cluster_leases_taken_total").increment(count as u64);
}

/// A request forwarded to the host that owns its stream (`kind`: `command`, `state`,
/// `delivery`), with how it went (`outcome`: `answered`, `unreachable`) and how long it took.
pub fn forwarded(kind: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("cairn_cluster_forwarded_total", "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!("cairn_cluster_forward_duration_seconds", "kind" => kind).record(took.as_secs_f64());
}
