//! Command-line definitions. Parsing only; `main.rs` calls one function per subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Device agent for industrial Linux boards: sensors to MQTT telemetry, alerts and commands.
#[derive(Debug, Parser)]
#[command(name = "fieldagent", version, about)]
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

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run,
    /// Validate the config, certificates, identity and sensors; print every finding; exit 0 or 78.
    Check,
    /// Print the MQTT client ID and which source it came from.
    Identity,
    /// Read every configured sensor once and print a table.
    Read {
        /// Print one JSON object {"values":{…},"errors":{…}} instead of a table.
        #[arg(long)]
        json: bool,
    },
}
