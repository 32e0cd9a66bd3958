//! `patina`: the command-line entry point.
//!
//! Errors are reported as `error: <message>` (with its context chain) on
//! stderr and exit status 1; usage errors too. Never a panic or backtrace
//! for bad input.

mod agent_cmd;
mod backup_cmd;
mod check_cmd;
mod cli;
mod client_cmd;
mod config;
mod db_cmd;
mod devcluster_cmd;
mod jsonl;
mod tls_cmd;

use std::io;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" too, printed to stdout.
            let _ = e.print();
            // 2 for a usage error, as clap itself would: scripts (a
            // `patina health` deploy gate) tell a typo from a failure (1).
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`patina db changes … | head`): not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent_cmd::run(&args.config),
        Command::Exec(args) => client_cmd::exec(args),
        Command::Query(args) => client_cmd::query(args),
        Command::Sub(args) => client_cmd::sub(args),
        Command::Reload(args) => client_cmd::reload(args),
        Command::Members(args) => client_cmd::members(args),
        Command::Regions(args) => client_cmd::regions(args),
        Command::Health(args) => client_cmd::health(args),
        Command::Check(args) => check_cmd::run(args),
        Command::Backup(args) => backup_cmd::backup(args),
        Command::Restore(args) => backup_cmd::restore(args),
        Command::Db(cmd) => db_cmd::run(cmd),
        Command::Tls(cmd) => tls_cmd::run(cmd),
        Command::Devcluster(args) => devcluster_cmd::run(args.regions, args.dir),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, `: `-separated (like anyhow's `{:#}`), leaving
/// out a cause whose text the previous one already shows (errors that both
/// print and chain their source would otherwise repeat it).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_shown_once() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "no such table: nope");
        let e = anyhow::Error::new(inner)
            .context("sqlite: no such table: nope")
            .context("SQL argument 1 failed");
        assert_eq!(
            message(&e),
            "SQL argument 1 failed: sqlite: no such table: nope"
        );
        let e = anyhow::anyhow!("b").context("a");
        assert_eq!(message(&e), "a: b");
    }
}
