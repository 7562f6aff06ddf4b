//! Telemetry: OpenTelemetry traces of tool calls, exported over OTLP/HTTP.
//! This file owns [`Telemetry`] (the exporter's life: start, the `tracing`
//! layer, flush at shutdown), whether spans are made at all, and the W3C
//! trace context in and out of a span.
//!
//! - `config`: [`TelemetryConfig`], the `[telemetry]` section and the
//!   `OTEL_*` variables over it;
//! - `otlp`: the exporter, OTLP/HTTP with protobuf.
//!
//! Dispatch makes its spans (`dispatch/spans.rs`) only while an exporter
//! runs: otherwise a call pays one atomic load, and no span, attribute or
//! id is built. The operator's sampler is applied here, before a trace's
//! first span in this process is built ([`start_edge_span`]): a call the
//! sampler drops builds no span and no id at all. Spans are `tracing` spans of the target [`TARGET`]; the
//! layer of [`Telemetry::layer`] turns those, and only those, into
//! OpenTelemetry spans, handed to a bounded batch queue that a background
//! thread exports: a slow or dead collector costs dropped spans, never a
//! blocked or failed call.

mod config;
mod otlp;

pub use config::{TelemetryConfig, DEFAULT_SERVICE_NAME, DEFAULT_TIMEOUT_MS, PROTOCOL};

use crate::error::{Error, Result};
use crate::transport::TraceContext;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of Switchboard's spans: the exporter's layer takes
/// these only, and a log layer should leave them out (`switchboard::otel=off`).
pub const TARGET: &str = crate::policy::SPAN_TARGET;

/// Whether spans are made: set while a [`Telemetry`] runs.
static SPANS: AtomicBool = AtomicBool::new(false);

/// Whether tool arguments and results go on spans (`capture_tool_content`).
static CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether an exporter runs, so dispatch should make spans.
pub(crate) fn spans_on() -> bool {
    SPANS.load(Ordering::Relaxed)
}

/// Whether a trace continued from a caller follows the caller's decision
/// (the `parentbased_*` samplers).
static PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// A trace is kept when the low 64 bits of its id, shifted right by one,
/// are below this: `u64::MAX` keeps every trace, 0 none, and a ratio `r`
/// keeps `r × 2⁶³` of the 2⁶³ values, as OpenTelemetry's
/// `TraceIdRatioBased` sampler decides.
static KEEP_BELOW: AtomicU64 = AtomicU64::new(u64::MAX);

thread_local! {
    /// The trace id the next root span built on this thread takes: the one
    /// the sampler decided on (see [`EdgeIds`]).
    static DECIDED_TRACE_ID: Cell<Option<u128>> = const { Cell::new(None) };
}

/// Whether the operator opted in to tool arguments and results on spans.
pub(crate) fn content_on() -> bool {
    CONTENT.load(Ordering::Relaxed)
}

/// A running trace exporter. Spans reach it through [`layer`](Self::layer),
/// added to the process's `tracing` subscriber; [`shutdown`](Self::shutdown)
/// exports what is queued.
///
/// The binary starts one for `serve` and `mcp` when an endpoint is
/// configured. A library user opts in the same way:
///
/// ```no_run
/// # async fn f() -> switchboard::Result<()> {
/// use switchboard::telemetry::{Telemetry, TelemetryConfig};
/// use tracing_subscriber::layer::SubscriberExt;
/// use tracing_subscriber::util::SubscriberInitExt;
///
/// let config = TelemetryConfig::default().with_env()?;
/// if let Some(telemetry) = Telemetry::start(&config)? {
///     tracing_subscriber::registry()
///         .with(telemetry.layer::<tracing_subscriber::Registry>())
///         .init();
///     // ... calls through a ToolDispatcher are traced ...
///     telemetry.shutdown();
/// }
/// # Ok(()) }
/// ```
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `config`'s endpoint; `None` (and no spans) when
    /// it names none or is disabled. Call it inside the tokio runtime the
    /// exports should run on.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Telemetry>> {
        if let Some((key, why)) = config.problems().into_iter().next() {
            return Err(Error::invalid(format!("telemetry.{key} {why}")));
        }
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid("Telemetry::start must be called inside a tokio runtime")
        })?;
        let exporter = otlp::Exporter::new(runtime, Duration::from_millis(config.timeout_ms), url);
        // The sampler is applied before a span is built (`start_edge_span`),
        // so every span that reaches the SDK is one to keep.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::AlwaysOn)
            .with_id_generator(EdgeIds::default())
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        set_sampler(config);
        CONTENT.store(config.capture_tool_content, Ordering::Relaxed);
        SPANS.store(true, Ordering::Relaxed);
        Ok(Some(Telemetry { provider }))
    }

    /// The `tracing` layer that turns Switchboard's spans into
    /// OpenTelemetry spans for this exporter (other spans and events pass
    /// it by).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("switchboard"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TARGET, tracing::Level::TRACE),
            )
    }

    /// Stops making spans and exports those still queued (waiting at most
    /// the export timeout).
    pub fn shutdown(self) {
        SPANS.store(false, Ordering::Relaxed);
        CONTENT.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "spans still queued at shutdown were not exported");
        }
    }
}

/// Sets the sampling that [`start_edge_span`] applies from `config`'s
/// sampler (one of the `OTEL_TRACES_SAMPLER` names `config` accepts).
fn set_sampler(config: &TelemetryConfig) {
    let (parent_based, root) = match config.sampler.strip_prefix("parentbased_") {
        Some(root) => (true, root),
        None => (false, config.sampler.as_str()),
    };
    let keep_below = match root {
        "always_off" => 0,
        "traceidratio" => {
            let ratio = config.sampler_arg.unwrap_or(1.0).clamp(0.0, 1.0);
            (ratio * (1u64 << 63) as f64) as u64
        }
        _ => u64::MAX,
    };
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    KEEP_BELOW.store(keep_below, Ordering::Relaxed);
}

/// Whether the sampler keeps the trace `trace_id`.
fn keeps(trace_id: u128) -> bool {
    ((trace_id as u64) >> 1) < KEEP_BELOW.load(Ordering::Relaxed)
}

/// Builds, with `make`, the span where a trace enters this process (a
/// call's or an MCP request's), if the sampler keeps it; `received` is
/// the caller's trace context, which the span continues.
///
/// The decision is the operator's sampler's: a caller's decision under a
/// `parentbased_*` sampler, else one by the trace id (the caller's, or a
/// new one). A dropped trace builds nothing and leaves `received` as it
/// came.
pub(crate) fn start_edge_span(
    received: Option<&TraceContext>,
    make: impl FnOnce() -> tracing::Span,
) -> Option<tracing::Span> {
    let (keep, new_trace) = match received.and_then(TraceContext::decision) {
        Some((_, sampled)) if PARENT_BASED.load(Ordering::Relaxed) => (sampled, None),
        Some((trace_id, _)) => (keeps(trace_id), None),
        None => {
            let trace_id = fastrand::u128(1..);
            (keeps(trace_id), Some(trace_id))
        }
    };
    if !keep {
        return None;
    }
    let span = make();
    if let Some(parent) = received {
        continue_trace(&span, parent);
    }
    // The OpenTelemetry span is started here, on this thread, so a new
    // trace takes the id the decision was made on.
    DECIDED_TRACE_ID.set(new_trace);
    let _started = span.context();
    DECIDED_TRACE_ID.set(None);
    Some(span)
}

/// A new trace's context, flagged not sampled: what a request the sampler
/// dropped hands to the work it starts in this process, so that work
/// follows the decision instead of deciding again.
pub(crate) fn unsampled_trace() -> TraceContext {
    let (trace_id, span_id) = (fastrand::u128(1..), fastrand::u64(1..));
    TraceContext {
        traceparent: format!("00-{trace_id:032x}-{span_id:016x}-00"),
        tracestate: None,
        baggage: None,
    }
}

/// Trace and span ids at random, except a new trace's id when the sampler
/// decided on one ([`DECIDED_TRACE_ID`]): a ratio sampler's decision then
/// holds for the trace's spans in every process, which decide by its id.
#[derive(Debug, Default)]
struct EdgeIds(RandomIdGenerator);

impl IdGenerator for EdgeIds {
    fn new_trace_id(&self) -> TraceId {
        match DECIDED_TRACE_ID.take() {
            Some(id) => TraceId::from(id),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Makes `span` continue the caller's trace `trace` (its parent becomes the
/// caller's span). Call it before the span is used otherwise.
pub(crate) fn continue_trace(span: &tracing::Span, trace: &TraceContext) {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        carrier.insert("tracestate".to_string(), state.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "the caller's trace context was not applied to the span");
    }
}

/// The trace context to pass on from within `span` (its trace, `span` as
/// the parent), with the baggage `received` came with; `None` if `span`
/// is not exported.
pub(crate) fn passed_on(
    span: &tracing::Span,
    received: Option<&TraceContext>,
) -> Option<TraceContext> {
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        baggage: received.and_then(|t| t.baggage.clone()),
    })
}

/// The trace id of `span` (32 lowercase hex digits), if it is exported.
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| format!("{:032x}", span_context.trace_id()))
}
