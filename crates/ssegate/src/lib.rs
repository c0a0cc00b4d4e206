//! The pieces of the `ssegate` binary that are worth testing on their own.
//!
//! # Layout
//!
//! - [`config`]: settings from flags, `SSEGATE_*` environment and a TOML file.
//! - [`telemetry`]: `tracing` set-up (human or JSON logs).
//! - [`otel`]: OpenTelemetry trace export over OTLP, and the trace hooks.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod otel;
pub mod telemetry;

use std::io::Write;

use ssegate_server::App;

/// Prints the one line scripts wait for: where the node listens.
pub fn announce(app: &App) {
    let http = app
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let admin = app
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(%http, %admin, node_id = %app.state().settings.node_id,
        broker = app.state().broker.kind(), "listening");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ssegate listening http={http} admin={admin}");
    let _ = out.flush();
}

/// Prints help or a configuration error (before logging is set up).
pub fn report(message: &str, to_stdout: bool) {
    if to_stdout {
        let _ = write!(std::io::stdout().lock(), "{message}");
    } else {
        let _ = write!(std::io::stderr().lock(), "{message}");
    }
}

/// Installs the SIGTERM and SIGINT handlers now (before the node announces itself, so an
/// early signal is never the default "die at once") and returns a future that resolves on
/// either.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for signals");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
