//! The MQTT client ID and where it came from.
//!
//! `auto` tries the configured sources in order: the subject CN of the provisioning certificate,
//! the board serial (device tree, then DMI), the MAC address of an interface. A source that has
//! nothing to offer is skipped; a source that offers an ID unfit for topic names is an error, since
//! falling through to another source would give the device a name its certificate does not carry.
//! It never invents a random ID.

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::nid::Nid;
use openssl::x509::X509;

use crate::config::{validate_topic_id, Config, IdentitySource};

/// Longest client ID accepted; it ends up in every topic name.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub origin: Origin,
}

/// Which source gave the client ID, with the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Configured,
    CertificateCn(PathBuf),
    Serial(PathBuf),
    Mac { interface: String, path: PathBuf },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from ", self.client_id)?;
        match &self.origin {
            Origin::Configured => write!(f, "identity.client_id in the config)"),
            Origin::CertificateCn(path) => write!(f, "certificate CN of {})", path.display()),
            Origin::Serial(path) => write!(f, "board serial in {})", path.display()),
            Origin::Mac { interface, path } => {
                write!(f, "MAC address of {interface} in {})", path.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A source gave an ID that cannot be used.
    #[error("client ID from {origin} refused: {reason}")]
    Unfit { origin: String, reason: String },
    #[error("cannot read certificate {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    /// A literal client ID that is not the CN of the device's own certificate.
    #[error("identity.client_id \"{client_id}\" is not the CN \"{cn}\" of {}: the broker binds sessions to the certificate, so this device would take over another's; use client_id: auto, or set identity.match_certificate: false if the broker identifies devices some other way", path.display())]
    NotTheCertificate {
        client_id: String,
        cn: String,
        path: PathBuf,
    },
    /// No source gave anything; each tried source says why.
    #[error("no client ID: {}; set identity.client_id or provide one of these", tried.join("; "))]
    NoSource { tried: Vec<String> },
}

/// Works out the client ID from the config and the files it points at.
pub fn resolve(config: &Config) -> Result<Identity, IdentityError> {
    let identity = &config.identity;
    if identity.client_id != "auto" {
        let client_id = identity.client_id.clone();
        check_id(&client_id, "identity.client_id")?;
        if let (true, Some(path)) = (identity.match_certificate, &config.broker.tls.cert_file) {
            let cn = certificate_cn(path)?.unwrap_or_default();
            if cn != client_id {
                return Err(IdentityError::NotTheCertificate {
                    client_id,
                    cn,
                    path: path.clone(),
                });
            }
        }
        return Ok(Identity {
            client_id,
            origin: Origin::Configured,
        });
    }
    let mut tried = Vec::new();
    for source in &identity.sources {
        let found = match source {
            IdentitySource::CertificateCn => match &config.broker.tls.cert_file {
                None => Err("certificate_cn: broker.tls.cert_file is not set".to_owned()),
                Some(path) => from_certificate(path)?,
            },
            IdentitySource::Serial => from_serial(&config.sysfs_root)?,
            IdentitySource::Mac => from_mac(&config.sysfs_root, identity.mac_interface.as_deref()),
        };
        match found {
            Ok(identity) => return Ok(identity),
            Err(why) => tried.push(why),
        }
    }
    Err(IdentityError::NoSource { tried })
}

fn check_id(id: &str, origin: &str) -> Result<(), IdentityError> {
    validate_topic_id(id, MAX_CLIENT_ID_BYTES).map_err(|reason| IdentityError::Unfit {
        origin: origin.to_owned(),
        reason,
    })
}

/// Reads the subject CN of the first certificate in a PEM or DER file.
pub fn certificate_cn(path: &Path) -> Result<Option<String>, IdentityError> {
    let fail = |reason: String| IdentityError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
    let cert = leaf(&bytes).map_err(fail)?;
    let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next();
    match cn {
        None => Ok(None),
        Some(cn) => cn
            .data()
            .to_string()
            .map(Some)
            .map_err(|err| fail(format!("subject CN is not a string: {err}"))),
    }
}

/// The first certificate (the leaf, in a chain file), from PEM or DER.
pub(crate) fn leaf(bytes: &[u8]) -> Result<X509, String> {
    // DER starts with a SEQUENCE tag; PEM with text.
    if bytes.first() == Some(&0x30) {
        return X509::from_der(bytes).map_err(|err| format!("not an X.509 certificate: {err}"));
    }
    if !bytes
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err("no CERTIFICATE block found (expected PEM or DER)".to_owned());
    }
    // OpenSSL skips blocks of other kinds (a key before the certificate) to the first one.
    X509::from_pem(bytes).map_err(|err| format!("not a PEM or DER certificate: {err}"))
}

fn from_certificate(path: &Path) -> Result<Result<Identity, String>, IdentityError> {
    let cn = match certificate_cn(path) {
        Ok(Some(cn)) => cn,
        Ok(None) => {
            return Ok(Err(format!(
                "certificate_cn: {} has no subject CN",
                path.display()
            )))
        }
        Err(err) => return Err(err),
    };
    check_id(&cn, &format!("certificate CN of {}", path.display()))?;
    Ok(Ok(Identity {
        client_id: cn,
        origin: Origin::CertificateCn(path.to_owned()),
    }))
}

/// Placeholders that board vendors leave in the serial fields; none of them names a device.
const NOT_A_SERIAL: &[&str] = &[
    "",
    "0",
    "00000000",
    "0000000000000000",
    "none",
    "not specified",
    "not applicable",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "0123456789",
];

/// A sysfs or device-tree text value without its NUL terminator and surrounding whitespace.
pub(crate) fn trim_sysfs(text: &str) -> &str {
    text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// The outer error refuses an unfit serial; the inner one says why there was none.
fn from_serial(sysfs_root: &Path) -> Result<Result<Identity, String>, IdentityError> {
    let mut why = Vec::new();
    for relative in [
        "firmware/devicetree/base/serial-number",
        "class/dmi/id/product_serial",
    ] {
        let path = sysfs_root.join(relative);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let serial = trim_sysfs(&text);
                if NOT_A_SERIAL.contains(&serial.to_ascii_lowercase().as_str()) {
                    why.push(format!(
                        "{} holds no real serial (\"{serial}\")",
                        path.display()
                    ));
                    continue;
                }
                check_id(serial, &format!("board serial in {}", path.display()))?;
                return Ok(Ok(Identity {
                    client_id: serial.to_owned(),
                    origin: Origin::Serial(path),
                }));
            }
            Err(err) => why.push(format!("{}: {err}", path.display())),
        }
    }
    Ok(Err(format!("serial: {}", why.join(", "))))
}

/// The MAC of `interface`, or of the first interface by name that is not loopback and has a
/// non-zero address. Written as 12 lowercase hex digits without separators.
fn from_mac(sysfs_root: &Path, interface: Option<&str>) -> Result<Identity, String> {
    let net = sysfs_root.join("class/net");
    let candidates: Vec<String> = match interface {
        Some(name) => vec![name.to_owned()],
        None => {
            let mut names: Vec<String> = std::fs::read_dir(&net)
                .map_err(|err| format!("mac: {}: {err}", net.display()))?
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name != "lo")
                .collect();
            names.sort();
            names
        }
    };
    let mut why = Vec::new();
    for name in candidates {
        let path = net.join(&name).join("address");
        // Loopback interfaces are ARPHRD_LOOPBACK (772) whatever their name.
        let kind = std::fs::read_to_string(net.join(&name).join("type")).unwrap_or_default();
        if kind.trim() == "772" {
            why.push(format!("{name} is loopback"));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hex: String = text
                    .trim()
                    .split(':')
                    .collect::<String>()
                    .to_ascii_lowercase();
                let valid = hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit());
                if !valid || hex.chars().all(|c| c == '0') {
                    why.push(format!(
                        "{name} has no usable address (\"{}\")",
                        text.trim()
                    ));
                    continue;
                }
                return Ok(Identity {
                    client_id: hex,
                    origin: Origin::Mac {
                        interface: name,
                        path,
                    },
                });
            }
            Err(err) => why.push(format!("{}: {err}", path.display())),
        }
    }
    if why.is_empty() {
        why.push(format!("no network interface under {}", net.display()));
    }
    Err(format!("mac: {}", why.join(", ")))
}
