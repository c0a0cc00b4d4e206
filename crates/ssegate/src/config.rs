//! Settings from flags, `SSEGATE_*` environment variables and an optional TOML file.
//!
//! Strength: flags > environment > file > defaults. The environment overrides the file,
//! the usual rule for twelve-factor services, so that a deployment can override one value
//! of a config file baked into an image or a ConfigMap (see docs/configuration.md).
//!
//! The settings are declared once, in [`ssegate_server::settings::Options`] (the node's)
//! and [`Cli`] (the binary's own: the file, logging and the runtime). From that declaration come the
//! flags, the variables (`SSEGATE_` + the name, attached here to every flag), the file keys
//! (the name with `_`), `--help`, and the value rules. A file key is checked against the
//! same declaration and parsed by the same rule as the flag. An invalid value, an unknown
//! flag or an unknown file key exits with status 64 (`EX_USAGE`) and a message that names
//! the setting.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use ssegate_server::Settings;
use ssegate_server::settings::options::{SECRET_SETTINGS, env_name, file_key};
use ssegate_server::settings::{Options, SettingsError};

use crate::telemetry::{LogFormat, LogSettings};

/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: u8 = 64;

/// Every setting of the binary: its own, and the node's ([`Options`]).
#[derive(Debug, Parser)]
#[command(
    name = "ssegate",
    version,
    about = "A horizontally scaled Server-Sent Events gateway",
    after_help = "Every setting is a flag, an environment variable and a key of the --config TOML \
                  file (flags > environment > file > default). Durations: 500ms, 15s, 1h. \
                  Sizes: 65536, 64KiB, 1MiB."
)]
pub struct Cli {
    /// TOML file with settings (keys like heartbeat_interval)
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Log format: human or json
    #[arg(long, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax)
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Runtime worker threads; unset: one per core
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// The node's settings.
    #[command(flatten)]
    pub node: Options,
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's settings, for `App::build`.
    pub settings: Settings,
    /// How to log, for `telemetry::init`.
    pub log: LogSettings,
    /// The runtime's worker threads; `None`: one per core.
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

/// Loading stopped: print `message` and exit with `code` (0 for `--help`).
#[derive(Debug)]
pub enum ConfigError {
    /// Print `message`, then exit with `code`.
    Exit {
        /// 0 after `--help`, 64 (`EXIT_USAGE`) for a bad setting.
        code: u8,
        /// The text to print, ending in a newline.
        message: String,
    },
}

fn usage(message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Exit {
        code: EXIT_USAGE,
        message: format!("ssegate: {message}\n"),
    }
}

/// The command: [`Cli`]'s flags, each with its variable attached. A variable that is set
/// but empty counts as unset (what `FOO=` in a compose file or a shell means).
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        if matches!(arg.get_id().as_str(), "help" | "version") {
            return arg;
        }
        let name = env_name(arg.get_id().as_str());
        let secret = SECRET_SETTINGS.contains(&arg.get_id().as_str());
        let mut arg = arg.hide_env_values(secret);
        if arg.get_default_values().is_empty() && arg.get_action().takes_values() {
            let help = format!(
                "{} [default: unset]",
                arg.get_help().map(ToString::to_string).unwrap_or_default()
            );
            arg = arg.help(help);
        }
        match std::env::var_os(&name) {
            Some(v) if v.is_empty() => arg,
            _ => arg.env(name),
        }
    })
}

/// Reads the settings from `args`, the environment and the file.
pub fn load(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<Config, ConfigError> {
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut matches = parse(&args)?;
    if let Some(path) = matches.get_one::<std::path::PathBuf>("config") {
        // The file fills in what neither a flag nor a variable set: its values are given
        // as flags, after the real ones, so they pass the same rules.
        let extra = file_args(path, &matches)?;
        if !extra.is_empty() {
            args.extend(extra);
            matches = parse(&args)?;
        }
    }
    let cli = Cli::from_arg_matches(&matches).map_err(|e| clap_error(&e))?;
    let settings = Settings::from_options(cli.node, ssegate_server::limits::open_files_limit())
        .map_err(|e| setting_error(&e))?;
    Ok(Config {
        settings,
        log: LogSettings {
            format: cli.log_format,
            filter: cli.log,
        },
        worker_threads: cli.worker_threads,
    })
}

fn parse(args: &[OsString]) -> Result<clap::ArgMatches, ConfigError> {
    command()
        .try_get_matches_from(args)
        .map_err(|e| clap_error(&e))
}

/// clap's message, plus the variable and file key of the setting it is about.
fn clap_error(e: &clap::Error) -> ConfigError {
    let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
    let mut message = e.render().to_string();
    if e.kind() == ErrorKind::ValueValidation
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
        && let Some(flag) = arg.strip_prefix("--")
    {
        let name = flag.split(' ').next().unwrap_or(flag);
        let which = format!(
            "\n  (the setting {} / --{name} / file key {})",
            env_name(name),
            file_key(name)
        );
        let at = message.find("\n\n").unwrap_or(message.len());
        message.insert_str(at, &which);
    }
    ConfigError::Exit { code, message }
}

fn setting_error(e: &SettingsError) -> ConfigError {
    let name = e.setting();
    usage(format!(
        "invalid {} (--{}): {e}",
        env_name(name),
        name.replace('_', "-")
    ))
}

/// `--key=value` for every file key whose setting neither a flag nor a variable set.
fn file_args(
    path: &std::path::Path,
    matches: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {shown}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| usage(format!("config file {shown} is not valid TOML: {e}")))?;
    let cmd = command();
    let known: HashMap<String, &str> = cmd
        .get_arguments()
        .filter_map(|a| Some((file_key(a.get_id().as_str()), a.get_long()?)))
        .filter(|(key, _)| key != "config")
        .collect();
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(long) = known.get(&key) else {
            return Err(usage(format!(
                "config file {shown}: unknown setting {key:?}"
            )));
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(usage(format!(
                    "config file {shown}: {key} must be a string or a number, not {}",
                    other.type_str()
                )));
            }
        };
        let id = key.as_str();
        let given = matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            out.push(OsString::from(format!("--{long}={text}")));
        }
    }
    Ok(out)
}

/// Every flag, its variable and its default as `--help` shows it (`None`: unset), for the
/// documentation test.
pub fn declared() -> Vec<(String, String, Option<String>)> {
    command()
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let default = a
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((format!("--{long}"), env_name(a.get_id().as_str()), default))
        })
        .filter(|(flag, _, _)| flag != "--help" && flag != "--version")
        .collect()
}

impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Human, Self::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Self::Human => "human",
            Self::Json => "json",
        }))
    }
}

#[cfg(test)]
mod tests;
