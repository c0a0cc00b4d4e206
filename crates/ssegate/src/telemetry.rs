//! Logging with `tracing`, human-readable by default or JSON lines with a setting, plus
//! OpenTelemetry export when configured (see [`crate::otel`]). `SSEGATE_LOG` takes an
//! `EnvFilter` directive (default `info`); it filters the logs, not the exported spans.

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::otel;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `tracing`'s default text lines, coloured when stderr is a terminal.
    Human,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// The log settings (`SSEGATE_LOG_FORMAT`, `SSEGATE_LOG`).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// How each line is written.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info,ssegate_server=debug`.
    pub filter: String,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered (at exit).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: logs to stderr through `log.filter` (a directive that
/// does not parse falls back to `info`), and, when OTLP export is configured, the span
/// exporter with the broker's trace hook. Call once, before anything logs; the exporter's
/// HTTP requests run on `runtime`.
pub fn init(log: &LogSettings, node_id: &str, runtime: &tokio::runtime::Handle) -> Telemetry {
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match log.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let provider = otel::provider(node_id, runtime);
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(otel::tracer(p))
            .with_filter(Targets::new().with_target(otel::TARGET, Level::TRACE))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if provider.is_some() {
        ssegate_broker::trace::set_hook(Box::new(otel::OtelHook));
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { provider }
}
