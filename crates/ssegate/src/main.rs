//! The `ssegate` binary: config → telemetry → `App::build` → run until SIGTERM/SIGINT.

use std::process::ExitCode;

use ssegate::config::{self, ConfigError};
use ssegate_server::App;

fn main() -> ExitCode {
    // A server wants its hard open-files limit: the defaults are derived from it.
    ssegate_server::limits::raise_open_files_limit();
    // Before the runtime's threads exist: growing the table later stalls accepts.
    ssegate_server::limits::presize_descriptor_table();
    let config = match config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Exit { code, message }) => {
            ssegate::report(&message, code == 0);
            return ExitCode::from(code);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            ssegate::report(&format!("ssegate: cannot start the runtime: {e}\n"), false);
            return ExitCode::FAILURE;
        }
    };
    let telemetry =
        ssegate::telemetry::init(&config.log, &config.settings.node_id, runtime.handle());
    // Every log line of this node carries its id (spawned tasks inherit the span).
    let span = tracing::info_span!("node", id = %config.settings.node_id);
    let node = async move {
        let app = match App::build(config.settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = ssegate::shutdown_signal();
        ssegate::announce(&app);
        app.run(shutdown).await;
        ExitCode::SUCCESS
    };
    // The node runs on a worker, not on this thread: `block_on` drives its future here,
    // outside the pool, so every accepted connection would be handed across threads (a
    // wake-up each way per connection, measured in docs/benchmarks.md).
    let node = runtime.spawn(tracing::Instrument::instrument(node, span));
    let code = runtime.block_on(node).unwrap_or_else(|e| {
        ssegate::report(&format!("ssegate: the node stopped: {e}\n"), false);
        ExitCode::FAILURE
    });
    telemetry.shutdown();
    code
}
