//! Paho alone, for `bench/run`'s floor figures: the Paho C library (this repository's build of
//! it) publishing one telemetry-sized message a second over mutual TLS, as the agent does, with
//! nothing else: no sensors, no event loop, no store.
//!
//!   bare_paho HOST PORT CA CERT KEY CLIENT_ID BYTES [COUNT]
//!
//! The connection is the agent's: MQTT 3.1.1, a persistent session (clean_session false), a
//! retained QoS 1 will, keepalive 30 s (the agent announces half of its default 60), TLS 1.2 or
//! later with the client certificate. It publishes BYTES bytes at QoS 0 on
//! `devices/CLIENT_ID/telemetry` once a second until killed.
//!
//! With COUNT, it publishes COUNT messages of BYTES bytes at QoS 0 on `bench/rate` as fast as
//! Paho takes them (at most 64 not yet written, as the agent's publish path keeps), then
//! disconnects: `bench/run`'s floor for the QoS 0 throughput of the agent's publish path.

use std::time::{Duration, Instant};

use paho_mqtt as paho;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (host, port, ca, cert, key, id, bytes, count) = match args.as_slice() {
        [host, port, ca, cert, key, id, bytes] => (host, port, ca, cert, key, id, bytes, None),
        [host, port, ca, cert, key, id, bytes, count] => {
            let count: usize = count.parse().expect("COUNT is a number");
            (host, port, ca, cert, key, id, bytes, Some(count))
        }
        _ => panic!("usage: bare_paho HOST PORT CA CERT KEY CLIENT_ID BYTES [COUNT]"),
    };
    let bytes: usize = bytes.parse().expect("BYTES is a number");
    let create = paho::CreateOptionsBuilder::new()
        .server_uri(format!("ssl://{host}:{port}"))
        .client_id(id)
        .persistence(paho::PersistenceType::None)
        .finalize();
    let client = paho::AsyncClient::new(create).expect("client");
    let ssl = paho::SslOptionsBuilder::new()
        .trust_store(ca)
        .expect("CA")
        .key_store(cert)
        .expect("certificate")
        .private_key(key)
        .expect("key")
        .ssl_version(paho::SslVersion::Tls_1_2)
        .verify(true)
        .enable_server_cert_auth(true)
        .finalize();
    let topic = format!("devices/{id}/telemetry");
    let will = paho::Message::new_retained(format!("devices/{id}/status"), "{\"online\":false}", 1);
    let connect = paho::ConnectOptionsBuilder::new_v3()
        .ssl_options(ssl)
        .clean_session(false)
        .keep_alive_interval(Duration::from_secs(30))
        .will_message(will)
        .finalize();
    client.connect(connect).wait().expect("connect");
    let payload = vec![b'x'; bytes];
    if let Some(count) = count {
        let mut tokens = std::collections::VecDeque::with_capacity(64);
        for _ in 0..count {
            if tokens.len() == 64 {
                let token: paho::DeliveryToken = tokens.pop_front().expect("full");
                token.wait().expect("written");
            }
            tokens.push_back(client.publish(paho::Message::new(
                "bench/rate",
                payload.as_slice(),
                0,
            )));
        }
        for token in tokens {
            token.wait().expect("written");
        }
        // Let Paho write out what it holds before disconnecting.
        std::thread::sleep(Duration::from_millis(500));
        client.disconnect(None).wait().expect("disconnect");
        return;
    }
    let mut next = Instant::now();
    loop {
        // As the agent does: hand the message to Paho and go on (QoS 0 has nothing to wait for).
        drop(client.publish(paho::Message::new(&topic, payload.as_slice(), 0)));
        next += Duration::from_secs(1);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
