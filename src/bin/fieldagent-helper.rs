//! `fieldagent-helper`: the root half of fieldagent's remote operations (see `fieldagent::helper`).
//! systemd runs it, never the agent: `fieldagent-helper.path` starts `run` when a request waits in
//! `state_dir/requests/`, and `fieldagent-helper-recover.service` runs `recover` at boot before
//! the agent starts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sysexits.h EX_CONFIG: the config cannot be used.
const EX_CONFIG: u8 = 78;

/// The privileged helper of fieldagent: installs updates with a way back, restarts, reads the
/// agent's journal, each only as the config allows.
#[derive(Debug, Parser)]
#[command(name = "fieldagent-helper", version = fieldagent::VERSION)]
struct Cli {
    /// The agent's config (root's; it says what operations are allowed).
    #[arg(long, default_value = "/etc/fieldagent/config.yaml")]
    config: PathBuf,
    /// The helper's own state: its update journal and the package kept to go back to.
    #[arg(long, default_value = fieldagent::helper::DEFAULT_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Step,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// Every request waiting, oldest first (an unfinished update first).
    Run,
    /// At boot, before the agent: an update a power cut interrupted is finished or undone.
    Recover,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _sink = fieldagent::service::init_logging(
        fieldagent::config::LogLevel::Info,
        fieldagent::config::LogTarget::Stderr,
    );
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fieldagent-helper: must run as root (systemd starts it; the agent never does)");
        return ExitCode::FAILURE;
    }
    // Nothing to recover (the first boot, or every update ended): the config and state_dir, which
    // may not exist yet, are not needed.
    if matches!(cli.command, Step::Recover)
        && !cli.dir.join(fieldagent::helper::update::JOURNAL).exists()
    {
        return ExitCode::SUCCESS;
    }
    let helper = match fieldagent::helper::Helper::new(&cli.config, &cli.dir) {
        Ok(helper) => helper,
        Err(why) => {
            eprintln!("fieldagent-helper: {why}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match cli.command {
        Step::Run => helper.run(),
        Step::Recover => fieldagent::helper::update::recover(&helper),
    }
    ExitCode::SUCCESS
}
