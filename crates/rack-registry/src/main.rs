//! `rack-registry`: the command line (serve and operator tools) over the library.

use std::io::IsTerminal;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use rack_registry::config::{Config, LogFormat, ServeArgs};
use rack_registry::{logsink, server};

/// mimalloc: a request makes a few dozen small allocations (hyper, headers, keys) and the
/// system allocator was ~7 % of a small read's CPU; measured +9 % requests/s (bench/ab runs in
/// docs/PERFORMANCE.md). Built without transparent huge pages, which would otherwise double
/// the idle RSS (20 MiB instead of 11 MiB).
/// Feature `mimalloc` (default); without it, the system allocator, for heap profilers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the crate version, the commit and the target triple it was built from (build.rs;
/// the commit is `unknown` in a build from a source tarball).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RACK_BUILD_COMMIT"),
    ", target ",
    env!("RACK_BUILD_TARGET"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "rack-registry",
    version = VERSION,
    about = "Rack registry server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Pack a registry directory and upload it (or check it with --dry-run).
    Publish(rack_registry::cli::publish::PublishArgs),
    /// Yank a version (it leaves versions.json and latest, stays readable), or --undo it.
    Yank(rack_registry::cli::manage::YankArgs),
    /// Deprecate a registry, optionally naming its successor, or --undo it.
    Deprecate(rack_registry::cli::manage::DeprecateArgs),
    /// Delete a version for good (admin token; it can never be published again).
    DeleteVersion(rack_registry::cli::manage::DeleteVersionArgs),
    /// Copy a namespace from another registry into storage (for offline networks).
    Mirror(Box<rack_registry::cli::mirror::MirrorArgs>),
    /// Operate on upstreams.json files.
    #[command(subcommand)]
    Upstreams(rack_registry::cli::upstreams::UpstreamsCommand),
    /// Print a new random token and its auth.json entry (only the hash).
    Token(rack_registry::cli::tokens::TokenArgs),
    /// Operate on auth.json files.
    #[command(subcommand)]
    Auth(rack_registry::cli::tokens::AuthCommand),
    /// Copy a storage root to the configured storage (a bucket) and back.
    #[command(subcommand)]
    Storage(Box<rack_registry::cli::storage::StorageCommand>),
    /// Exit 0 when the server's /health answers 200 (a container health check without a shell).
    Healthcheck(rack_registry::cli::healthcheck::HealthcheckArgs),
}

/// Logs go to stdout through a batching writer thread ([`logsink`]), so a request never waits
/// on a `write(2)` (lines are never dropped). The guard writes out what is pending on exit.
fn init_tracing(config: &Config) -> logsink::Guard {
    let (writer, guard) = logsink::start(std::io::stdout());
    let filter = tracing_subscriber::filter::LevelFilter::from_level(config.log_level);
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(writer.clone());
    match config.log_format {
        LogFormat::Json => {
            logsink::set_json_lines(writer);
            builder.json().flatten_event(true).with_current_span(false).init()
        }
        // Colour only for a terminal: escape codes in a file or a journal are noise.
        LogFormat::Pretty => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
    guard
}

/// `--help` shows `[env: HOST]` for every variable: clap's `[env: HOST=]` for an unset one
/// reads as "set to empty", and a set one would print its value (secrets have it hidden anyway).
fn env_names_only(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| a.hide_env_values(true))
        .mut_subcommands(env_names_only)
}

fn main() -> std::process::ExitCode {
    // `.env` fills in what the real environment does not set; flags win over both.
    let _ = dotenvy::dotenv();
    let matches = env_names_only(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        Some(Command::Publish(a)) => return rack_registry::cli::publish::run(a),
        Some(Command::Yank(a)) => return rack_registry::cli::manage::run_yank(a),
        Some(Command::Deprecate(a)) => return rack_registry::cli::manage::run_deprecate(a),
        Some(Command::DeleteVersion(a)) => return rack_registry::cli::manage::run_delete_version(a),
        Some(Command::Mirror(a)) => return rack_registry::cli::mirror::run(*a),
        Some(Command::Upstreams(c)) => return rack_registry::cli::upstreams::run(c),
        Some(Command::Token(a)) => return rack_registry::cli::tokens::run_token(a),
        Some(Command::Auth(c)) => return rack_registry::cli::tokens::run_auth(c),
        Some(Command::Storage(c)) => return rack_registry::cli::storage::run(*c),
        Some(Command::Healthcheck(a)) => return rack_registry::cli::healthcheck::run(a),
        None => cli.serve,
    };
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rack-registry: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let _log_guard = init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rack-registry: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rack-registry: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
