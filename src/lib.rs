//! fieldagent: a device agent for industrial Linux boards.
//!
//! It reads sensors (sysfs hwmon, thermal zones, IIO, plain files, I2C chips, system metrics) and
//! turns readings into telemetry and alerts. Everything is a library so tests can drive it;
//! `main.rs` only parses the command line and maps results to exit codes.
//!
//! Layout, from the edges in (`main` -> `cli` or `daemon` -> the rest):
//! - `cli`: the command line (clap) and every command but `run`: `check`, `check --connect`,
//!   `identity`, `read`, `status`.
//! - `daemon`: `run`, the event loop and the parts around it (sampler, store, the actuator
//!   executor, connects, reloads, the two modes).
//! - `error`: the error of every command, which `main` maps to an exit code.
//! - `admission`: what a config must pass before it is used (certificates, identity); start-up,
//!   reloads and `check --connect` share it.
//! - `config`: typed config structs, YAML loading with key paths and positions, drop-ins,
//!   validation, the loader that reports warnings.
//! - `keys`: the device key wherever it lives (a file, a TPM, a PKCS#11 token): made on the
//!   board, requests made with it, loaded for the connection.
//! - `certs`: probing the TLS files the config points at. `identity`: the client ID from the
//!   certificate's CN, the board serial or a MAC.
//! - `sensors`: the `Source` kinds, the `Sensors` set that reads them, what is known stuck.
//!   `i2c`, `modbus`, `gpio`: the buses they read. `actuators`: what a command may set.
//! - `alerts`: the rules as state machines (pure). `commands`: a command parsed and its answer
//!   (pure). `dedupe`: the ledger of executed command ids.
//! - `mqtt`: the Paho session, the TLS floor and diagnosis, backoff. `sparkplug`: the Sparkplug
//!   B codec (pure). `telemetry`: the plain payloads. `health`: the health payload.
//! - `operations`: remote operations as data (requests, states, the engine's record) and the
//!   files the agent and its privileged helper speak through; pure.
//! - `outbox`: the durable, bounded queue of QoS >= 1 messages in `state_dir`. `state`: small
//!   state files written atomically. `local_status`: `state_dir/status.json`.
//! - `signed`: signed requests (JWS, EdDSA), checked before a command or operation is parsed;
//!   pure.
//! - `model`: plain data shared by all, such as `Sample`. `clock`: whether the wall clock can be
//!   believed, and the monotonic one. `service`: signals, systemd notifications, logging.
//!   `sync`: the one way to take a lock.

#![deny(unsafe_code)]

/// The version this agent says it is (Cargo.toml's, unless the build set `FIELDAGENT_VERSION`).
pub const VERSION: &str = env!("FIELDAGENT_VERSION");

pub mod actuators;
pub mod admission;
pub mod alerts;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dedupe;
pub mod error;
pub mod gpio;
pub mod health;
pub mod helper;
pub mod i2c;
pub mod identity;
pub mod keys;
pub mod local_status;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod operations;
pub mod outbox;
pub mod sensors;
pub mod service;
pub mod signed;
pub mod sparkplug;
pub mod state;
pub mod sync;
pub mod telemetry;
