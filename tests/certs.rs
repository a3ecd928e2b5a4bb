//! Certificate probing: expiry, key match, unreadable and world-readable files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fieldagent::certs::probe;
use fieldagent::config::{load_str, Finding, Severity};

use crate::util::{pki, CertSpec, Pki, TestDir};

fn probe_pki(ca: &Path, cert: &Path, key: &Path) -> Vec<Finding> {
    let yaml = format!(
        "broker: {{ urls: [\"mqtts://127.0.0.1\"], tls: {{ ca_file: {}, cert_file: {}, key_file: {} }} }}\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    let (config, _) = load_str(&yaml, Path::new("test.yaml")).expect("valid config");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    probe(&config.config().broker, now_s)
}

fn probe_all(pki: &Pki) -> Vec<Finding> {
    probe_pki(&pki.ca, &pki.cert, &pki.key)
}

fn has(findings: &[Finding], severity: Severity, key: &str, fragment: &str) -> bool {
    findings
        .iter()
        .any(|f| f.severity == severity && f.key == key && f.message.contains(fragment))
}

#[test]
fn good_material_has_no_findings() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    assert_eq!(probe_all(&pki), []);
}

#[test]
fn expired_and_expiring_certificates() {
    let dir = TestDir::new();
    let expired = pki(
        &dir,
        "old",
        CertSpec {
            not_before_days: -30,
            not_after_days: -1,
            ..CertSpec::default()
        },
    );
    let findings = probe_all(&expired);
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.cert_file",
            "expired on"
        ),
        "{findings:?}"
    );

    let soon = pki(
        &dir,
        "soon",
        CertSpec {
            not_after_days: 10,
            ..CertSpec::default()
        },
    );
    let findings = probe_all(&soon);
    assert!(
        has(
            &findings,
            Severity::Warning,
            "broker.tls.cert_file",
            "days ("
        ),
        "{findings:?}"
    );
    assert!(
        has(
            &findings,
            Severity::Warning,
            "broker.tls.cert_file",
            "renew it soon"
        ),
        "{findings:?}"
    );
    assert!(
        !findings.iter().any(|f| f.severity == Severity::Error),
        "{findings:?}"
    );

    let future = pki(
        &dir,
        "future",
        CertSpec {
            not_before_days: 2,
            ..CertSpec::default()
        },
    );
    let findings = probe_all(&future);
    assert!(
        has(
            &findings,
            Severity::Warning,
            "broker.tls.cert_file",
            "is the clock set"
        ),
        "{findings:?}"
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate() {
    let dir = TestDir::new();
    let one = pki(&dir, "one", CertSpec::default());
    let two = pki(&dir, "two", CertSpec::default());
    let findings = probe_pki(&one.ca, &one.cert, &two.key);
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.key_file",
            "does not match the certificate"
        ),
        "{findings:?}"
    );
}

#[test]
fn unreadable_garbage_and_world_readable_files() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    let garbage = dir.write("pki/garbage.pem", "not a certificate\n");
    let findings = probe_pki(&garbage, &pki.cert, &garbage);
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.ca_file",
            "expected PEM CA certificates"
        ),
        "{findings:?}"
    );
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.key_file",
            "is not a private key"
        ),
        "{findings:?}"
    );
    // The key file's contents never appear in a finding.
    assert!(
        !findings
            .iter()
            .any(|f| f.message.contains("not a certificate")),
        "{findings:?}"
    );

    let missing = dir.path().join("pki/missing.crt");
    let findings = probe_pki(&pki.ca, &missing, &pki.key);
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.cert_file",
            "No such file or directory"
        ),
        "{findings:?}"
    );

    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let findings = probe_all(&pki);
    assert!(
        has(
            &findings,
            Severity::Warning,
            "broker.tls.key_file",
            "readable by every user"
        ),
        "{findings:?}"
    );
}

#[test]
fn a_ca_bundle_with_some_expired_roots_is_fine() {
    let dir = TestDir::new();
    let pki = pki(&dir, "pki", CertSpec::default());
    // An expired root beside the one that signed the device, as system bundles have.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old root");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    let old = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let bundle = format!("{}{}", old.pem(), std::fs::read_to_string(&pki.ca).unwrap());
    let bundle = dir.write("pki/bundle.pem", bundle);
    let findings = probe_pki(&bundle, &pki.cert, &pki.key);
    assert!(
        has(
            &findings,
            Severity::Note,
            "broker.tls.ca_file",
            "1 of the 2 CA certificates"
        ),
        "{findings:?}"
    );
    assert!(
        !findings.iter().any(|f| f.severity == Severity::Error),
        "{findings:?}"
    );

    // A bundle of nothing but expired roots cannot verify anything.
    let only_old = dir.write("pki/old.pem", format!("{}{}", old.pem(), old.pem()));
    let findings = probe_pki(&only_old, &pki.cert, &pki.key);
    assert!(
        has(
            &findings,
            Severity::Error,
            "broker.tls.ca_file",
            "every one of the 2 CA certificates"
        ),
        "{findings:?}"
    );
}
