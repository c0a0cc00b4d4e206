//! OpenTelemetry: when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and not empty), the spans of target
//! `ssegate_trace` (a `publish` per publish request, a `deliver` per traced event on every
//! node that hands it to its local streams) are exported over OTLP/HTTP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/json`, or `http/protobuf` for any other value,
//! `grpc` included: only the HTTP transports are built in). The other standard `OTEL_*`
//! variables apply (`OTEL_BSP_SCHEDULE_DELAY`, ...).
//!
//! A publish's `traceparent` is stored with its events; a node delivering an event records
//! its `deliver` span as a child of it, so a publish on node A and its deliveries on nodes B
//! and C form one trace. A publisher's own `traceparent` header makes the publish part of
//! the publisher's trace.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use ssegate_broker::trace::TraceHook;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tracing target whose spans are exported.
pub const TARGET: &str = "ssegate_trace";

/// The exporter's HTTP client: requests run on the node's tokio runtime (the SDK's batch
/// processor exports from its own thread, which has no runtime of its own). An export
/// gets 10 s, and at most 4 MiB of the collector's reply is read.
#[derive(Debug, Clone)]
struct TokioHttp {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[async_trait::async_trait]
impl HttpClient for TokioHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let task = self.runtime.spawn(async move {
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
                .await
                .map_err(|_| -> HttpError { "OTLP export timed out".into() })??;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, 4 << 20).collect().await?.to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        });
        task.await?
    }
}

/// The tracer provider, when export is configured; `None` also when the exporter cannot
/// be built (logged as a warning: the node runs without export).
pub fn provider(node_id: &str, runtime: &tokio::runtime::Handle) -> Option<SdkTracerProvider> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !configured {
        return None;
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let client = TokioHttp {
        runtime: runtime.clone(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_http_client(client)
        .build()
        .map_err(|e| tracing::warn!(error = %e, "cannot build the OTLP exporter"))
        .ok()?;
    let resource = Resource::builder()
        .with_service_name("ssegate")
        .with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// The tracer that `ssegate_trace` spans are recorded into; [`crate::telemetry::init`]
/// wraps it in the `tracing` layer, filtered to that target.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("ssegate")
}

/// The broker's [`TraceHook`] on OpenTelemetry: reads the current span's `traceparent`
/// (for storing with a publish) and makes a span the child of a stored or received one.
#[derive(Debug)]
pub struct OtelHook;

impl TraceHook for OtelHook {
    fn traceparent(&self) -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove("traceparent")
    }

    fn adopt_parent(&self, span: &tracing::Span, traceparent: &str) {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let cx: Context = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}
