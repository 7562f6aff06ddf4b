//! The OTLP/HTTP exporter: a batch of finished spans encoded as an
//! `ExportTraceServiceRequest` protobuf (opentelemetry-proto's
//! `collector/trace/v1`, written field by field here) and posted with the
//! process's `reqwest` on the tokio runtime it was started from, while the
//! SDK's batch thread waits. An export that fails is logged once, not once
//! per batch, until one succeeds again.
//!
//! Why not `opentelemetry-otlp`: its protobuf types need `prost-derive`, a
//! proc macro whose `itertools` would change the build of RocksDB's
//! bindings (bindgen shares it), so adding it rebuilds RocksDB for every
//! package of the workspace. The encoding of the few messages a span needs
//! is small.

use crate::transport::TlsTrust;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

#[derive(Debug)]
pub(super) struct Exporter {
    /// Built at the first export, when `serve` has installed its TLS trust
    /// (`[tls] ca_file` holds a private collector's CA as well as agents').
    client: OnceLock<Result<reqwest::Client, String>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    url: String,
    resource: Option<Resource>,
    failing: AtomicBool,
}

impl Exporter {
    pub(super) fn new(runtime: tokio::runtime::Handle, timeout: Duration, url: String) -> Self {
        Exporter {
            client: OnceLock::new(),
            runtime,
            timeout,
            url,
            resource: None,
            failing: AtomicBool::new(false),
        }
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                let tls = TlsTrust::current()
                    .client_config()
                    .map_err(|e| e.to_string())?;
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(self.timeout)
                    .connect_timeout(self.timeout)
                    .no_proxy()
                    .build()
                    .map_err(|e| crate::transport::error_chain(&e))
            })
            .clone()
    }

    /// Posts one encoded request; the error says why it was not taken.
    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let client = self.client()?;
        let url = self.url.clone();
        let exchange = self.runtime.spawn(async move {
            let response = client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            // Read the answer whole, so the connection can be reused.
            response.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        });
        match exchange.await {
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(format!("the collector answered {status}")),
            Ok(Err(e)) => Err(crate::transport::error_chain(&e)),
            Err(e) => Err(format!("the export task ended: {e}")),
        }
    }

    /// Notes how an export went, logging a change from working to failing
    /// and back.
    fn observe(&self, outcome: &Result<(), String>) {
        match outcome {
            Err(why) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                url = %self.url,
                error = %why,
                "cannot export traces; spans are dropped until the collector answers"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(url = %self.url, "exporting traces again")
            }
            _ => {}
        }
    }
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = encode(self.resource.as_ref(), &batch);
        let outcome = self.post(body).await;
        self.observe(&outcome);
        outcome.map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = Some(resource.clone());
    }
}

/// `ExportTraceServiceRequest { resource_spans = 1 }` with one
/// `ResourceSpans { resource = 1, scope_spans = 2 }`, a `ScopeSpans
/// { scope = 1, spans = 2 }` per instrumentation scope.
fn encode(resource: Option<&Resource>, batch: &[SpanData]) -> Vec<u8> {
    let mut scopes: Vec<(&opentelemetry::InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in batch {
        let scope = &span.instrumentation_scope;
        match scopes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, spans)) => spans.push(span),
            None => scopes.push((scope, vec![span])),
        }
    }
    let mut request = Pb::default();
    request.message(1, |rs| {
        if let Some(resource) = resource {
            rs.message(1, |r| {
                for (key, value) in resource.iter() {
                    r.message(1, |kv| key_value(kv, key.as_str(), value));
                }
            });
        }
        for (scope, spans) in &scopes {
            rs.message(2, |ss| {
                ss.message(1, |s| {
                    s.string(1, scope.name());
                    s.string(2, scope.version().unwrap_or_default());
                });
                for span in spans {
                    ss.message(2, |s| encode_span(s, span));
                }
            });
        }
    });
    request.0
}

/// `Span`: ids 1, 2, 4; `trace_state` 3; `name` 5; `kind` 6; times 7, 8;
/// `attributes` 9 (dropped count 10); `events` 11 (dropped 12); `status` 15
/// `{ message = 2, code = 3 }`; `flags` 16. Links (13) are never made.
fn encode_span(s: &mut Pb, span: &SpanData) {
    let context = &span.span_context;
    s.bytes(1, &context.trace_id().to_bytes());
    s.bytes(2, &context.span_id().to_bytes());
    s.string(3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        s.bytes(4, &span.parent_span_id.to_bytes());
    }
    s.string(5, &span.name);
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    s.uint(6, kind);
    s.fixed64(7, nanos(span.start_time));
    s.fixed64(8, nanos(span.end_time));
    for attribute in &span.attributes {
        s.message(9, |kv| attribute_of(kv, attribute));
    }
    s.uint(10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        s.message(11, |e| {
            e.fixed64(1, nanos(event.timestamp));
            e.string(2, &event.name);
            for attribute in &event.attributes {
                e.message(3, |kv| attribute_of(kv, attribute));
            }
            e.uint(4, event.dropped_attributes_count.into());
        });
    }
    s.uint(12, span.events.dropped_count.into());
    let (code, message) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    if code != 0 {
        s.message(15, |st| {
            st.string(2, message);
            st.uint(3, code);
        });
    }
    s.fixed32(16, u32::from(context.trace_flags().to_u8()));
}

fn attribute_of(kv: &mut Pb, attribute: &KeyValue) {
    key_value(kv, attribute.key.as_str(), &attribute.value);
}

/// `KeyValue { key = 1, value = 2 }`, the value an `AnyValue` (`string = 1`,
/// `bool = 2`, `int = 3`, `double = 4`); an array is sent as its text.
fn key_value(kv: &mut Pb, key: &str, value: &Value) {
    kv.string(1, key);
    kv.message(2, |v| match value {
        Value::Bool(b) => v.always_uint(2, u64::from(*b)),
        Value::I64(i) => v.always_uint(3, *i as u64),
        Value::F64(f) => v.double(4, *f),
        other => v.always_bytes(1, other.as_str().as_bytes()),
    });
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A protobuf message being written. Scalars at their default value are
/// left out, as proto3 does; a `oneof` member is written even then.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn always_uint(&mut self, field: u32, value: u64) {
        self.key(field, 0);
        self.varint(value);
    }

    fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.always_uint(field, value);
        }
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        self.key(field, 5);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn double(&mut self, field: u32, value: f64) {
        self.fixed64(field, value.to_bits());
    }

    fn always_bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.always_bytes(field, bytes);
        }
    }

    fn string(&mut self, field: u32, text: &str) {
        self.bytes(field, text.as_bytes());
    }

    fn message(&mut self, field: u32, write: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        write(&mut inner);
        self.always_bytes(field, &inner.0);
    }
}

#[cfg(test)]
mod tests {
    use super::Pb;

    #[test]
    fn varints_and_fields_are_encoded_as_protobuf_does() {
        let mut pb = Pb::default();
        pb.always_uint(1, 150);
        assert_eq!(pb.0, [0x08, 0x96, 0x01]);
        let mut pb = Pb::default();
        pb.string(2, "testing");
        assert_eq!(pb.0, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut pb = Pb::default();
        pb.uint(3, 0);
        pb.string(4, "");
        assert!(pb.0.is_empty(), "proto3 leaves defaults out");
        pb.message(3, |m| m.always_uint(1, 150));
        assert_eq!(pb.0, [0x1a, 0x03, 0x08, 0x96, 0x01]);
        let mut pb = Pb::default();
        pb.fixed64(7, 1);
        assert_eq!(pb.0, [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
    }
}
