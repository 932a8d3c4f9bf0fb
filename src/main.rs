//! The `fleetagg` binary: command line, logging, signals, and the hand-off to the actors.
//! Everything that is not wiring lives in the `fleetagg-actors` crate.

mod cli;
mod logging;
mod run;
mod simulate;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    match cli.command.execute() {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            eprintln!("fleetagg: {err:#}");
            ExitCode::FAILURE
        }
    }
}
