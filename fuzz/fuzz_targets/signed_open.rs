//! Any message on a command or operation topic of a device that requires signed requests:
//! accepted or refused with a reason, never a panic (RFC 8037's example key, any bytes).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// RFC 8037 A.1's Ed25519 public key.
const KEY: &[u8] = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

static KEYS: OnceLock<fieldagent::signed::Keys> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(|| fieldagent::signed::Keys::from_pems(&[("rfc8037", KEY)]).unwrap());
    let now = fieldagent::signed::Now {
        ms: 1_800_000_000_000,
        synced: data.first().is_some_and(|b| b & 1 == 0),
        max_age_ms: 300_000,
    };
    match fieldagent::signed::open(data, "devices/node-1/commands/fan", keys, now) {
        Ok(opened) => assert!(serde_json::from_slice::<serde_json::Value>(&opened.payload).is_ok()),
        Err(refused) => assert!(refused.reason.starts_with("refused: ")),
    }
});
