//! `rack-registry publish <dir>`: pack a registry directory the way the server expects and
//! upload it. (Being written.)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Directory holding registry.json and the files it declares
    pub dir: PathBuf,
    /// Registry server URL
    #[arg(long, env = "RACK_REGISTRY_URL", default_value = "http://localhost:8080")]
    pub url: String,
    /// Token with publish rights (or the admin token)
    #[arg(long, env = "RACK_REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run the server's checks locally and upload nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: PublishArgs) -> ExitCode {
    eprintln!("publish {}: not available yet", args.dir.display());
    ExitCode::FAILURE
}
