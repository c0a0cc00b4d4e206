//! The `ssegate` binary: config → telemetry → `App::build` → run until SIGTERM/SIGINT.

use std::process::ExitCode;

use ssegate::config::{self, ConfigError};
use ssegate_server::App;

fn main() -> ExitCode {
    let config = match config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Exit { code, message }) => {
            ssegate::report(&message, code == 0);
            return ExitCode::from(code);
        }
    };
    ssegate::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
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
    runtime.block_on(tracing::Instrument::instrument(node, span))
}
