//! The agent's publish path at full speed, for `bench/run`'s throughput figures.
//!
//!   publish_rate CONFIG QOS COUNT
//!
//! Connects with CONFIG's broker settings and identity (the agent's `Session`), then publishes
//! COUNT messages of about 200 bytes on `bench/rate`:
//! - QoS 0 the way live telemetry goes: straight to Paho (`Session::publish`);
//! - QoS 1 the way alerts go: each pushed into the outbox in `state_dir` (write + fdatasync)
//!   and drained with a window of 10 in flight, leaving the outbox on PUBACK (the daemon's store
//!   and delivery do the same, on the store's thread and the event loop).
//!
//!
//!   publish_rate CONFIG 1 COUNT backlog
//!
//! queues the COUNT messages in the outbox first and then drains them: the path of a backlog
//! after an outage (the messages are on disk already; sending them costs no fsync).
//!
//! Rates are measured by bench/run at a subscriber; this prints the publisher's own elapsed time.

use std::time::{Duration, Instant};

use fieldagent::mqtt::{Profile, Session};
use fieldagent::outbox::{Kind, Outbox};

/// Messages in flight with their delivery tokens, oldest first.
fn futures_window() -> std::collections::VecDeque<(u64, paho_mqtt::DeliveryToken)> {
    std::collections::VecDeque::with_capacity(10)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: publish_rate CONFIG QOS COUNT [backlog]";
    let path = std::path::PathBuf::from(args.next().expect(usage));
    let qos: u8 = args.next().expect(usage).parse().expect(usage);
    let count: usize = args.next().expect(usage).parse().expect(usage);
    let backlog = args.next().as_deref() == Some("backlog");
    let (config, _) = fieldagent::config::load(&path).expect("config loads");
    let identity = fieldagent::identity::resolve(config.config()).expect("identity");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (events, _events_rx) = tokio::sync::mpsc::channel(4);
        let (incoming, _incoming_rx) = tokio::sync::mpsc::channel(4);
        let session = Session::new(
            &config,
            &identity.client_id,
            events,
            incoming,
            None,
            Profile::Plain,
        )
        .expect("session");
        session.attempt().run().await.expect("connect");
        let payload = |i: usize| {
            format!(
                r#"{{"id":"bench:overtemp:{i}","ts":1764143000000,"alert":"overtemp","state":"raised","sensor":"cpu_temp","value":81.25,"threshold":80,"severity":"critical"}}"#
            )
        };
        let mut start = Instant::now();
        if qos == 0 {
            // As live telemetry goes (`Session::publish`), keeping at most 64 ahead of what Paho
            // has written: Paho C queues at most 100 commands (its max_buffered_messages) and
            // refuses more, so the agent never has more than a window and a sample outstanding.
            let mut tokens = std::collections::VecDeque::with_capacity(64);
            for i in 0..count {
                if tokens.len() == 64 {
                    let token: paho_mqtt::DeliveryToken = tokens.pop_front().expect("full");
                    if let Err(err) = token.await {
                        eprintln!("QoS 0 publish failed: {err}");
                    }
                }
                tokens.push_back(
                    session
                        .publish_tracked("bench/rate", payload(i).into_bytes(), 0)
                        .expect("connected"),
                );
            }
            for token in tokens {
                if let Err(err) = token.await {
                    eprintln!("QoS 0 publish failed: {err}");
                }
            }
        } else {
            let (mut outbox, _) = Outbox::open(&config.config().state_dir, count);
            let mut pushed = 0;
            if backlog {
                while pushed < count {
                    outbox.push(Kind::Alert, qos, "bench/rate", payload(pushed).as_bytes(), None);
                    pushed += 1;
                }
                start = Instant::now();
            }
            let mut delivered = 0;
            let mut inflight = futures_window();
            while delivered < count {
                if pushed < count {
                    outbox.push(Kind::Alert, qos, "bench/rate", payload(pushed).as_bytes(), None);
                    pushed += 1;
                }
                while inflight.len() < 10 {
                    let Some(Ok(message)) = outbox.take_next() else {
                        break;
                    };
                    let token = session
                        .publish_tracked(&message.topic, message.payload, message.qos)
                        .expect("connected");
                    inflight.push_back((message.id, token));
                }
                let must_wait = pushed == count || inflight.len() == 10;
                if must_wait {
                    if let Some((id, token)) = inflight.pop_front() {
                        token.await.expect("delivered");
                        outbox.delivered(id);
                        delivered += 1;
                    }
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Let Paho write out what it holds before disconnecting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        session.closer().disconnect(Duration::from_secs(2)).await;
        println!(
            r#"{{"qos":{qos},"count":{count},"publisher_seconds":{elapsed:.3}}}"#
        );
    });
}
