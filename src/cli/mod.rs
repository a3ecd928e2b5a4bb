//! The command line: its definitions (clap), and the commands other than `run`, one file each.
//! Each writes its report to the given writer and returns what `main` needs to pick the exit
//! code; none of them exits the process. The daemon is `crate::daemon`; the two share only the
//! library (`config`, `admission`, `identity`, `mqtt`, …), never each other.

mod cert;
mod check;
mod config;
mod connect;
mod read;
mod sign;
mod status;

pub use cert::{create_key, csr, show as show_cert};
pub use check::{check, CheckOutcome};
pub use config::show as show_config;
pub use connect::{check_connect, ConnectOutcome};
pub use read::{identity, read};
pub use sign::sign;
pub use status::status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The text of `--version`: the release, the commit and day it was built from, and the
/// libraries that speak TLS and MQTT for it (OpenSSL as loaded now).
pub fn long_version() -> String {
    let built = std::env!("FIELDAGENT_BUILD_TS").parse::<u64>().unwrap_or(0) * 1000;
    let day = crate::local_status::utc(built);
    format!(
        "{} (commit {}, built {})\nPaho C {} (paho-mqtt-sys with fieldagent's fixes)\n{}",
        crate::VERSION,
        env!("FIELDAGENT_COMMIT"),
        day.split(' ').next().unwrap_or_default(),
        env!("FIELDAGENT_PAHO_C"),
        openssl::version::version()
    )
}

/// Device agent for industrial Linux boards: sensors to MQTT telemetry, alerts and commands.
#[derive(Debug, Parser)]
#[command(name = "fieldagent", version = crate::VERSION, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "FIELDAGENT_CONFIG",
        default_value = crate::config::DEFAULT_PATH,
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// More log output from `run` than log.level says (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less: `run` logs warnings and errors only (-qq errors only); `check` prints only
    /// warnings and errors.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run,
    /// Validate the config, certificates, identity and sensors; print every finding; exit 0 or 78.
    Check {
        /// Then connect to the broker once as the device (TLS, CONNACK), subscribe to its
        /// command topic and publish a QoS 1 message to its health topic, each step timed;
        /// exit 1 when a step fails. Refused while the agent runs.
        #[arg(long)]
        connect: bool,
    },
    /// Print the merged config as the agent runs it (its drop-ins merged, every default filled
    /// in) with where each value comes from (file and line, or default); exit 0 or 78.
    Config {
        /// Print one JSON object {"config":{…},"origins":{"key.path":"file:line"|"default"}}.
        #[arg(long)]
        json: bool,
    },
    /// The device key and certificate: make the key on the board, a request for it, show them.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print the MQTT client ID and which source it came from.
    Identity,
    /// For operators: sign a command or operation request for devices that require signed
    /// requests (security.command_keys); prints the JWS to publish as the message.
    Sign {
        /// The Ed25519 private key (PEM), whose public half is <KID>.pem on the devices.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The key id: the name of the public key's file on the devices, without .pem.
        #[arg(long, value_name = "ID")]
        kid: String,
        /// The exact topic the request will be published to.
        #[arg(long)]
        topic: String,
        /// The request, e.g. '{"id":"c-17","value":"1"}'.
        request: String,
    },
    /// Read every configured sensor once and print a table.
    Read {
        /// Print one JSON object {"values":{…},"errors":{…}} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Say what the running agent is doing (connection, queue, raised alerts, failing sensors),
    /// from state_dir; exit 0 when it runs, 3 when it does not or its state is stale.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `fieldagent cert …`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a P-256 key at broker.tls.key_file (mode 0600, created exclusively).
    CreateKey {
        /// Inside the TPM 2.0 (broker.tls.tpm.tcti): the file holds only its wrapped form.
        #[arg(long)]
        tpm: bool,
        /// Replace an existing key (the device's identity changes with it).
        #[arg(long)]
        force: bool,
    },
    /// Print or write a PKCS#10 request signed by the device key.
    Csr {
        /// The subject CN (default: the client ID the agent would use without a certificate).
        #[arg(long)]
        cn: Option<String>,
        /// Write the request to FILE instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the device certificate and where its key lives (file, tpm, pkcs11).
    Show {
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// What the man page says that clap does not know: exit codes, files, signals.
    const MAN_TAIL: &str = r#".SH EXIT STATUS
.TP
0
Success; after SIGTERM or SIGINT, a clean stop.
.TP
78
The config or a certificate is invalid (EX_CONFIG). The systemd unit does not restart on it: a
person has to fix the config.
.TP
1
Any other failure; for \fBcheck --connect\fR, a step of the connection failed.
.TP
2
The command line was not understood (an unknown command or option, a missing value).
.TP
3
\fBstatus\fR only: no agent is running, or its state is stale.
.SH SIGNALS
.TP
SIGHUP
Reload the config. A config that does not pass the checks is refused and the running one stays.
.TP
SIGTERM, SIGINT
Publish the offline status, disconnect and exit 0. A second signal stops at once.
.SH FILES
.TP
/etc/fieldagent/config.yaml
The config (a commented example is installed).
.TP
/etc/fieldagent/conf.d/*.yaml
Drop-ins, merged over the config in name order (maps by key; sensors, alerts and actuators by
name). Symlinks, files of another owner and world-writable files are refused.
.TP
/var/lib/fieldagent/outbox.log
The durable outbox: alerts, command responses and telemetry at QoS 1 or more until the broker
confirms them, bounded by broker.max_queued_messages.
.TP
/var/lib/fieldagent/status.json
What the running agent does, for \fBfieldagent status\fR.
.TP
/var/lib/fieldagent/
Other state: alerts.json (raised alerts and the event counter), commands.json (executed command
ids), operations.json (remote operations), copies of the certificate in use, the OpenSSL config
the agent writes for its TLS floor and device key.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), /usr/share/doc/fieldagent/README.md
"#;

    /// The page: clap's name, synopsis, description and options, every subcommand with its own
    /// options, then `MAN_TAIL`.
    fn man_page() -> Vec<u8> {
        let command = super::Cli::command();
        let man = clap_mangen::Man::new(command.clone()).date("2026-11-26");
        let mut out = Vec::new();
        man.render_title(&mut out).unwrap();
        man.render_name_section(&mut out).unwrap();
        man.render_synopsis_section(&mut out).unwrap();
        man.render_description_section(&mut out).unwrap();
        man.render_options_section(&mut out).unwrap();
        let roff = |text: &str| text.replace('\\', "\\\\").replace('-', "\\-");
        let mut text = String::from(".SH COMMANDS\n");
        for sub in command.get_subcommands() {
            let flags: Vec<String> = sub
                .get_arguments()
                .filter_map(|arg| {
                    arg.get_long()
                        .map(|long| format!("[\\fB\\-\\-{}\\fR]", roff(long)))
                })
                .collect();
            text.push_str(&format!(
                ".TP\n\\fBfieldagent {}\\fR {}\n{}\n",
                sub.get_name(),
                flags.join(" "),
                roff(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())
            ));
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    text.push_str(&format!(
                        ".RS\n.TP\n\\fB\\-\\-{}\\fR\n{}\n.RE\n",
                        roff(long),
                        roff(&arg.get_help().map(|h| h.to_string()).unwrap_or_default())
                    ));
                }
            }
        }
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(MAN_TAIL.as_bytes());
        out
    }

    /// Shell completions shipped in the .deb (packaging/completions/) are generated from these
    /// definitions; `FIELDAGENT_BLESS=1 cargo test completions` writes them again.
    #[test]
    fn completions_match_the_cli() {
        use clap_complete::Shell;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/completions");
        for (shell, file) in [
            (Shell::Bash, "fieldagent.bash"),
            (Shell::Zsh, "_fieldagent"),
            (Shell::Fish, "fieldagent.fish"),
        ] {
            let mut rendered = Vec::new();
            clap_complete::generate(
                shell,
                &mut super::Cli::command(),
                "fieldagent",
                &mut rendered,
            );
            let path = dir.join(file);
            if std::env::var_os("FIELDAGENT_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &rendered).unwrap();
            }
            let shipped = std::fs::read(&path).unwrap_or_default();
            assert!(
                shipped == rendered,
                "{} is out of date; run FIELDAGENT_BLESS=1 cargo test completions",
                path.display()
            );
        }
    }

    /// The man page shipped in the .deb (packaging/fieldagent.1) is rendered from these
    /// definitions; `FIELDAGENT_BLESS=1 cargo test man_page` writes it again after a change.
    #[test]
    fn man_page_matches_the_cli() {
        let rendered = man_page();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/fieldagent.1");
        if std::env::var_os("FIELDAGENT_BLESS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let shipped = std::fs::read(&path).unwrap_or_default();
        assert!(
            shipped == rendered,
            "packaging/fieldagent.1 is out of date; run FIELDAGENT_BLESS=1 cargo test man_page"
        );
    }
}
