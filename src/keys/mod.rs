//! The device's private key for the mutual-TLS connection, wherever it lives: a PEM file, a
//! TPM 2.0 key file (`TSS2 PRIVATE KEY`: the key was made inside the TPM and the file holds only
//! its wrapped form, useless without that TPM), or a PKCS#11 token named by a `pkcs11:` URI.
//!
//! OpenSSL (the one library Paho and the agent share) does the work: a TPM key through the
//! tpm2 provider (tpm2-openssl), a PKCS#11 key through the pkcs11 engine (libp11), both loaded by
//! the OpenSSL config the agent writes before OpenSSL starts ([`openssl_needs`]). Paho loads a
//! TPM key file as it loads a PEM file; for a `pkcs11:` URI the vendored Paho asks the engine
//! (vendor/paho-mqtt-sys/FIELDAGENT.md). The PIN is read from `broker.tls.pkcs11.pin_file` into
//! memory and handed to the engine; it is never written, logged or shown.
//!
//! `cert create-key` makes a key on the board, `cert csr` a request signed by it, `cert show`
//! says what there is ([`create`], [`request`], [`describe`]).

mod engine;

use std::path::Path;

use openssl::pkey::{PKey, Private};

use crate::config::TlsConfig;
use crate::mqtt::openssl_conf::KeyNeeds;

/// The first line of a TPM 2.0 key file.
pub const TSS2_HEADER: &str = "-----BEGIN TSS2 PRIVATE KEY-----";

/// Where the device key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    File,
    Tpm,
    Pkcs11,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::File => "file",
            KeyKind::Tpm => "tpm",
            KeyKind::Pkcs11 => "pkcs11",
        }
    }
}

/// `key_file` names a key in a token (`pkcs11:…`), not a file.
pub fn is_uri(key: &Path) -> bool {
    key.to_str().is_some_and(|key| key.starts_with("pkcs11:"))
}

/// What kind of key `key_file` is: a `pkcs11:` URI, a file that begins as a TPM key file, or a
/// file (one that cannot be read is taken as a plain one: its probe says why).
pub fn kind_of(key: &Path) -> KeyKind {
    if is_uri(key) {
        return KeyKind::Pkcs11;
    }
    let mut head = [0u8; 64];
    let read = std::fs::File::open(key)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut head))
        .unwrap_or(0);
    if String::from_utf8_lossy(&head[..read])
        .trim_start()
        .starts_with(TSS2_HEADER)
    {
        KeyKind::Tpm
    } else {
        KeyKind::File
    }
}

/// What OpenSSL must load for the key of `tls`, and the TPM's TCTI put where the tpm2 provider
/// reads it (`TPM2OPENSSL_TCTI`). Must run before anything in the process uses OpenSSL (with the
/// floor: `mqtt::tls::enforce_floor`), while the process has one thread.
pub fn openssl_needs(tls: &TlsConfig) -> KeyNeeds {
    let Some(key) = &tls.key_file else {
        return KeyNeeds::default();
    };
    match kind_of(key) {
        KeyKind::File => KeyNeeds::default(),
        KeyKind::Tpm => tpm_needs(tls),
        KeyKind::Pkcs11 => KeyNeeds {
            tpm2: None,
            pkcs11_module: tls.pkcs11.as_ref().map(|p11| p11.module.clone()),
        },
    }
}

/// What OpenSSL needs for a key in the TPM of `tls` (the tpm2 provider), and its TCTI put where
/// the provider reads it. Before anything uses OpenSSL.
pub fn tpm_needs(tls: &TlsConfig) -> KeyNeeds {
    let tcti = tls
        .tpm
        .as_ref()
        .map_or_else(|| "device:/dev/tpmrm0".to_owned(), |tpm| tpm.tcti.clone());
    std::env::set_var("TPM2OPENSSL_TCTI", &tcti);
    KeyNeeds {
        // tpm2-openssl 1.1 (Debian 12) hands OpenSSL only the public half of a TPM key, so
        // signatures must be asked of the TPM by property; that also verifies the broker's chain
        // in the TPM, which takes more objects than the kernel's resource manager lets one
        // connection have: tpm2-abrmd. Newer providers work without it, through /dev/tpmrm0
        // (docs/device-keys.md).
        tpm2: Some(tcti.starts_with("tabrmd")),
        pkcs11_module: None,
    }
}

/// The PIN of a `pkcs11:` key, from `broker.tls.pkcs11.pin_file` (its first line); `None` when
/// none is configured (the token needs none, or the URI carries it).
pub fn pin(tls: &TlsConfig) -> Result<Option<String>, String> {
    let Some(file) = tls.pkcs11.as_ref().and_then(|p11| p11.pin_file.as_ref()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).map_err(|err| {
        format!(
            "cannot read broker.tls.pkcs11.pin_file {}: {err}",
            file.display()
        )
    })?;
    let pin = text.lines().next().unwrap_or_default().trim().to_owned();
    if pin.is_empty() {
        return Err(format!(
            "broker.tls.pkcs11.pin_file {} holds no PIN",
            file.display()
        ));
    }
    Ok(Some(pin))
}

/// The private key of `tls` as OpenSSL holds it (for `check`, the TLS diagnosis and `cert csr`);
/// the provider or engine must have been set up ([`openssl_needs`]).
pub fn load(tls: &TlsConfig) -> Result<PKey<Private>, String> {
    let key = tls
        .key_file
        .as_ref()
        .ok_or_else(|| "broker.tls.key_file is not set".to_owned())?;
    match kind_of(key) {
        KeyKind::Pkcs11 => {
            let uri = key.to_str().unwrap_or_default();
            engine::load(uri, pin(tls)?.as_deref())
        }
        kind => {
            let pem = std::fs::read(key)
                .map_err(|err| format!("cannot read {}: {err}", key.display()))?;
            if kind == KeyKind::Tpm {
                engine::tpm_provider().map_err(|why| {
                    format!(
                        "cannot load the TPM key {}: {why}; is the TPM reachable through broker.tls.tpm.tcti?",
                        key.display()
                    )
                })?;
            }
            PKey::private_key_from_pem(&pem).map_err(|err| match kind {
                KeyKind::Tpm => format!(
                    "cannot load the TPM key {} ({}): is the TPM reachable through broker.tls.tpm.tcti, and tpm2-openssl installed?",
                    key.display(),
                    first_error(&err)
                ),
                _ => format!("{} is not a PEM private key: {}", key.display(), first_error(&err)),
            })
        }
    }
}

/// The first of OpenSSL's errors, without the others it stacks on it.
fn first_error(err: &openssl::error::ErrorStack) -> String {
    err.errors()
        .first()
        .map(|e| e.reason().unwrap_or("unknown").to_owned())
        .unwrap_or_else(|| err.to_string())
}

/// `cert create-key`: a new P-256 key at `key_file` (0600, created exclusively; an existing one
/// is kept unless `force`), in the TPM with `tpm` (the file then holds its wrapped form).
pub fn create(
    tls: &TlsConfig,
    tpm: bool,
    force: bool,
    owner: Option<&nix::unistd::User>,
) -> Result<KeyKind, String> {
    let key = tls
        .key_file
        .as_ref()
        .ok_or_else(|| "broker.tls.key_file is not set: it says where the key goes".to_owned())?;
    if is_uri(key) {
        return Err("broker.tls.key_file is a pkcs11: URI: make the key with the token's own tools (for example pkcs11-tool --keypairgen --key-type EC:prime256v1), then `fieldagent cert csr`".to_owned());
    }
    if key.exists() && !force {
        return Err(format!(
            "{} exists: kept (a device's key is its identity); --force makes a new one in its place",
            key.display()
        ));
    }
    let pem = if tpm {
        engine::tpm_keygen()?
    } else {
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
            .map_err(|err| err.to_string())?;
        let ec = openssl::ec::EcKey::generate(&group).map_err(|err| err.to_string())?;
        PKey::from_ec_key(ec)
            .and_then(|key| key.private_key_to_pem_pkcs8())
            .map_err(|err| err.to_string())?
    };
    write_key(key, &pem, force, owner)?;
    Ok(if tpm { KeyKind::Tpm } else { KeyKind::File })
}

/// Writes `pem` to `path` exclusively with mode 0600, owned by `owner` when given (with `force`, a
/// new file renamed over the old one), fsynced.
fn write_key(
    path: &Path,
    pem: &[u8],
    force: bool,
    owner: Option<&nix::unistd::User>,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let target = if force {
        path.with_extension("new")
    } else {
        path.to_owned()
    };
    if force {
        let _ = std::fs::remove_file(&target);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|err| format!("cannot create {}: {err}", target.display()))?;
    let written = (|| {
        if let Some(user) = owner {
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                Some(user.uid),
                Some(user.gid),
            )
            .map_err(|err| format!("cannot give {} to {}: {err}", target.display(), user.name))?;
        }
        file.write_all(pem)
            .and_then(|()| file.sync_all())
            .map_err(|err| format!("cannot write {}: {err}", target.display()))
    })();
    if let Err(why) = written {
        // Not left behind half made: the next try would find it and keep it.
        let _ = std::fs::remove_file(&target);
        return Err(why);
    }
    if force {
        std::fs::rename(&target, path)
            .map_err(|err| format!("cannot put the new key at {}: {err}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
    Ok(())
}

/// `cert csr`: a PKCS#10 request for the device key with subject CN `cn`, signed by the key
/// (in the TPM or the token when it lives there), as PEM.
pub fn request(tls: &TlsConfig, cn: &str) -> Result<String, String> {
    use openssl::x509::{X509NameBuilder, X509ReqBuilder};
    let key = load(tls)?;
    let mut name = X509NameBuilder::new().map_err(|err| err.to_string())?;
    name.append_entry_by_text("CN", cn)
        .map_err(|err| format!("{cn:?} cannot be a CN: {err}"))?;
    let name = name.build();
    let mut builder = X509ReqBuilder::new().map_err(|err| err.to_string())?;
    builder
        .set_subject_name(&name)
        .map_err(|err| err.to_string())?;
    builder.set_pubkey(&key).map_err(|err| err.to_string())?;
    builder
        .sign(&key, openssl::hash::MessageDigest::sha256())
        .map_err(|err| format!("the key cannot sign the request: {}", first_error(&err)))?;
    let pem = builder.build().to_pem().map_err(|err| err.to_string())?;
    Ok(String::from_utf8_lossy(&pem).into_owned())
}

/// What `cert show` says: the certificate's subject, issuer and validity, and where its key
/// lives (never the key or a PIN).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    pub key_file: Option<String>,
    /// file, tpm or pkcs11.
    pub key_kind: Option<&'static str>,
    pub cert_file: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// The key matches the certificate (`None` when either cannot be read).
    pub key_matches: Option<bool>,
    /// Why the key or the certificate could not be read.
    pub problems: Vec<String>,
}

pub fn describe(tls: &TlsConfig) -> Description {
    let mut problems = Vec::new();
    let cert = tls.cert_file.as_ref().and_then(|path| {
        std::fs::read(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))
            .and_then(|pem| {
                openssl::x509::X509::from_pem(&pem)
                    .map_err(|err| format!("{} is not a PEM certificate: {err}", path.display()))
            })
            .map_err(|why| problems.push(why))
            .ok()
    });
    let key = tls
        .key_file
        .as_ref()
        .and_then(|_| load(tls).map_err(|why| problems.push(why)).ok());
    let name = |name: &openssl::x509::X509NameRef| {
        name.entries()
            .map(|entry| {
                format!(
                    "{}={}",
                    entry.object().nid().short_name().unwrap_or("?"),
                    entry.data().to_string().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key_matches = match (&cert, &key) {
        (Some(cert), Some(key)) => cert.public_key().ok().map(|public| public.public_eq(key)),
        _ => None,
    };
    Description {
        key_file: tls.key_file.as_ref().map(|path| path.display().to_string()),
        key_kind: tls.key_file.as_ref().map(|path| kind_of(path).name()),
        cert_file: tls
            .cert_file
            .as_ref()
            .map(|path| path.display().to_string()),
        subject: cert.as_ref().map(|cert| name(cert.subject_name())),
        issuer: cert.as_ref().map(|cert| name(cert.issuer_name())),
        not_before: cert.as_ref().map(|cert| cert.not_before().to_string()),
        not_after: cert.as_ref().map(|cert| cert.not_after().to_string()),
        key_matches,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_new_key_is_0600_owned_by_the_given_user_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.key");
        // As root (CI), another user's; otherwise our own, which fchown allows.
        let owner = if nix::unistd::geteuid().is_root() {
            nix::unistd::User::from_name("nobody")
                .expect("passwd")
                .expect("nobody")
        } else {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .expect("passwd")
                .expect("us")
        };
        write_key(&path, b"first", false, Some(&owner)).expect("written");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), owner.uid.as_raw());
        assert_eq!(meta.gid(), owner.gid.as_raw());

        let err = write_key(&path, b"second", false, Some(&owner)).expect_err("kept");
        assert!(err.contains("cannot create"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");

        write_key(&path, b"third", true, Some(&owner)).expect("forced");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(std::fs::read(&path).expect("read"), b"third");
        assert_eq!(meta.uid(), owner.uid.as_raw());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(!path.with_extension("new").exists());
    }
}
