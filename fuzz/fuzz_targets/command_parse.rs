//! Any payload on any command topic: a command or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let actuators: Vec<fieldagent::config::ActuatorConfig> = serde_yaml::from_str(
        "- { name: fan, file: /nonexistent/fan, values: [\"0\", \"1\"] }\n",
    )
    .unwrap();
    let (name, payload) = match data.split_first() {
        Some((&selector, rest)) => (["fan", "ping", "read", "other"][usize::from(selector % 4)], rest),
        None => ("fan", data),
    };
    if let Ok(command) = fieldagent::commands::parse(name, payload, &actuators) {
        let _ = format!("{command:?}");
    }
});
