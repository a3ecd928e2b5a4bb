//! The TLS floor, made to hold.
//!
//! Paho C creates its `SSL_CTX` with `TLS_client_method()` and ignores its own `ssl_version`
//! option when built against OpenSSL 1.1 or newer, so that option proves nothing. OpenSSL itself
//! applies the `system_default` section of its config to every new `SSL_CTX`; the agent points
//! `OPENSSL_CONF` at a small config of its own, written to `state_dir` before OpenSSL is first
//! used. It includes the system's config (the one `OPENSSL_CONF` named when the agent started,
//! or OpenSSL's own default), so a distribution's policy still applies, and raises the
//! `MinProtocol` of its `system_default` to `broker.tls.min_version` (never lowering a stricter
//! one: see [`super::openssl_conf`]). Whatever the system's config allows, no handshake below
//! the floor then completes, Paho's included; [`floor_holds`] reads it back from a new context.
//!
//! When a TLS connect fails, [`diagnose`] shakes hands once more on its own, with no floor and
//! without sending anything, only to say in the log which version the broker offered.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode, SslVersion};

use crate::config::{Endpoint, TlsConfig, TlsVersion};

/// The name `OPENSSL_CONF` points at, inside `state_dir`.
const FILE_NAME: &str = "openssl.cnf";

fn openssl_name(version: TlsVersion) -> &'static str {
    match version {
        TlsVersion::V1_2 => "TLSv1.2",
        TlsVersion::V1_3 => "TLSv1.3",
    }
}

pub fn display(version: TlsVersion) -> &'static str {
    match version {
        TlsVersion::V1_2 => "1.2",
        TlsVersion::V1_3 => "1.3",
    }
}

/// Where [`enforce_floor`] put the floor.
#[derive(Debug)]
pub struct Floor {
    /// The config `OPENSSL_CONF` now names.
    pub path: PathBuf,
    /// The system's config it includes; `None` when there is none.
    pub system: Option<PathBuf>,
}

/// Why the floor could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot write the OpenSSL config that enforces broker.tls.min_version into state_dir {}: {source}; the agent needs state_dir writable", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the system's OpenSSL config {}: {source}; the agent includes it so that the system's TLS policy applies (fix it, or start the agent with OPENSSL_CONF naming a readable one)", path.display())]
    System {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes the OpenSSL config for `min` into `dir` (only when it changed: boards have slow flash)
/// and points `OPENSSL_CONF` at it. Must run before anything in the process uses OpenSSL, while
/// the process has one thread.
pub fn enforce_floor(
    min: TlsVersion,
    needs: &super::openssl_conf::KeyNeeds,
    dir: &Path,
) -> Result<Floor, FloorError> {
    let own = dir.join(FILE_NAME);
    let system = system_config(&own);
    let conf = match &system {
        Some(path) => {
            super::openssl_conf::Conf::read(path).map_err(|source| FloorError::System {
                path: path.clone(),
                source,
            })?
        }
        None => super::openssl_conf::Conf::default(),
    };
    // The floor, then what the device key needs (a TPM's provider, a token's engine).
    let lines = format!(
        "{}{}",
        conf.floor_lines(openssl_name(min)),
        conf.key_lines(needs)
    );
    let include = system
        .as_ref()
        .map(|path| format!(".include {}\n", path.display()))
        .unwrap_or_default();
    let text = format!(
        "# Written by fieldagent at start-up: the system's OpenSSL config with the TLS floor of\n\
         # broker.tls.min_version ({}) on top.\n{include}{lines}",
        openssl_name(min)
    );
    write_floor_config(&text, dir).map_err(|source| FloorError::Write {
        dir: dir.to_owned(),
        source,
    })?;
    std::env::set_var("OPENSSL_CONF", &own);
    Ok(Floor { path: own, system })
}

/// The system's OpenSSL config: what `OPENSSL_CONF` names (unless it is the agent's own, from a
/// parent agent), else `openssl.cnf` in OpenSSL's directory; `None` if that file does not exist
/// (OpenSSL then runs on its built-in defaults, and so does the floor's config).
fn system_config(own: &Path) -> Option<PathBuf> {
    let named = std::env::var_os("OPENSSL_CONF")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .filter(|path| path != own);
    let path = named.unwrap_or_else(|| {
        // "OPENSSLDIR: \"/usr/lib/ssl\"" (reading it does not initialise OpenSSL).
        let dir = openssl::version::dir();
        let dir = dir
            .split_once('"')
            .and_then(|(_, rest)| rest.rsplit_once('"'))
            .map_or("/usr/lib/ssl", |(dir, _)| dir);
        Path::new(dir).join("openssl.cnf")
    });
    path.exists().then_some(path)
}

/// The OpenSSL config of [`enforce_floor`], written into `dir` (0700 when made) as a 0600 file.
fn write_floor_config(text: &str, dir: &Path) -> io::Result<()> {
    crate::state::private_dir(dir)?;
    let path = dir.join(FILE_NAME);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        use std::io::Write as _;
        // Exclusively and 0600: a file planted under the temporary name is replaced, never
        // written through.
        let temporary = dir.join(format!("{FILE_NAME}.new"));
        let mut file = crate::state::create_private(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
    }
    Ok(())
}

/// After [`enforce_floor`]: whether OpenSSL really applies the floor, read back from a new
/// client context as Paho's will be (a distribution that ignores `OPENSSL_CONF`, or a config
/// OpenSSL could not read, would leave it at the library's default).
pub fn floor_holds(min: TlsVersion) -> Result<(), String> {
    // A plain SSL_CTX_new(TLS_client_method()), as Paho makes it.
    let mut builder = openssl::ssl::SslContext::builder(SslMethod::tls_client())
        .map_err(|err| format!("cannot make an OpenSSL context: {err}"))?;
    let wanted = match min {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    let rank = |version: Option<SslVersion>| match version {
        Some(v) if v == SslVersion::TLS1_3 => 4,
        Some(v) if v == SslVersion::TLS1_2 => 3,
        Some(v) if v == SslVersion::TLS1_1 => 2,
        Some(v) if v == SslVersion::TLS1 => 1,
        _ => 0,
    };
    let has = builder.min_proto_version();
    if rank(has) >= rank(Some(wanted)) {
        Ok(())
    } else {
        Err(format!(
            "OpenSSL's minimum protocol version is {} after loading {}, not TLS {}",
            has.map_or("the library default".to_owned(), |v| format!("{v:?}")),
            std::env::var("OPENSSL_CONF").unwrap_or_default(),
            display(min)
        ))
    }
}

/// After a failed TLS connect: why, as a sentence for the log, found by shaking hands with the
/// broker at `endpoint` once more on our own (nothing is sent but the handshake). `None` when
/// the TLS layer is fine, so the refusal came from MQTT (user name, password, authorisation).
pub fn diagnose(endpoint: &Endpoint, tls: &TlsConfig, timeout: Duration) -> Option<String> {
    let min = tls.min_version;
    // First the version, with no floor at all.
    // With the same client certificate as the real connect: a broker that requires one would
    // log every diagnosis as a client that presented none.
    let probe = handshake(endpoint, timeout, |builder| {
        builder.set_min_proto_version(Some(SslVersion::TLS1)).ok()?;
        // Security level 0 lets OpenSSL 3 speak TLS 1.0 and 1.1 at all.
        builder.set_security_level(0);
        builder.set_cipher_list("ALL:@SECLEVEL=0").ok()?;
        present_certificate(builder, tls)?;
        builder.set_verify(SslVerifyMode::NONE);
        Some(false)
    });
    // The broker may end this handshake for want of a client certificate; its version is known
    // by then all the same.
    let offered = match probe {
        Ok(version) => version,
        Err(failed) => failed.version?,
    };
    let below = match min {
        TlsVersion::V1_2 => matches!(offered.as_str(), "TLSv1" | "TLSv1.1" | "SSLv3"),
        TlsVersion::V1_3 => offered != "TLSv1.3",
    };
    if below {
        return Some(format!(
            "{} offers {offered} at most; broker.tls.min_version is {}, so the agent refuses it",
            endpoint.url,
            display(min)
        ));
    }
    // Then the agent's own settings: the broker's certificate, our certificate.
    let verified = handshake(endpoint, timeout, |builder| {
        if let Some(ca) = &tls.ca_file {
            builder.set_ca_file(ca).ok()?;
        }
        present_certificate(builder, tls)?;
        builder.set_verify(SslVerifyMode::PEER);
        Some(tls.verify_hostname)
    });
    match verified {
        Ok(_) => None,
        Err(failed) => Some(format!(
            "TLS handshake with {} failed: {}",
            endpoint.url, failed.reason
        )),
    }
}

/// After a connect that got no answer within `timeout` (Paho does not say whether the TCP
/// connect, the TLS handshake or the CONNACK was missing): which step it was, found by doing the
/// first two again on our own. `None` when the handshake failed for another reason, which
/// [`diagnose`] explains.
pub fn missing_step(endpoint: &Endpoint, tls: &TlsConfig, timeout: Duration) -> Option<String> {
    let seconds = timeout.as_secs_f64();
    let address = (endpoint.host.as_str(), endpoint.port);
    let socket = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .ok()?
        .next()?;
    if TcpStream::connect_timeout(&socket, timeout).is_err() {
        return Some(format!(
            "the TCP connect to {} got no answer within {seconds} s (connect_timeout_s): a firewall dropping it, or the broker's listen queue full",
            endpoint.url
        ));
    }
    let handshake = handshake(endpoint, timeout, |builder| {
        if let Some(ca) = &tls.ca_file {
            builder.set_ca_file(ca).ok()?;
        }
        present_certificate(builder, tls)?;
        builder.set_verify(SslVerifyMode::PEER);
        Some(tls.verify_hostname)
    });
    match handshake {
        Ok(_) => Some(format!(
            "no CONNACK within {seconds} s (connect_timeout_s): TCP and TLS to {} succeeded, but the broker did not answer the CONNECT",
            endpoint.url
        )),
        Err(Failed { version: None, .. }) => Some(format!(
            "the TLS handshake with {} did not complete within {seconds} s (connect_timeout_s); TCP connected",
            endpoint.url
        )),
        Err(_) => None,
    }
}

/// The device certificate and key of `tls`, when configured, for a probe handshake.
fn present_certificate(
    builder: &mut openssl::ssl::SslConnectorBuilder,
    tls: &TlsConfig,
) -> Option<()> {
    if let Some(cert) = &tls.cert_file {
        builder.set_certificate_chain_file(cert).ok()?;
    }
    if let Some(key) = &tls.key_file {
        match crate::keys::kind_of(key) {
            crate::keys::KeyKind::File => builder
                .set_private_key_file(key, openssl::ssl::SslFiletype::PEM)
                .ok()?,
            _ => {
                let loaded = crate::keys::load(tls).ok()?;
                builder.set_private_key(&loaded).ok()?
            }
        }
    }
    Some(())
}

/// A TLS alert the broker sent, from OpenSSL's error text (`…:sslv3 alert bad certificate:…`).
fn received_alert(error: &str) -> Option<&str> {
    error
        .split(':')
        .find(|part| part.contains(" alert ") || part.starts_with("alert "))
        .map(str::trim)
}

/// OpenSSL's error in words: when the broker ended the handshake with an alert (it refused our
/// certificate, our protocol version or something else it names), that is what it says.
fn refusal(error: String) -> String {
    match received_alert(&error) {
        Some(alert) => format!("the broker refused the TLS handshake ({alert})"),
        None => error,
    }
}

/// Why a probe handshake failed, with the version the broker had chosen by then, if any.
struct Failed {
    version: Option<String>,
    reason: String,
}

impl<T: ToString> From<T> for Failed {
    fn from(reason: T) -> Failed {
        Failed {
            version: None,
            reason: reason.to_string(),
        }
    }
}

/// One handshake; `setup` adjusts the context and says whether to check the host name. Returns
/// the negotiated version.
fn handshake(
    endpoint: &Endpoint,
    timeout: Duration,
    setup: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder) -> Option<bool>,
) -> Result<String, Failed> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    let verify_hostname = setup(&mut builder).ok_or("cannot set up the probe")?;
    let connector = builder.build();
    let address = (endpoint.host.as_str(), endpoint.port);
    let socket = std::net::ToSocketAddrs::to_socket_addrs(&address)?
        .next()
        .ok_or("no address")?;
    let stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut config = connector.configure()?;
    config.set_verify_hostname(verify_hostname);
    match config.connect(&endpoint.host, stream) {
        Ok(mut tls) => {
            // In TLS 1.3 the server judges our certificate after our side is done; its verdict
            // comes as an alert on the first read. A broker sends nothing unasked, so a quiet
            // read until the timeout means it accepted us.
            let _ = tls
                .get_ref()
                .set_read_timeout(Some(timeout.min(Duration::from_millis(500))));
            let mut byte = [0u8; 1];
            match tls.ssl_read(&mut byte) {
                Err(err) if err.ssl_error().is_some() => Err(Failed {
                    version: Some(tls.ssl().version_str().to_owned()),
                    reason: refusal(err.to_string()),
                }),
                _ => Ok(tls.ssl().version_str().to_owned()),
            }
        }
        Err(HandshakeError::Failure(mid)) => {
            let verify = mid.ssl().verify_result();
            let reason = if verify.as_raw() != 0 {
                format!("the broker's certificate: {}", verify.error_string())
            } else {
                refusal(mid.error().to_string())
            };
            Err(Failed {
                version: Some(mid.ssl().version_str().to_owned()),
                reason,
            })
        }
        Err(err) => Err(err.into()),
    }
}

/// Where Paho reads the device certificate and key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Certificate renewal without downtime. The agent connects with its own copies of the device
/// certificate and key in `state_dir/tls/`; it watches the configured files, and when a renewal
/// tool replaces them it checks the new pair (parses, key matches, valid now, same CN as the
/// running identity) before copying it in and reconnecting once. A bad new pair is reported and
/// the copies, which Paho re-reads at every reconnect, stay as they were.
#[derive(Debug)]
pub struct KeyPairStore {
    source: KeyPairFiles,
    pub files: KeyPairFiles,
    /// Modification time and size of the source files when last looked at.
    seen: Option<[(std::time::SystemTime, u64); 2]>,
}

fn stamp(path: &Path) -> io::Result<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

impl KeyPairStore {
    /// Copies the configured pair into `dir/tls` (mode 0700).
    pub fn new(cert: &Path, key: &Path, dir: &Path) -> io::Result<KeyPairStore> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.join("tls");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let mut store = KeyPairStore {
            source: KeyPairFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            files: KeyPairFiles {
                cert: dir.join("device.crt"),
                // A key in a token is not a file: Paho is given its URI, and only the
                // certificate is copied and watched.
                key: if crate::keys::is_uri(key) {
                    key.to_owned()
                } else {
                    dir.join("device.key")
                },
            },
            seen: None,
        };
        store.accept()?;
        Ok(store)
    }

    fn stamps(&self) -> Option<[(std::time::SystemTime, u64); 2]> {
        let cert = stamp(&self.source.cert).ok()?;
        let key = if crate::keys::is_uri(&self.source.key) {
            cert
        } else {
            stamp(&self.source.key).ok()?
        };
        Some([cert, key])
    }

    /// True when the configured files changed since they were last accepted or refused.
    pub fn changed(&mut self) -> bool {
        let now = self.stamps();
        if now.is_some() && now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }

    /// The configured files, to be checked before [`KeyPairStore::accept`].
    pub fn source(&self) -> &KeyPairFiles {
        &self.source
    }

    /// Copies the configured pair in (the key with mode 0600), each file atomically.
    pub fn accept(&mut self) -> io::Result<()> {
        copy_pair(&self.source, &self.files)?;
        self.seen = self.stamps();
        Ok(())
    }
}

/// Copies a certificate and key pair from `source` to `files`, each file atomically, the key
/// with mode 0600. Blocking: run off the event loop.
pub fn copy_pair(source: &KeyPairFiles, files: &KeyPairFiles) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    for (from, to, mode) in [
        (&source.cert, &files.cert, 0o644),
        (&source.key, &files.key, 0o600),
    ] {
        if crate::keys::is_uri(from) {
            continue;
        }
        let bytes = std::fs::read(from)?;
        let temporary = to.with_extension("new");
        // Created with its mode (the key is never readable by others, not even for a moment)
        // and exclusively: a file or symlink planted under that name is removed, not followed.
        match std::fs::remove_file(&temporary) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{refusal, write_floor_config, KeyPairStore};

    /// Issue 20: a planted `openssl.cnf.new` symlink made the agent overwrite its target.
    #[test]
    fn the_floor_config_is_written_privately_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "kept").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim, state.join("openssl.cnf.new")).unwrap();
        write_floor_config("MinProtocol = TLSv1.3\n", &state).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "kept");
        let path = state.join("openssl.cnf");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("MinProtocol = TLSv1.3"), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// Issue 20: the key copy was written with the default mode and chmod'ed after. It is
    /// created 0600, in a 0700 directory, and a symlink planted at its temporary name is not
    /// followed.
    #[test]
    fn the_key_copy_is_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("device.crt");
        let key = dir.path().join("device.key");
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(state.join("tls")).unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, state.join("tls/device.new")).unwrap();
        let store = KeyPairStore::new(&cert, &key, &state).unwrap();
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.files.key), 0o600);
        assert_eq!(std::fs::read_to_string(&store.files.key).unwrap(), "key");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        let fresh = dir.path().join("fresh-state");
        std::fs::create_dir(&fresh).unwrap();
        KeyPairStore::new(&cert, &key, &fresh).unwrap();
        assert_eq!(mode(&fresh.join("tls")), 0o700);
    }

    #[test]
    fn an_alert_from_the_broker_is_named_as_its_refusal() {
        for (error, expected) in [
            (
                "error:0A000415:SSL routines:ssl3_read_bytes:sslv3 alert certificate expired:../ssl/record/rec_layer_s3.c:1601:SSL alert number 45",
                "the broker refused the TLS handshake (sslv3 alert certificate expired)",
            ),
            (
                "error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../ssl/record/rec_layer_s3.c:1601:SSL alert number 116",
                "the broker refused the TLS handshake (tlsv13 alert certificate required)",
            ),
            (
                "error:0A000126:SSL routines::unexpected eof while reading",
                "error:0A000126:SSL routines::unexpected eof while reading",
            ),
        ] {
            assert_eq!(refusal(error.to_owned()), expected);
        }
    }
}
