//! Integration tests: one binary, one module per area.

mod broker;
mod fake_broker;
mod util;
mod yocto;

mod alerts;
mod centre;
mod certs;
mod cli;
mod commands;
mod config_errors;
mod copyright;
mod daemon;
mod device_keys;
mod fleet_broker;
mod identity;
mod interop;
mod lifecycle;
mod modbus;
mod operations;
mod operator;
mod outbox;
mod packaging;
mod proxy;
mod reload;
mod remote_config;
mod sensors;
mod service;
mod signed;
mod sparkplug;
