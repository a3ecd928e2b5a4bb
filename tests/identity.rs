//! Client ID sources: certificate CN (PEM, DER, chain), board serial, MAC; refusals.

use std::path::Path;

use fieldagent::config::load_str;
use fieldagent::identity::{resolve, Identity, IdentityError, Origin};

use crate::util::{fake_sysfs, pki, CertSpec, TestDir};

fn resolve_with(
    dir: &TestDir,
    identity_yaml: &str,
    cert: Option<&Path>,
) -> Result<Identity, IdentityError> {
    let tls = match cert {
        Some(cert) => format!(
            "{{ ca_file: /ca.pem, cert_file: {}, key_file: /device.key }}",
            cert.display()
        ),
        None => "{ ca_file: /ca.pem }".to_owned(),
    };
    let yaml = format!(
        "broker: {{ urls: [\"mqtts://127.0.0.1\"], tls: {tls} }}\nsysfs_root: {}\nidentity: {identity_yaml}\n",
        dir.path().join("sys").display()
    );
    let (config, _) = load_str(&yaml, Path::new("test.yaml")).expect("valid config");
    resolve(config.config())
}

#[test]
fn certificate_cn_from_pem_der_and_chain() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let pki = pki(&dir, "pki", CertSpec::default());
    let id = resolve_with(&dir, "{}", Some(&pki.cert)).unwrap();
    assert_eq!(id.client_id, "sensor-node-001");
    assert_eq!(id.origin, Origin::CertificateCn(pki.cert.clone()));
    assert_eq!(
        id.to_string(),
        format!(
            "sensor-node-001 (from certificate CN of {})",
            pki.cert.display()
        )
    );

    // DER: the same certificate, binary.
    let pem = std::fs::read(&pki.cert).unwrap();
    let der = x509_der(&pem);
    let der_path = dir.write("pki/device.der", der);
    assert_eq!(
        resolve_with(&dir, "{}", Some(&der_path)).unwrap().client_id,
        "sensor-node-001"
    );

    // A chain file: the leaf comes first and names the device, not the CA after it.
    let ca = std::fs::read_to_string(&pki.ca).unwrap();
    let chain = format!("{}{ca}", String::from_utf8(pem).unwrap());
    let chain_path = dir.write("pki/chain.pem", chain);
    assert_eq!(
        resolve_with(&dir, "{}", Some(&chain_path))
            .unwrap()
            .client_id,
        "sensor-node-001"
    );
}

fn x509_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    openssl::base64::decode_block(&body).unwrap()
}

#[test]
fn serial_then_mac_when_there_is_no_certificate() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let id = resolve_with(&dir, "{}", None).unwrap();
    assert_eq!(
        id.client_id, "10000000abcdef01",
        "device-tree serial without its NUL"
    );
    assert!(
        matches!(id.origin, Origin::Serial(ref p) if p.ends_with("firmware/devicetree/base/serial-number"))
    );

    // Without a device tree, DMI; a vendor placeholder is no serial, so MAC comes next.
    std::fs::remove_dir_all(dir.path().join("sys/firmware")).unwrap();
    dir.write(
        "sys/class/dmi/id/product_serial",
        "To Be Filled By O.E.M.\n",
    );
    let id = resolve_with(&dir, "{}", None).unwrap();
    assert_eq!(
        id.client_id, "dca632010203",
        "eth0: dummy0 is all-zero, lo is loopback"
    );
    assert_eq!(
        id.to_string(),
        format!(
            "dca632010203 (from MAC address of eth0 in {})",
            dir.path().join("sys/class/net/eth0/address").display()
        )
    );
    dir.write("sys/class/dmi/id/product_serial", "PF3ABC12\n");
    assert_eq!(
        resolve_with(&dir, "{}", None).unwrap().client_id,
        "PF3ABC12"
    );
}

#[test]
fn sources_follow_the_configured_order() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let pki = pki(&dir, "pki", CertSpec::default());
    let id = resolve_with(&dir, "{ sources: [mac, certificate_cn] }", Some(&pki.cert)).unwrap();
    assert_eq!(id.client_id, "dca632010203");
    let id = resolve_with(&dir, "{ sources: [mac], mac_interface: dummy0 }", None);
    assert!(
        matches!(&id, Err(IdentityError::NoSource { tried }) if tried[0].contains("dummy0 has no usable address")),
        "{id:?}"
    );
    // A literal that is not the certificate's CN, where the broker identifies devices otherwise.
    let id = resolve_with(
        &dir,
        "{ client_id: gateway-7, match_certificate: false }",
        Some(&pki.cert),
    )
    .unwrap();
    assert_eq!(
        id.to_string(),
        "gateway-7 (from identity.client_id in the config)"
    );
}

/// Issue 20: a literal client ID other than the certificate's CN let a device knock another off
/// the broker. It is a config error unless the config says why not.
#[test]
fn a_literal_client_id_must_be_the_certificates_cn() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let pki = pki(
        &dir,
        "pki",
        CertSpec {
            cn: Some("dev1"),
            ..CertSpec::default()
        },
    );
    let err = resolve_with(&dir, "{ client_id: dev2 }", Some(&pki.cert)).unwrap_err();
    assert!(
        matches!(err, IdentityError::NotTheCertificate { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(r#"identity.client_id "dev2" is not the CN "dev1" of "#)
            && text.contains("match_certificate: false"),
        "{text}"
    );
    let id = resolve_with(&dir, "{ client_id: dev1 }", Some(&pki.cert)).unwrap();
    assert_eq!(id.client_id, "dev1");
    // Without a client certificate there is nothing to match.
    assert!(resolve_with(&dir, "{ client_id: dev2 }", None).is_ok());
}

#[test]
fn a_certificate_without_cn_falls_through_but_never_to_a_random_id() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let pki = pki(
        &dir,
        "pki",
        CertSpec {
            cn: None,
            ..CertSpec::default()
        },
    );
    let id = resolve_with(&dir, "{}", Some(&pki.cert)).unwrap();
    assert_eq!(id.client_id, "10000000abcdef01");
    let err = resolve_with(&dir, "{ sources: [certificate_cn] }", Some(&pki.cert)).unwrap_err();
    assert!(
        err.to_string().starts_with("no client ID: certificate_cn:"),
        "{err}"
    );
    assert!(err.to_string().contains("has no subject CN"), "{err}");
}

#[test]
fn unfit_ids_are_refused() {
    let dir = TestDir::new();
    fake_sysfs(&dir);
    let long = "n".repeat(129);
    for (cn, reason) in [
        ("plant/7", "'/'"),
        ("a+b", "'+'"),
        ("hash#", "'#'"),
        ("tab\tin", "'\\t'"),
        (long.as_str(), "expected at most 128 bytes, found 129"),
    ] {
        let pki = pki(
            &dir,
            "bad",
            CertSpec {
                cn: Some(cn),
                ..CertSpec::default()
            },
        );
        let err = resolve_with(&dir, "{}", Some(&pki.cert)).unwrap_err();
        assert!(matches!(err, IdentityError::Unfit { .. }), "{cn}: {err}");
        assert!(err.to_string().contains(reason), "{cn}: {err}");
    }
    dir.write("sys/firmware/devicetree/base/serial-number", "a/b\0");
    let err = resolve_with(&dir, "{ sources: [serial] }", None).unwrap_err();
    assert!(err.to_string().contains("board serial in"), "{err}");
}
