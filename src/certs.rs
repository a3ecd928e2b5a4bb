//! Probing the TLS material and secret files the config points at.
//!
//! Shared by `check` and daemon start-up: every CA, certificate, key and password file must be
//! readable and parse, the key must match the certificate, and the certificate must be valid now
//! (a warning when it expires within 30 days). Each problem becomes a [`Finding`] on the config key
//! that names the file. Key and password contents are never copied into a finding.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Ref, X509};

use crate::config::{BrokerConfig, Finding, Severity};
use crate::identity::leaf;

/// A certificate that expires sooner than this gets a warning.
const RENEW_WARNING_S: i64 = 30 * 24 * 3600;

/// Probes `broker.tls` and `broker.password_file` at Unix time `now_s`, as `check` does: an
/// expired certificate is an error.
pub fn probe(broker: &BrokerConfig, now_s: i64) -> Vec<Finding> {
    probe_with(broker, now_s, Severity::Error)
}

/// As [`probe`], for daemon start-up: an expired certificate is a warning there. The agent then
/// runs, samples and keeps retrying the broker (which may not check expiry, or the clock may be
/// wrong) until the certificate is renewed and the config reloaded, instead of staying down.
pub fn probe_for_run(broker: &BrokerConfig, now_s: i64) -> Vec<Finding> {
    probe_with(broker, now_s, Severity::Warning)
}

fn probe_with(broker: &BrokerConfig, now_s: i64, expired: Severity) -> Vec<Finding> {
    let mut findings = Vec::new();
    let tls = &broker.tls;
    let over_tls = broker
        .urls
        .iter()
        .any(|url| url.starts_with("mqtts://") || url.starts_with("ssl://"));
    if over_tls && !tls.verify_hostname {
        findings.push(Finding::warning(
            "broker.tls.verify_hostname",
            "false: any certificate the CA signed is accepted for any broker name, so the agent \
             can be pointed at an impostor holding another certificate of the same CA; expected true",
        ));
    }
    if over_tls && tls.cert_file.is_none() {
        findings.push(Finding::warning(
            "broker.tls.cert_file",
            "not set: the agent presents no client certificate, so the broker must identify it \
             some other way (a user name and password); fleet brokers usually require one",
        ));
    }
    if tls.cert_file.is_some() && tls.key_file.is_none() {
        findings.push(Finding::error(
            "broker.tls.key_file",
            "not set: broker.tls.cert_file needs the private key it was issued for",
        ));
    }
    if let Some(path) = &tls.ca_file {
        probe_ca("broker.tls.ca_file", path, now_s, expired, &mut findings);
    }
    let cert = tls
        .cert_file
        .as_deref()
        .and_then(|path| probe_cert("broker.tls.cert_file", path, now_s, expired, &mut findings));
    if let Some(path) = &tls.key_file {
        let key = match crate::keys::kind_of(path) {
            crate::keys::KeyKind::File => probe_key("broker.tls.key_file", path, &mut findings),
            kind => probe_device_key(tls, kind, &mut findings),
        };
        if let (Some(cert), Some(key)) = (cert, key) {
            match cert.public_key() {
                Ok(public) if public.public_eq(&key) => {}
                Ok(_) => findings.push(Finding::error(
                    "broker.tls.key_file",
                    format!(
                        "{} does not match the certificate in broker.tls.cert_file; expected the \
                         private key the certificate was issued for",
                        path.display()
                    ),
                )),
                Err(err) => findings.push(Finding::error(
                    "broker.tls.cert_file",
                    format!("cannot read the certificate's public key: {err}"),
                )),
            }
        }
    }
    if let Some(path) = &broker.password_file {
        if let Some(bytes) = read_file("broker.password_file", path, &mut findings) {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                findings.push(Finding::error(
                    "broker.password_file",
                    format!(
                        "expected a password in {}, found an empty file",
                        path.display()
                    ),
                ));
            }
            warn_if_world_readable("broker.password_file", path, &mut findings);
        }
    }
    findings
}

fn read_file(key: &str, path: &Path, findings: &mut Vec<Finding>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(err) => {
            let hint = match err.kind() {
                ErrorKind::PermissionDenied => {
                    "; the service runs as user fieldagent: give group fieldagent read access"
                }
                ErrorKind::NotFound => "; check the path",
                _ => "",
            };
            findings.push(Finding::error(
                key,
                format!("cannot read {}: {err}{hint}", path.display()),
            ));
            None
        }
    }
}

fn warn_if_world_readable(key: &str, path: &Path, findings: &mut Vec<Finding>) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            findings.push(Finding::warning(
                key,
                format!(
                    "{} is readable by every user; expected mode 0640 or stricter",
                    path.display()
                ),
            ));
        }
    }
}

fn probe_ca(key: &str, path: &Path, now_s: i64, expired: Severity, findings: &mut Vec<Finding>) {
    let Some(bytes) = read_file(key, path, findings) else {
        return;
    };
    let certs = match X509::stack_from_pem(&bytes) {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            findings.push(Finding::error(
                key,
                format!(
                    "expected PEM CA certificates in {}, found none",
                    path.display()
                ),
            ));
            return;
        }
        Err(err) => {
            findings.push(Finding::error(
                key,
                format!("{} is not a PEM certificate file: {err}", path.display()),
            ));
            return;
        }
    };
    if let [only] = certs.as_slice() {
        check_validity(key, path, only, now_s, expired, "CA certificate", findings);
        return;
    }
    // A bundle (often the system's) holds many roots, some long expired; only the one that
    // signed the broker matters, so the bundle is judged as a whole.
    let lapsed = certs
        .iter()
        .filter_map(|cert| unix_time(cert.not_after()))
        .filter(|not_after| *not_after < now_s)
        .count();
    if lapsed == certs.len() {
        let mut finding = Finding::error(
            key,
            format!(
                "every one of the {} CA certificates in {} has expired",
                certs.len(),
                path.display()
            ),
        );
        finding.severity = expired;
        findings.push(finding);
    } else if lapsed > 0 {
        findings.push(Finding::note(
            key,
            format!(
                "{lapsed} of the {} CA certificates in {} have expired; the others are used",
                certs.len(),
                path.display()
            ),
        ));
    }
}

/// Returns the leaf certificate for the key match.
fn probe_cert(
    key: &str,
    path: &Path,
    now_s: i64,
    expired: Severity,
    findings: &mut Vec<Finding>,
) -> Option<X509> {
    let bytes = read_file(key, path, findings)?;
    let cert = match leaf(&bytes) {
        Ok(cert) => cert,
        Err(reason) => {
            findings.push(Finding::error(key, format!("{}: {reason}", path.display())));
            return None;
        }
    };
    check_validity(key, path, &cert, now_s, expired, "certificate", findings);
    Some(cert)
}

/// Seconds since the Unix epoch of an ASN.1 time (None only if OpenSSL cannot compare it).
fn unix_time(time: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(time).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// The subject as `C=.., O=.., CN=..`, in the order of the certificate.
fn subject(cert: &X509Ref) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|entry| {
            let name = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{name}={value}")
        })
        .collect();
    parts.join(", ")
}

/// Checks the validity period.
fn check_validity(
    key: &str,
    path: &Path,
    cert: &X509Ref,
    now_s: i64,
    expired: Severity,
    what: &str,
    findings: &mut Vec<Finding>,
) {
    let subject = subject(cert);
    let (Some(not_after), Some(not_before)) =
        (unix_time(cert.not_after()), unix_time(cert.not_before()))
    else {
        findings.push(Finding::error(
            key,
            format!(
                "{}: the validity period of {what} {subject} does not parse",
                path.display()
            ),
        ));
        return;
    };
    if not_after < now_s {
        let mut finding = Finding::error(
            key,
            format!(
                "{what} {subject} in {} expired on {}; renew it",
                path.display(),
                cert.not_after()
            ),
        );
        finding.severity = expired;
        findings.push(finding);
    } else if not_after - now_s < RENEW_WARNING_S {
        findings.push(Finding::warning(
            key,
            format!(
                "{what} {subject} in {} expires in {} days ({}); renew it soon",
                path.display(),
                (not_after - now_s) / 86_400,
                cert.not_after()
            ),
        ));
    }
    if not_before > now_s {
        findings.push(Finding::warning(
            key,
            format!(
                "{what} {subject} in {} is not valid before {}; is the clock set (NTP, RTC)?",
                path.display(),
                cert.not_before()
            ),
        ));
    }
}

/// A key in a TPM or a PKCS#11 token: its settings, then the key itself through OpenSSL's tpm2
/// provider or pkcs11 engine (set up as the agent sets them up); the PIN is never quoted.
fn probe_device_key(
    tls: &crate::config::TlsConfig,
    kind: crate::keys::KeyKind,
    findings: &mut Vec<Finding>,
) -> Option<PKey<Private>> {
    use crate::keys::KeyKind;
    match kind {
        KeyKind::Pkcs11 => {
            let Some(p11) = &tls.pkcs11 else {
                findings.push(Finding::error(
                    "broker.tls.pkcs11",
                    "not set: a pkcs11: key_file needs the token's module (broker.tls.pkcs11.module) and its PIN file",
                ));
                return None;
            };
            let uri = tls.key_file.as_ref()?.to_string_lossy().into_owned();
            if uri.contains("pin-value") || uri.contains("pin-source") {
                findings.push(Finding::warning(
                    "broker.tls.key_file",
                    "the URI carries the PIN (pin-value): it then shows wherever the URI does; put it in broker.tls.pkcs11.pin_file",
                ));
            }
            if !p11.module.exists() {
                findings.push(Finding::error(
                    "broker.tls.pkcs11.module",
                    format!(
                        "{} does not exist; expected the token's PKCS#11 module",
                        p11.module.display()
                    ),
                ));
                return None;
            }
            if let Some(pin_file) = &p11.pin_file {
                warn_if_world_readable("broker.tls.pkcs11.pin_file", pin_file, findings);
            }
        }
        KeyKind::Tpm => {
            if tls.tpm.is_none() {
                findings.push(Finding::note(
                    "broker.tls.tpm",
                    "not set: the TPM key is used through the default TCTI, device:/dev/tpmrm0",
                ));
            }
        }
        KeyKind::File => {}
    }
    match crate::keys::load(tls) {
        Ok(key) => Some(key),
        Err(why) => {
            findings.push(Finding::error("broker.tls.key_file", why));
            None
        }
    }
}

fn probe_key(key: &str, path: &Path, findings: &mut Vec<Finding>) -> Option<PKey<Private>> {
    let bytes = read_file(key, path, findings)?;
    warn_if_world_readable(key, path, findings);
    let parsed = if bytes.starts_with(b"-----") || bytes.contains(&b'-') {
        if bytes.windows(9).any(|w| w == b"ENCRYPTED") {
            findings.push(Finding::error(
                key,
                format!(
                    "{} is an encrypted private key; expected an unencrypted one (protect it \
                     with file permissions instead)",
                    path.display()
                ),
            ));
            return None;
        }
        PKey::private_key_from_pem(&bytes)
    } else {
        PKey::private_key_from_der(&bytes)
    };
    match parsed {
        Ok(pkey) => Some(pkey),
        Err(_) => {
            // The OpenSSL error stack may quote the input; say only what kind of file it is not.
            findings.push(Finding::error(
                key,
                format!(
                    "{} is not a private key (expected PEM or DER, PKCS#8, PKCS#1 or SEC1)",
                    path.display()
                ),
            ));
            None
        }
    }
}
