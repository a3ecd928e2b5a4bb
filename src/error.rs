//! The error of every subcommand, which `main` maps to an exit code: 78 for a config, certificate
//! or identity error, 1 for anything else. The commands (`cli`) and the daemon (`daemon`) both
//! return it; it names no part of either.

use crate::config::ConfigError;
use crate::identity::IdentityError;

/// What can end a subcommand of the binary, `run` included. Config and identity errors are config
/// errors (exit 78); `main` prints the cause chain on one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    TlsFloor(#[from] crate::mqtt::tls::FloorError),
    #[error("broker.tls.min_version does not hold: {0}; refusing to run below the floor")]
    TlsFloorIgnored(String),
    #[error(transparent)]
    Status(#[from] crate::local_status::ReadError),
    /// `sign` cannot make the token (its key, its request).
    #[error("{0}")]
    Sign(String),
    /// A `cert` command cannot do what it was asked (the key, the request).
    #[error("{0}")]
    Cert(String),
}

impl Error {
    /// True when the cause is the config or what it points at, which exits 78 (EX_CONFIG).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_) | Error::Identity(_))
    }
}
