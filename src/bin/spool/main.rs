//! `spool`: the command-line tool for diskspool queues.
//!
//! The binary is thin glue: every subcommand calls the library and prints what it returns.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Inspect, verify, repair and script diskspool queues.
#[derive(Debug, Parser)]
#[command(name = "spool", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run producers and workers on a temporary queue and print throughput and stats.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("spool: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(5)
        }
    }
}
