//! fieldagent: a device agent for industrial Linux boards.
//!
//! It reads sensors (sysfs hwmon, thermal zones, IIO, plain files, I2C chips, system metrics) and
//! turns readings into telemetry and alerts. Everything is a library so tests can drive it;
//! `main.rs` only parses the command line and maps results to exit codes.
//!
//! Layout:
//! - `cli`: clap definitions of the command line.
//! - `config`: typed config structs, YAML loading with key paths and positions, validation.
//! - `certs`: probing the TLS files the config points at.
//! - `identity`: the client ID from certificate CN, board serial or MAC.
//! - `sensors`: the `Source` kinds and the `Sensors` set that reads them all.
//! - `i2c`: the `I2cBus` trait, `/dev/i2c-N` through ioctls, and the chip drivers.
//! - `modbus`: Modbus TCP and RTU lines, one thread each, and the coalescing of requests.
//! - `gpio`: GPIO lines through the character device, shared per process; edge watching.
//! - `actuators`: what a command may set (a file, a GPIO output, a Modbus coil or register).
//! - `model`: plain data shared by all, such as `Sample`.
//! - `offline`: the `check`, `identity` and `read` commands.
//! - `outbox`: the durable, bounded queue of QoS >= 1 messages in `state_dir`.
//! - `daemon`: the event loop and the parts around it (sampler, store, commands, connects);
//!   `mqtt`: the Paho session and backoff; `telemetry`: payloads; `service`: signals and logging.

#![deny(unsafe_code)]

pub mod actuators;
pub mod alerts;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dedupe;
pub mod gpio;
pub mod health;
pub mod i2c;
pub mod identity;
pub mod local_status;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod offline;
pub mod outbox;
pub mod probe;
pub mod sensors;
pub mod service;
pub mod sparkplug;
pub mod state;
pub mod sync;
pub mod telemetry;
