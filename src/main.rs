//! Entry point: parse the command line, run one subcommand, map its result to an exit code.
//! This is the only place that chooses an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use fieldagent::cli::{self, CertCommand, Cli, Command};

/// sysexits.h EX_CONFIG: the unit file's RestartPreventExitStatus, so systemd does not restart a
/// broken config in a loop.
const EX_CONFIG: u8 = 78;

/// `status`: the agent is not running, or its state is stale (as `systemctl status` and LSB's
/// "program is not running").
const EX_NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    // Only for --version: nothing may touch OpenSSL before the daemon's TLS floor is in place.
    let mut command = Cli::command();
    if std::env::args_os().any(|arg| arg == "--version") {
        let text: &'static str = Box::leak(fieldagent::cli::long_version().into_boxed_str());
        command = command.long_version(text);
    }
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Not locked: the daemon's threads log to stderr too.
    let mut err = std::io::stderr();
    let result = match cli.command {
        Some(Command::Check { connect: true }) => {
            cli::check_connect(&cli.config, cli.quiet > 0, &mut out).map(|outcome| match outcome {
                cli::ConnectOutcome::ConfigErrors => ExitCode::from(EX_CONFIG),
                cli::ConnectOutcome::Failed => ExitCode::FAILURE,
                cli::ConnectOutcome::Passed => ExitCode::SUCCESS,
            })
        }
        Some(Command::Check { connect: false }) => cli::check(&cli.config, cli.quiet > 0, &mut out)
            .map(|outcome| {
                if outcome.errors > 0 {
                    ExitCode::from(EX_CONFIG)
                } else {
                    ExitCode::SUCCESS
                }
            }),
        Some(Command::Config { json }) => {
            cli::show_config(&cli.config, json, &mut out).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Sign {
            key,
            kid,
            topic,
            request,
        }) => cli::sign(&key, &kid, &topic, &request, &mut out).map(|()| ExitCode::SUCCESS),
        Some(Command::Cert(CertCommand::CreateKey { tpm, force })) => {
            cli::create_key(&cli.config, tpm, force, &mut out).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Cert(CertCommand::Csr { cn, out: file })) => {
            cli::csr(&cli.config, cn.as_deref(), file.as_ref(), &mut out)
                .map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Cert(CertCommand::Show { json })) => {
            cli::show_cert(&cli.config, json, &mut out).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Identity) => {
            cli::identity(&cli.config, &mut out, &mut err).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Read { json }) => {
            cli::read(&cli.config, json, &mut out, &mut err).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Status { json }) => cli::status(&cli.config, json, &mut out).map(|running| {
            if running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EX_NOT_RUNNING)
            }
        }),
        Some(Command::Run) | None => {
            let verbosity = cli.verbose as i8 - cli.quiet as i8;
            fieldagent::daemon::start(&cli.config, verbosity, &mut err).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(err, "fieldagent: {}", chain(&error));
            if error.is_config() {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, as ripgrep prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
