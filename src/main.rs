//! The `fleetagg` binary: command line, logging, signals, and the hand-off to the actors.
//! Everything that is not wiring lives in the `fleetagg-actors` crate.

mod allocator;
mod cli;
mod logging;
mod run;
mod simulate;
mod status;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    allocator::return_freed_memory_at_once();
    let cli = cli::Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    exit_on_panic();
    match cli.command.execute() {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            eprintln!("fleetagg: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code after a panic anywhere in the process.
const EXIT_PANIC: i32 = 70;

/// actix's Supervisor restarts stopped actors, not panicked ones: a panic in a handler
/// would leave a dead actor and a service that looks alive. So any panic is logged and
/// ends the process, and the process manager (systemd `Restart=on-failure`) starts it
/// again, and the journal replays what the process held (docs/architecture.md).
fn exit_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "a thread panicked; exiting so that the process manager restarts fleetagg");
        default_hook(info);
        std::process::exit(EXIT_PANIC);
    }));
}
