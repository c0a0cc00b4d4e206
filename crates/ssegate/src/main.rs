//! The `ssegate` binary: config → telemetry → `App::build` → run until SIGTERM/SIGINT.

use std::process::ExitCode;

use ssegate::config::{self, ConfigError};
use ssegate_server::App;

fn main() -> ExitCode {
    // A server wants its hard open-files limit: the defaults are derived from it.
    ssegate_server::limits::raise_open_files_limit();
    let config = match config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Exit { code, message }) => {
            ssegate::report(&message, code == 0);
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
    let code = runtime.block_on(tracing::Instrument::instrument(node, span));
    telemetry.shutdown();
    code
}
