//! The agent's publish path at full speed, for `bench/run`'s throughput figures.
//!
//!   publish_rate CONFIG QOS COUNT
//!
//! Connects with CONFIG's broker settings and identity (the agent's `Session`), then publishes
//! COUNT messages of about 200 bytes on `bench/rate`:
//! - QoS 0 the way live telemetry goes: straight to Paho (`Session::publish`);
//! - QoS 1 the way alerts go: a producer thread hands the messages over as fast as it can, and
//!   they go into the outbox in `state_dir` the way the daemon's store writes them: every message
//!   that arrived while the last `fdatasync` ran is written and shares the next one (group
//!   commit); only synced messages are sent, with a window of 10 in flight, leaving the outbox on
//!   PUBACK (the daemon does the same on the store's thread and the event loop).
//!
//!   publish_rate CONFIG 1 COUNT single
//!
//! syncs each message alone before sending it: messages that come one at a time, each slower
//! than a sync (the path before group commit).
//!
//!   publish_rate CONFIG 1 COUNT backlog
//!
//! queues the COUNT messages in the outbox first and then drains them: the path of a backlog
//! after an outage (the messages are on disk already; sending them costs no fsync).
//!
//! Rates are measured by bench/run at a subscriber; this prints the publisher's own elapsed time
//! and the number of `fdatasync`s the outbox made.

use std::time::{Duration, Instant};

use fieldagent::mqtt::{Confirmation, Profile, Session};
use fieldagent::outbox::{Kind, Outbox};

/// How long one confirmation may take before the measurement calls it failed.
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: publish_rate CONFIG QOS COUNT [backlog|single]";
    let path = std::path::PathBuf::from(args.next().expect(usage));
    let qos: u8 = args.next().expect(usage).parse().expect(usage);
    let count: usize = args.next().expect(usage).parse().expect(usage);
    let mode = args.next();
    let backlog = mode.as_deref() == Some("backlog");
    let single = mode.as_deref() == Some("single");
    let (config, _) = fieldagent::config::load(&path).expect("config loads");
    let identity = fieldagent::identity::resolve(config.config()).expect("identity");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (events, _events_rx) = tokio::sync::mpsc::channel(4);
        let (incoming, _incoming_rx) = fieldagent::mqtt::incoming_queue();
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
        let mut syncs = 0u64;
        if qos == 0 {
            // As live telemetry goes (`Session::publish`), keeping at most 64 ahead of what Paho
            // has written: Paho C queues at most 100 commands (its max_buffered_messages) and
            // refuses more, so the agent never has more than a window and a sample outstanding.
            let mut tokens = std::collections::VecDeque::with_capacity(64);
            for i in 0..count {
                if tokens.len() == 64 {
                    let token = tokens.pop_front().expect("full");
                    let confirmation = token.await;
                    if confirmation != Confirmation::Delivered {
                        eprintln!("QoS 0 publish failed: {confirmation:?}");
                    }
                }
                tokens.push_back(
                    session
                        .publish_confirmed("bench/rate", payload(i).into_bytes(), 0, WAIT)
                        .expect("connected"),
                );
            }
            for token in tokens {
                let confirmation = token.await;
                if confirmation != Confirmation::Delivered {
                    eprintln!("QoS 0 publish failed: {confirmation:?}");
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
                syncs += 1;
                start = Instant::now();
            }
            // The producer: the sampler handing alert events to the store, as fast as it can.
            let (arrive, arrived) = std::sync::mpsc::channel::<String>();
            let producer = (!backlog).then(|| {
                std::thread::spawn(move || {
                    for i in 0..count {
                        if arrive.send(payload(i)).is_err() {
                            return;
                        }
                    }
                })
            });
            let mut delivered = 0;
            let mut inflight = std::collections::VecDeque::with_capacity(10);
            while delivered < count {
                // The store's turn: what arrived is written, then one fdatasync for it all.
                let mut wrote = false;
                if !backlog {
                    let first = if inflight.is_empty() && pushed < count {
                        arrived.recv().ok()
                    } else {
                        arrived.try_recv().ok()
                    };
                    let mut next = first;
                    while let Some(message) = next {
                        if single {
                            outbox.push(Kind::Alert, qos, "bench/rate", message.as_bytes(), None);
                            syncs += 1;
                        } else {
                            outbox.push_deferred(Kind::Alert, qos, "bench/rate", message.as_bytes(), None);
                            wrote = true;
                        }
                        pushed += 1;
                        next = if single { None } else { arrived.try_recv().ok() };
                    }
                }
                if wrote {
                    outbox.sync();
                    syncs += 1;
                }
                while inflight.len() < 10 {
                    let Some(Ok(message)) = outbox.take_next() else {
                        break;
                    };
                    let token = session
                        .publish_confirmed(&message.topic, message.payload, message.qos, WAIT)
                        .expect("connected");
                    inflight.push_back((message.id, token));
                }
                let must_wait = pushed == count || inflight.len() == 10;
                if must_wait {
                    if let Some((id, token)) = inflight.pop_front() {
                        assert_eq!(token.await, Confirmation::Delivered);
                        outbox.delivered(id);
                        delivered += 1;
                    }
                }
            }
            if let Some(producer) = producer {
                producer.join().expect("producer");
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Let Paho write out what it holds before disconnecting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        session.closer().disconnect(Duration::from_secs(2)).await;
        println!(
            r#"{{"qos":{qos},"count":{count},"publisher_seconds":{elapsed:.3},"fdatasyncs":{syncs}}}"#
        );
    });
}
