//! `rack-registry upstreams check <file>`: the verdict the server would give `upstreams.json`
//! (SPEC §17) before it is deployed: every upstream with its namespaces, or the first broken
//! rule and exit 1 (the server refuses such a file whole, at startup and on reload).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Check an upstreams.json file as the server would (exit 1 if it would be refused)
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The upstreams.json file
    pub file: PathBuf,
}

pub fn run(cmd: UpstreamsCommand) -> ExitCode {
    let UpstreamsCommand::Check(a) = cmd;
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "rack-registry upstreams check: cannot read {}: {e}",
                a.file.display()
            );
            return ExitCode::from(2);
        }
    };
    match crate::upstream::config::parse(&Some(text)) {
        Ok(c) => {
            for u in &c.upstreams {
                println!(
                    "{}: {} (maxAgeSeconds {}, timeoutSeconds {}, {})",
                    u.url,
                    u.namespaces.join(", "),
                    u.max_age.as_secs(),
                    u.timeout.as_secs(),
                    if u.token.is_some() {
                        "with a token"
                    } else {
                        "no token"
                    }
                );
            }
            println!(
                "{}: {} upstream(s), accepted",
                a.file.display(),
                c.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: refused: {e}", a.file.display());
            ExitCode::FAILURE
        }
    }
}
