//! A small MQTT broker for the behaviours mosquitto never shows: a server DISCONNECT with a
//! reason code (EMQX, HiveMQ and AWS IoT Core send them on a takeover or a rolling upgrade), a
//! SUBSCRIBE or a PUBLISH it never answers, a CONNACK that never comes, a PUBLISH far larger than
//! the client announced it takes. It speaks MQTT 3.1.1 and 5 over TLS with client certificates
//! (the test PKI's server certificate), one thread per connection, and records what it saw.
//!
//! Everything else the agent does is tested against real brokers; this one only misbehaves on
//! purpose. It stops (listener and connections) when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream, SslVerifyMode};

use crate::broker::BrokerPki;

/// What the broker does on one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Answers as a broker does: CONNACK, SUBACK, PUBACK, PINGRESP.
    Normal,
    /// Normal, then `after` the CONNACK a DISCONNECT with `reason` (MQTT 5; over 3.1.1 the
    /// socket is closed) and the connection closed, as a broker does on a session takeover.
    DisconnectAfter { after: Duration, reason: u8 },
    /// Never answers a SUBSCRIBE (everything else normal).
    NoSuback,
    /// Never answers a QoS 1 PUBLISH on a topic ending in `/status` (the online status).
    NoStatusPuback,
    /// Completes TLS and reads the CONNECT, never sends a CONNACK.
    NoConnack,
    /// Normal, and after the SUBSCRIBE a QoS 0 PUBLISH of `size` bytes on the subscribed filter's
    /// topic (its `+` replaced by `big`).
    HugePublish { size: usize },
    /// Normal, and after the SUBSCRIBE `count` QoS 0 PUBLISHes on `stray/topic`, which nobody
    /// subscribed to (a bridge that maps topics does this).
    Stray { count: usize },
}

/// What the broker saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub client_id: String,
    /// 4 for 3.1.1, 5 for 5.
    pub level: u8,
    /// The CONNECT's Maximum Packet Size property (MQTT 5), if any.
    pub max_packet_size: Option<u32>,
    pub subscribes: Vec<String>,
    /// (topic, payload) of each PUBLISH from the client.
    pub publishes: Vec<(String, Vec<u8>)>,
    pub pings: usize,
    /// The client sent DISCONNECT.
    pub disconnected: bool,
}

pub struct FakeBroker {
    pub port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeBroker {
    /// Listens on a free loopback port. Connection `n` (from 0, counting every TCP connection,
    /// the agent's TLS diagnosis handshakes too) behaves as `script[n]`; the last entry goes on
    /// for every later one.
    pub fn start(pki: &BrokerPki, script: Vec<Behaviour>) -> FakeBroker {
        assert!(!script.is_empty());
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor
            .set_certificate_chain_file(pki.dir.join("server.crt"))
            .unwrap();
        acceptor
            .set_private_key_file(pki.dir.join("server.key"), SslFiletype::PEM)
            .unwrap();
        acceptor.set_ca_file(&pki.ca).unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let accept = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut number = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let behaviour = script[number.min(script.len() - 1)].clone();
                            let index = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen::default());
                                seen.len() - 1
                            };
                            number += 1;
                            let acceptor = Arc::clone(&acceptor);
                            let stop = Arc::clone(&stop);
                            let seen = Arc::clone(&seen);
                            std::thread::spawn(move || {
                                stream.set_nonblocking(false).unwrap();
                                if let Ok(tls) = acceptor.accept(stream) {
                                    serve(tls, behaviour, &stop, &seen, index);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        FakeBroker {
            port,
            stop,
            seen,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// Every MQTT connection so far (connections that sent no CONNECT, such as the agent's
    /// own TLS diagnosis handshakes, are left out).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| seen.level > 0)
            .cloned()
            .collect()
    }

    /// Waits until `check` holds for what was seen.
    pub fn wait_for(&self, within: Duration, check: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check(&self.seen()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        check(&self.seen())
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One packet: the first byte and the rest.
struct Packet {
    header: u8,
    body: Vec<u8>,
}

/// Reads one packet, or `None` when the connection ended or the broker stops. Waits in short
/// slices so `deadline` (a scripted DISCONNECT) and the stop flag are seen in time.
fn read_packet(
    tls: &mut SslStream<TcpStream>,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> Result<Option<Packet>, ()> {
    let mut first = [0u8; 1];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(());
        }
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Ok(None);
        }
        match tls.read(&mut first) {
            Ok(0) => return Err(()),
            Ok(_) => break,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return Err(()),
        }
    }
    let mut length = 0usize;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        read_exact(tls, &mut byte, stop)?;
        length |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(());
        }
    }
    let mut body = vec![0u8; length];
    read_exact(tls, &mut body, stop)?;
    Ok(Some(Packet {
        header: first[0],
        body,
    }))
}

fn read_exact(
    tls: &mut SslStream<TcpStream>,
    mut buf: &mut [u8],
    stop: &AtomicBool,
) -> Result<(), ()> {
    while !buf.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Err(());
        }
        match tls.read(buf) {
            Ok(0) => return Err(()),
            Ok(n) => buf = &mut buf[n..],
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

fn encode_length(mut length: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    encode_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A variable byte integer at `at`; returns (value, bytes used).
fn varint(bytes: &[u8], at: usize) -> (usize, usize) {
    let mut value = 0usize;
    let mut used = 0;
    while let Some(byte) = bytes.get(at + used) {
        value |= usize::from(byte & 0x7f) << (7 * used);
        used += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    (value, used)
}

fn string(bytes: &[u8], at: usize) -> (String, usize) {
    let length = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
    (
        String::from_utf8_lossy(&bytes[at + 2..at + 2 + length]).into_owned(),
        at + 2 + length,
    )
}

/// The Maximum Packet Size (0x27) among MQTT 5 properties.
fn max_packet_size(properties: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at < properties.len() {
        let id = properties[at];
        at += 1;
        let width = match id {
            0x11 | 0x27 => 4,
            0x21 | 0x22 => 2,
            0x17 | 0x19 => 1,
            0x15 | 0x16 => {
                let length = usize::from(u16::from_be_bytes([properties[at], properties[at + 1]]));
                2 + length
            }
            0x26 => {
                let (_, end) = string(properties, at);
                let (_, end) = string(properties, end);
                end - at
            }
            _ => return None,
        };
        if id == 0x27 {
            return Some(u32::from_be_bytes(
                properties[at..at + 4].try_into().unwrap(),
            ));
        }
        at += width;
    }
    None
}

fn serve(
    mut tls: SslStream<TcpStream>,
    behaviour: Behaviour,
    stop: &AtomicBool,
    seen: &Mutex<Vec<Seen>>,
    index: usize,
) {
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let record = |change: &dyn Fn(&mut Seen)| change(&mut seen.lock().unwrap()[index]);
    // CONNECT.
    let Ok(Some(connect)) = read_packet(&mut tls, stop, None) else {
        return;
    };
    if connect.header >> 4 != 1 {
        return;
    }
    let body = &connect.body;
    let (_, at) = string(body, 0);
    let level = body[at];
    let mut at = at + 4; // level, flags, keepalive
    let mut max_size = None;
    if level == 5 {
        let (length, used) = varint(body, at);
        max_size = max_packet_size(&body[at + used..at + used + length]);
        at += used + length;
    }
    let (client_id, _) = string(body, at);
    record(&|s| {
        s.client_id = client_id.clone();
        s.level = level;
        s.max_packet_size = max_size;
    });
    let v5 = level == 5;
    if behaviour == Behaviour::NoConnack {
        while read_packet(&mut tls, stop, None).is_ok() {}
        return;
    }
    let connack = if v5 {
        packet(0x20, &[0, 0, 0])
    } else {
        packet(0x20, &[0, 0])
    };
    if tls.write_all(&connack).is_err() {
        return;
    }
    let deadline = match &behaviour {
        Behaviour::DisconnectAfter { after, .. } => Some(Instant::now() + *after),
        _ => None,
    };
    loop {
        let packet_in = match read_packet(&mut tls, stop, deadline) {
            Ok(Some(packet_in)) => packet_in,
            Ok(None) => {
                // The scripted DISCONNECT.
                if let Behaviour::DisconnectAfter { reason, .. } = behaviour {
                    if v5 {
                        let _ = tls.write_all(&packet(0xe0, &[reason, 0]));
                    }
                }
                let _ = tls.shutdown();
                return;
            }
            Err(()) => return,
        };
        let body = &packet_in.body;
        let reply = match packet_in.header >> 4 {
            3 => {
                let qos = (packet_in.header >> 1) & 3;
                let (topic, mut at) = string(body, 0);
                let id = if qos > 0 {
                    let id = [body[at], body[at + 1]];
                    at += 2;
                    Some(id)
                } else {
                    None
                };
                if v5 {
                    let (length, used) = varint(body, at);
                    at += used + length;
                }
                let payload = body[at..].to_vec();
                let quiet = behaviour == Behaviour::NoStatusPuback && topic.ends_with("/status");
                record(&|s| s.publishes.push((topic.clone(), payload.clone())));
                match id {
                    Some(id) if !quiet => Some(packet(0x40, &id)),
                    _ => None,
                }
            }
            8 => {
                let id = [body[0], body[1]];
                let mut at = 2;
                if v5 {
                    let (length, used) = varint(body, at);
                    at += used + length;
                }
                let mut filters = Vec::new();
                while at < body.len() {
                    let (filter, end) = string(body, at);
                    filters.push(filter);
                    at = end + 1;
                }
                record(&|s| s.subscribes.extend(filters.iter().cloned()));
                if behaviour == Behaviour::NoSuback {
                    None
                } else {
                    let mut ack = id.to_vec();
                    if v5 {
                        ack.push(0);
                    }
                    ack.extend(filters.iter().map(|_| 1u8));
                    let mut out = packet(0x90, &ack);
                    if let Behaviour::Stray { count } = behaviour {
                        let topic = "stray/topic";
                        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
                        body.extend_from_slice(topic.as_bytes());
                        if v5 {
                            body.push(0);
                        }
                        body.extend_from_slice(b"{}");
                        for _ in 0..count {
                            out.extend(packet(0x30, &body));
                        }
                    }
                    if let Behaviour::HugePublish { size } = behaviour {
                        let topic = filters[0].replace('+', "big");
                        let mut big = Vec::with_capacity(size + topic.len() + 3);
                        big.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                        big.extend_from_slice(topic.as_bytes());
                        if v5 {
                            big.push(0);
                        }
                        big.resize(big.len() + size, b'x');
                        out.extend(packet(0x30, &big));
                    }
                    Some(out)
                }
            }
            12 => {
                record(&|s| s.pings += 1);
                Some(packet(0xd0, &[]))
            }
            14 => {
                record(&|s| s.disconnected = true);
                return;
            }
            _ => None,
        };
        if let Some(reply) = reply {
            if tls.write_all(&reply).is_err() {
                return;
            }
        }
    }
}
