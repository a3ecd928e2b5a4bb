//! What checking one signed request costs (`bench/signed` runs it natively and under qemu-user):
//! a command signed with Ed25519 as `fieldagent sign` makes it, opened by the agent's verifier
//! (base64url, the JSON header and payload, the signature, topic and age) N times; prints the
//! median and the 99th percentile of single calls, and the mean over all, in microseconds.

use std::time::Instant;

use fieldagent::signed::{open, sign, Keys, Now};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let key = openssl::pkey::PKey::generate_ed25519().expect("an Ed25519 key");
    let public = key.public_key_to_pem().expect("its public half");
    let keys = Keys::from_pems(&[("ops-1", public.as_slice())]).expect("the key loads");
    let topic = "devices/press-07/commands/status_led";
    let now_ms = 1_800_000_000_000;
    let token = sign(&key, "ops-1", r#"{"id":"c-17","value":"1"}"#, topic, now_ms).expect("signed");
    let now = Now {
        ms: now_ms,
        synced: true,
        max_age_ms: 300_000,
    };
    // Warm up (OpenSSL's lazy initialisation, the caches).
    for _ in 0..50 {
        open(token.as_bytes(), topic, &keys, now).expect("opens");
    }
    let mut each = Vec::with_capacity(rounds);
    let all = Instant::now();
    for _ in 0..rounds {
        let started = Instant::now();
        let opened = open(token.as_bytes(), topic, &keys, now).expect("opens");
        each.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(opened);
    }
    let mean = all.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    each.sort_by(|a, b| a.total_cmp(b));
    let median = each[each.len() / 2];
    let p99 = each[(each.len() * 99 / 100).min(each.len() - 1)];
    println!(
        "{} bytes token, {rounds} rounds: median {median:.1} µs, p99 {p99:.1} µs, mean {mean:.1} µs",
        token.len()
    );
}
