//! Figures of the outbox for `bench/outbox`: the cost of appending an alert (write + fdatasync),
//! disk bytes per queued alert, and the time to open (recover) a store of N queued messages.
//!
//!   outbox_bench DIR [N]
//!
//! DIR should be on the storage to measure (the agent's state_dir). Prints one line of JSON and
//! leaves DIR/outbox.log holding N queued alerts, for an agent to start with.

use std::time::Instant;

use fieldagent::outbox::{Kind, Outbox, FILE};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: outbox_bench DIR [N]"));
    let count: usize = args
        .next()
        .map_or(10_000, |n| n.parse().expect("N is a number"));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join(FILE));

    let (mut outbox, _) = Outbox::open(&dir, count);
    let mut micros = Vec::with_capacity(count);
    for i in 0..count {
        // The size of a real alert payload (an `above` rule on a sensor).
        let payload = format!(
            r#"{{"id":"bench-device:overtemp:{i}","ts":1764143000000,"alert":"overtemp","state":"raised","sensor":"cpu_temp","value":81.25,"threshold":80,"severity":"critical"}}"#
        );
        let start = Instant::now();
        outbox.push(
            Kind::Alert,
            1,
            "devices/bench-device/alerts",
            payload.as_bytes(),
            None,
        );
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    assert!(
        outbox.durable(),
        "the outbox could not write to {}",
        dir.display()
    );
    let file_bytes = std::fs::metadata(dir.join(FILE)).unwrap().len();
    drop(outbox);

    let start = Instant::now();
    let (outbox, recovery) = Outbox::open(&dir, count);
    let open_ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(recovery.recovered, count);
    assert_eq!(outbox.len(), count);
    drop(outbox);

    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        r#"{{"count":{count},"append_us_p50":{:.1},"append_us_p99":{:.1},"append_us_mean":{:.1},"file_bytes":{file_bytes},"bytes_per_alert":{:.1},"open_ms":{open_ms:.1}}}"#,
        at(0.5),
        at(0.99),
        micros.iter().sum::<f64>() / micros.len() as f64,
        file_bytes as f64 / count as f64,
    );
}
