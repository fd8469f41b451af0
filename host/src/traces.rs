//! Traces across sagas: the W3C trace context a command arrives with (`traceparent`) is
//! stored with each event it causes and carried by the commands reactions send for those
//! events, so one money transfer is one trace across its aggregates, the router and the
//! projections. With `--otlp-endpoint`, the host's spans (`command`, `routed_command`,
//! `react`, `project`) are exported over OTLP/HTTP from a thread of their own, through a
//! bounded queue that drops (and counts) what it cannot take: export never makes a command
//! wait.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C trace context (`traceparent`): the trace, the span the next one hangs under, and
/// whether the trace is sampled. Stored with events as its header form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// A `traceparent` header (W3C Trace Context, version 00 and the forward-compatible
    /// rules for later ones); `None` for anything else, which then starts a trace of its own.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let header = header.trim();
        let mut parts = header.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !(lower_hex(version, 2) && lower_hex(trace, 32) && lower_hex(span, 16) && lower_hex(flags, 2)) {
            return None;
        }
        // Version ff is invalid; 00 has exactly four parts; a later one may add more after them.
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut parent = TraceParent { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        hex::decode_to_slice(trace, &mut parent.trace_id).ok()?;
        hex::decode_to_slice(span, &mut parent.span_id).ok()?;
        parent.sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
        let valid = parent.trace_id != [0; 16] && parent.span_id != [0; 8];
        valid.then_some(parent)
    }

    /// The trace id as 32 lowercase hex digits, as EVENT shows it and backends search it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    fn span_context(&self) -> SpanContext {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::NONE,
        )
    }

    fn of(context: &SpanContext) -> Option<TraceParent> {
        context.is_valid().then(|| TraceParent {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            sampled: context.is_sampled(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = u8::from(self.sampled);
        write!(f, "00-{}-{}-{flags:02x}", hex::encode(self.trace_id), hex::encode(self.span_id))
    }
}

impl Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TraceParent::parse(&text).ok_or_else(|| serde::de::Error::custom("not a traceparent"))
    }
}

/// An optional stored or forwarded trace context that reads as none when it is not one,
/// rather than making the record that holds it unreadable.
pub fn lenient<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<TraceParent>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.as_deref().and_then(TraceParent::parse))
}

/// Hang `span` under `parent` (a client's `traceparent`, or the trace an event was stored
/// with), and answer the context that what `span` causes carries on: the span itself when
/// spans are exported, else `parent` unchanged, so a trace id still reaches every event.
pub fn continue_trace(span: &tracing::Span, parent: Option<TraceParent>) -> Option<TraceParent> {
    if let Some(parent) = parent {
        let context = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        // Refused only for a span no layer records (nothing is exported) or one already
        // started, which a span made just before is not.
        let _ = span.set_parent(context);
    }
    TraceParent::of(span.context().span().span_context()).or(parent)
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: spans only a trace needs are made only then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The spans' queue to the export thread: beyond it spans are dropped, never waited for.
const QUEUE_SPANS: usize = 8192;
/// Spans sent in one export request.
const BATCH_SPANS: usize = 512;
/// How long a span waits, at most, for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The longest one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracing layer that exports the host's spans to `endpoint` (OTLP/HTTP, protobuf, e.g.
/// `http://127.0.0.1:4318/v1/traces`), and the provider to shut down at exit.
pub fn otlp_layer<S>(endpoint: &str) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, SdkTracerProvider)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use tracing_subscriber::Layer;
    let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    // The provider hands its resource to processors, not to exporters a processor owns.
    let resource = Resource::builder().with_service_name("cairn").build();
    exporter.set_resource(&resource);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor::start(exporter)?)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("cairn");
    // Only the host's own spans, whatever the log level says; the hint keeps the
    // subscriber's level at INFO, so `log` records below it are not offered to every layer.
    let spans = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("cairn") && SPANS.contains(&meta.name())
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans);
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, provider))
}

/// The spans a trace is made of.
const SPANS: [&str; 4] = ["command", "routed_command", "react", "project"];

/// Spans go into a bounded queue; a thread of its own batches them and exports each batch
/// (on a small runtime of its own, so no request of the host's waits for the collector).
#[derive(Debug)]
struct QueueProcessor {
    queue: RwLock<Option<SyncSender<SpanData>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueProcessor {
    fn start<E: SpanExporter + 'static>(exporter: E) -> std::io::Result<QueueProcessor> {
        let (queue, spans) = sync_channel(QUEUE_SPANS);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let worker = std::thread::Builder::new()
            .name("cairn-otlp-export".into())
            .spawn(move || export_batches(&runtime, exporter, spans))?;
        Ok(QueueProcessor { queue: RwLock::new(Some(queue)), worker: Mutex::new(Some(worker)) })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let sent = match self.queue.read().expect("trace queue lock").as_ref() {
            Some(queue) => queue.try_send(span),
            None => return,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
            crate::telemetry::span_dropped();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Closing the queue ends the worker once it has sent what it holds.
        drop(self.queue.write().expect("trace queue lock").take());
        if let Some(worker) = self.worker.lock().expect("trace worker lock").take() {
            let deadline = Instant::now() + timeout;
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

fn export_batches<E: SpanExporter>(
    runtime: &tokio::runtime::Runtime,
    exporter: E,
    spans: Receiver<SpanData>,
) {
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    let mut open = true;
    while open {
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS {
            match spans.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let count = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SPANS));
        let exported =
            runtime.block_on(async { tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(sent)).await });
        match exported {
            Ok(Ok(())) => crate::telemetry::spans_exported(count),
            Ok(Err(error)) => crate::telemetry::span_export_failed(count, &error.to_string()),
            Err(_) => crate::telemetry::span_export_failed(count, "timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_it_was_written() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(header).unwrap();
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), header);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more after the flags.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn a_malformed_traceparent_is_none() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0G",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(TraceParent::parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn without_export_the_parent_is_carried_on() {
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let span = tracing::info_span!("command");
        assert_eq!(continue_trace(&span, parent), parent);
        assert_eq!(continue_trace(&span, None), None);
    }
}
