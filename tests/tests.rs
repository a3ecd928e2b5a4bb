//! Integration tests: one binary, one module per area.

mod util;

mod certs;
mod cli;
mod config_errors;
mod identity;
mod sensors;
