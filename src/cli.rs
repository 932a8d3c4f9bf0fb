//! Command-line interface.

use crate::{run, simulate, status};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use fleetagg_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "fleetagg", version, about = "MQTT machine telemetry to per-minute PostgreSQL facts")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log format: human-readable text, or one JSON object per line for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG wins when set. paho's C library
    /// traces every call it makes when its target is enabled at info (a third of the CPU
    /// per message in docs/benchmarks.md), so it is held at warn.
    #[arg(long, global = true, default_value = "info,tokio_postgres=warn,paho_mqtt_c=warn")]
    pub(crate) log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArg {
    /// TOML configuration file; without it, the defaults. FLEETAGG__SECTION__KEY
    /// environment variables override either.
    #[arg(long, short, env = "FLEETAGG_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        // `vars_os`, not `vars`: `vars` panics on any variable that is not UTF-8, ours or
        // not, and the panic message prints its value. The loader looks only at
        // FLEETAGG__ names and names a bad one without its value.
        let config = fleetagg_config::load(self.config.as_deref(), std::env::vars_os())?;
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Apply the database schema and exit.
    Migrate(ConfigArg),
    /// Load and validate the configuration, print the effective one, and exit.
    CheckConfig(ConfigArg),
    /// Publish realistic telemetry for a fleet of machines (demos, load tests).
    Simulate(simulate::SimulateArgs),
    /// Print the status of a running service (what its status page shows); exit 0 when
    /// alive and ready, 2 when it answers but is not, 1 when it cannot be asked.
    Status(status::StatusArgs),
}

impl Command {
    pub(crate) fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(args) => run::run(args.load()?),
            Command::Migrate(args) => run::migrate(&args.load()?),
            Command::CheckConfig(args) => {
                let config = args.load().context("configuration is invalid")?;
                print!("{}", config.to_toml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Simulate(args) => simulate::simulate(&args),
            Command::Status(args) => status::status(&args),
        }
    }
}
