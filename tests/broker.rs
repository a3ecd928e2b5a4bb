//! A real mosquitto on a free loopback port with throwaway TLS and client certificates, and a
//! real subscriber (mosquitto_sub) that records what arrives. Both are stopped by PID on drop.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

use crate::util::TestDir;

/// A CA, a server certificate for 127.0.0.1, and client certificates signed by the CA.
pub struct BrokerPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The CA its clients verify the broker with: `ca`, or the fleet CA for a second one.
    server_ca: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// Where a test's client connects: a broker's listener.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub port: u16,
    pub mqtt5: bool,
    pub strict_sni: bool,
}

impl From<&Broker> for Endpoint {
    fn from(broker: &Broker) -> Endpoint {
        Endpoint {
            port: broker.port,
            mqtt5: broker.mqtt5,
            strict_sni: broker.strict_sni,
        }
    }
}

impl BrokerPki {
    pub fn new(dir: &TestDir) -> BrokerPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "fieldagent test broker CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = dir.write("broker/ca.pem", ca_cert.pem());
        let pki = BrokerPki {
            dir: dir.path().join("broker"),
            server_ca: ca.clone(),
            ca,
            ca_cert,
            ca_key,
        };
        pki.issue("server", "127.0.0.1", true);
        pki
    }

    /// A client certificate for the PKCS#10 request in `csr` (PEM): its subject and public key,
    /// signed by this CA (serial `serial`, valid from an hour ago for two days), as PEM. What a
    /// fleet's CA does with a request a device made.
    pub fn sign_request(&self, csr: &[u8], serial: u32) -> Vec<u8> {
        use openssl::asn1::{Asn1Integer, Asn1Time};
        use openssl::bn::BigNum;
        use openssl::x509::extension::ExtendedKeyUsage;
        use openssl::x509::{X509Builder, X509Req, X509};
        let request = X509Req::from_pem(csr).unwrap();
        let public = request.public_key().unwrap();
        assert!(
            request.verify(&public).unwrap(),
            "the request is not signed by its key"
        );
        let ca = X509::from_pem(self.ca_cert.pem().as_bytes()).unwrap();
        let ca_key =
            openssl::pkey::PKey::private_key_from_pem(self.ca_key.serialize_pem().as_bytes())
                .unwrap();
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        let serial = Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(request.subject_name()).unwrap();
        builder.set_issuer_name(ca.subject_name()).unwrap();
        builder.set_pubkey(&public).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        builder
            .set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::from_unix(now + 2 * 86_400).unwrap())
            .unwrap();
        builder
            .append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
            .unwrap();
        builder
            .sign(&ca_key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        builder.build().to_pem().unwrap()
    }

    /// A second CA, `name`, in its own directory under `dir`: the broker trusts it for another
    /// listener (services, operators); its clients verify the broker with `fleet`'s CA.
    pub fn second(dir: &TestDir, name: &str, fleet: &BrokerPki) -> BrokerPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fieldagent test {name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = dir.write(&format!("{name}/ca.pem"), ca_cert.pem());
        BrokerPki {
            dir: dir.path().join(name),
            ca,
            server_ca: fleet.ca.clone(),
            ca_cert,
            ca_key,
        }
    }

    /// A mosquitto client program (`mosquitto_sub`, `mosquitto_pub`) connected to `broker` with
    /// mutual TLS as the client `name`.
    pub fn client(&self, program: &str, broker: impl Into<Endpoint>, name: &str) -> Command {
        self.client_cn(program, broker, name, name)
    }

    /// As `client`, with the certificate files named `file` and the CN `cn` (so a test can act
    /// as a device without replacing the running agent's certificate).
    pub fn client_cn(
        &self,
        program: &str,
        broker: impl Into<Endpoint>,
        file: &str,
        cn: &str,
    ) -> Command {
        let broker: Endpoint = broker.into();
        let (cert, key) = self.issue(file, cn, false);
        // Line-buffered stdout (stdbuf execs the program, so the PID is its own): a reader sees
        // each line, messages and `-d` protocol lines alike, when it is printed.
        let host = if broker.strict_sni {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let mut command = Command::new("stdbuf");
        command
            .args(["-oL", program])
            .args(["-h", host, "-p", &broker.port.to_string()]);
        if broker.strict_sni {
            command.arg("--insecure");
        }
        if broker.mqtt5 {
            command.args(["-V", "mqttv5"]);
        }
        command
            .arg("--cafile")
            .arg(&self.server_ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key);
        command
    }

    /// The broker's certificate again, for these IP addresses (the system test's guest reaches
    /// the broker at another address than 127.0.0.1).
    #[allow(dead_code)]
    pub fn issue_server(&self, ips: &[&str]) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, ips[0]);
        params.subject_alt_names = ips
            .iter()
            .map(|ip| SanType::IpAddress(ip.parse().unwrap()))
            .collect();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        std::fs::write(self.dir.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(self.dir.join("server.key"), key.serialize_pem()).unwrap();
    }

    /// Writes `<name>.crt` and `<name>.key` for subject CN `cn`; returns (cert, key).
    pub fn issue(&self, name: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        self.issue_valid(name, cn, server, 365)
    }

    /// As `issue`, valid until `not_after_days` from now (negative: already expired).
    pub fn issue_valid(
        &self,
        name: &str,
        cn: &str,
        server: bool,
        not_after_days: i64,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now + time::Duration::days(not_after_days);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        }
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert_path, key_path)
    }
}

/// A running broker (mosquitto, or another implementation from `interop`); killed by PID when
/// dropped.
pub struct Broker {
    pub port: u16,
    child: Child,
    log: PathBuf,
    /// The test's clients (mosquitto_sub, mosquitto_pub) speak MQTT 5 to it.
    pub mqtt5: bool,
    /// It refuses an IP literal in SNI (RFC 6066), which libmosquitto sends: the test's clients
    /// reach it as `localhost` and skip the host name check (the agent connects by address).
    pub strict_sni: bool,
}

/// A port nothing listens on, never the same twice in this test run (tests run in parallel, and
/// a port is free only until a broker binds it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Ways to start a broker other than the default.
#[derive(Default)]
pub struct BrokerOptions<'a> {
    /// Lines appended to the listener's config.
    pub extra: &'a str,
    /// Environment of the mosquitto process (e.g. an OPENSSL_CONF that caps its TLS version).
    pub env: &'a [(&'a str, &'a str)],
    /// The port to listen on; a free one when unset (a restarted broker takes its old port).
    pub port: Option<u16>,
    /// Replaces `use_identity_as_username true` (e.g. to check passwords instead).
    pub no_identity_as_username: bool,
}

impl Broker {
    /// Starts mosquitto with a TLS listener that requires client certificates and takes the
    /// certificate CN as the user name.
    pub fn start(pki: &BrokerPki) -> Broker {
        Broker::start_with(pki, BrokerOptions::default())
    }

    pub fn start_with(pki: &BrokerPki, options: BrokerOptions) -> Broker {
        let port = options.port.unwrap_or_else(free_port);
        let dir = &pki.dir;
        let log = Broker::log_path(pki, port);
        let identity = if options.no_identity_as_username {
            ""
        } else {
            "use_identity_as_username true\n"
        };
        let config = format!(
            "user root\nset_tcp_nodelay true\npersistence false\nlog_dest file {log}\nlog_type all\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\n\
             require_certificate true\n{identity}{extra}\n",
            log = log.display(),
            ca = pki.ca.display(),
            dir = dir.display(),
            extra = options.extra,
        );
        Broker::spawn(pki, port, &config, options.env)
    }

    /// Starts mosquitto on `port` with `config` as it is (it must log to `broker_log(port)`).
    pub fn spawn(pki: &BrokerPki, port: u16, config: &str, env: &[(&str, &str)]) -> Broker {
        let dir = &pki.dir;
        let log = Broker::log_path(pki, port);
        let config_path = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new("mosquitto");
        command
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .expect("mosquitto is installed (scripts/test installs it)");
        Broker::listening(port, child, log, false, false)
    }

    /// A broker process `child` (another implementation than mosquitto) once it listens on
    /// `port`; it logs to `log`.
    pub fn listening(
        port: u16,
        child: Child,
        log: PathBuf,
        mqtt5: bool,
        strict_sni: bool,
    ) -> Broker {
        let broker = Broker {
            port,
            child,
            log,
            mqtt5,
            strict_sni,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {port}: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// Where the broker on `port` logs.
    pub fn log_path(pki: &BrokerPki, port: u16) -> PathBuf {
        pki.dir.join(format!("mosquitto-{port}.log"))
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops this broker and starts a new one on the same port, as a broker restart does (the
    /// new one has no retained messages: persistence is off).
    pub fn restart(self, pki: &BrokerPki) -> Broker {
        self.restart_after(pki, Duration::from_millis(300))
    }

    /// As `restart`, with the broker gone for `down`.
    pub fn restart_after(self, pki: &BrokerPki, down: Duration) -> Broker {
        let port = self.port;
        drop(self);
        std::thread::sleep(down);
        Broker::start_with(
            pki,
            BrokerOptions {
                port: Some(port),
                ..BrokerOptions::default()
            },
        )
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many TCP connections the broker has accepted.
    pub fn connections(&self) -> usize {
        self.log().matches("New connection from").count()
    }

    /// How many times the broker accepted `client_id`.
    pub fn sessions(&self, client_id: &str) -> usize {
        self.log().matches(&format!(" as {client_id} (")).count()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as mosquitto_sub printed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retained: bool,
    /// The QoS it arrived at: the lower of the publisher's and the subscription's.
    pub qos: u8,
    pub payload: String,
}

/// A mosquitto_sub on `topic`; killed by PID when dropped.
pub struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<Received>,
}

impl Subscriber {
    pub fn start(broker: impl Into<Endpoint>, pki: &BrokerPki, topic: &str) -> Subscriber {
        Subscriber::start_qos(broker, pki, topic, 1)
    }

    pub fn start_qos(
        broker: impl Into<Endpoint>,
        pki: &BrokerPki,
        topic: &str,
        qos: u8,
    ) -> Subscriber {
        Subscriber::start_as(broker, pki, topic, qos, "observer")
    }

    /// As `start_qos`, as the client `name` (its certificate CN).
    pub fn start_as(
        broker: impl Into<Endpoint>,
        pki: &BrokerPki,
        topic: &str,
        qos: u8,
        name: &str,
    ) -> Subscriber {
        Subscriber::start_format(broker, pki, topic, qos, name, "%r %q %t %p")
    }

    /// For binary payloads (Sparkplug B): each payload arrives as hex.
    pub fn start_hex(broker: impl Into<Endpoint>, pki: &BrokerPki, topic: &str) -> Subscriber {
        Subscriber::start_hex_as(broker, pki, topic, "observer")
    }

    /// As `start_hex`, as the client `name` (its certificate CN).
    pub fn start_hex_as(
        broker: impl Into<Endpoint>,
        pki: &BrokerPki,
        topic: &str,
        name: &str,
    ) -> Subscriber {
        Subscriber::start_format(broker, pki, topic, 1, name, "%r %q %t %x")
    }

    fn start_format(
        broker: impl Into<Endpoint>,
        pki: &BrokerPki,
        topic: &str,
        qos: u8,
        name: &str,
        format: &str,
    ) -> Subscriber {
        // `-d` prints the protocol exchange on stdout too: its SUBACK line says the subscription
        // stands, so no message published after `start` returns can be missed. Messages are the
        // lines that begin with the retain flag (`%r`: 0 or 1) and the QoS; the debug lines begin
        // with words.
        let mut child = pki
            .client("mosquitto_sub", broker, name)
            .args(["-d", "-t", topic, "-q", &qos.to_string(), "-F", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let (subscribed_tx, subscribed) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.splitn(4, ' ');
                let retained = match parts.next() {
                    Some("0") => false,
                    Some("1") => true,
                    _ => {
                        if line.ends_with("received SUBACK") {
                            let _ = subscribed_tx.send(());
                        }
                        continue;
                    }
                };
                let Some(qos) = parts.next().and_then(|q| q.parse().ok()) else {
                    continue;
                };
                let topic = parts.next().unwrap_or_default().to_owned();
                let payload = parts.next().unwrap_or_default().to_owned();
                if tx
                    .send(Received {
                        topic,
                        retained,
                        qos,
                        payload,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        // SUBACK, or the end of its output (it could not connect: the test sees no messages).
        if let Err(mpsc::RecvTimeoutError::Timeout) =
            subscribed.recv_timeout(Duration::from_secs(20))
        {
            panic!("mosquitto_sub on {topic} as {name}: no SUBACK within 20 s");
        }
        Subscriber { child, lines }
    }

    /// The first message, within `timeout`, for which `wanted` holds.
    pub fn wait_for(
        &self,
        timeout: Duration,
        wanted: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(message) if wanted(&message) => return Some(message),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Subscriber {
    /// Every message that arrives until none has for `quiet`, for at most ten times that.
    pub fn collect(&self, quiet: Duration) -> Vec<Received> {
        let deadline = Instant::now() + quiet * 10;
        let mut all = Vec::new();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(quiet) {
                Ok(message) => all.push(message),
                Err(_) => break,
            }
        }
        all
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `payload` on `topic` at QoS 1 as the operator would, with mosquitto_pub.
pub fn publish(broker: &Broker, pki: &BrokerPki, topic: &str, payload: &str) {
    let status = pki
        .client("mosquitto_pub", broker, "operator")
        .args(["-t", topic, "-q", "1", "-m", payload])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub to {topic}");
}
