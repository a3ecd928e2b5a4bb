//! `fieldagent cert`: the device key made on the board (a file, or inside the TPM), a
//! certificate request signed by it, and what the device has (`keys` does the work).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config;
use crate::error::Error;

/// The user the packaged service runs as (`User=` in its unit).
const SERVICE_USER: &str = "fieldagent";

/// `cert create-key [--tpm] [--force]`: a P-256 key at `broker.tls.key_file`. Run as root on a
/// board with the service's user, the key belongs to that user (still mode 0600), so the agent
/// can read it and no other user can.
pub fn create_key(path: &Path, tpm: bool, force: bool, out: &mut dyn Write) -> Result<(), Error> {
    let (config, _) = config::load(path)?;
    let tls = &config.config().broker.tls;
    let _floor = super::connect::floor_for_key(tls, tpm)?;
    let owner = if nix::unistd::geteuid().is_root() {
        nix::unistd::User::from_name(SERVICE_USER).ok().flatten()
    } else {
        None
    };
    let kind = crate::keys::create(tls, tpm, force, owner.as_ref()).map_err(Error::Cert)?;
    let key = tls.key_file.as_deref().unwrap_or(Path::new("?"));
    let mode = match &owner {
        Some(user) => format!("mode 0600, owner {}", user.name),
        None => "mode 0600".to_owned(),
    };
    match kind {
        crate::keys::KeyKind::Tpm => writeln!(
            out,
            "made a P-256 key inside the TPM; {} holds its wrapped form ({mode}), useless without this TPM",
            key.display()
        )?,
        _ => writeln!(out, "made a P-256 key at {} ({mode})", key.display())?,
    }
    writeln!(
        out,
        "next: fieldagent cert csr --out device.csr, and have it signed by the fleet's CA"
    )?;
    Ok(())
}

/// `cert csr [--cn CN] [--out FILE]`: a PKCS#10 request for the device key. The CN defaults to
/// the client ID the agent would use without a certificate (its configured id, else the
/// board's serial, else a MAC).
pub fn csr(
    path: &Path,
    cn: Option<&str>,
    file: Option<&PathBuf>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let (config, _) = config::load(path)?;
    let tls = &config.config().broker.tls;
    let _floor = super::connect::floor(tls)?;
    let cn = match cn {
        Some(cn) => cn.to_owned(),
        None => {
            let mut without = config.config().clone();
            without.broker.tls.cert_file = None;
            without
                .identity
                .sources
                .retain(|source| *source != config::IdentitySource::CertificateCn);
            crate::identity::resolve(&without)?.client_id
        }
    };
    let pem = crate::keys::request(tls, &cn).map_err(Error::Cert)?;
    match file {
        Some(file) => {
            std::fs::write(file, &pem)
                .map_err(|err| Error::Cert(format!("cannot write {}: {err}", file.display())))?;
            writeln!(out, "wrote a request for CN={cn} to {}", file.display())?;
        }
        None => out.write_all(pem.as_bytes())?,
    }
    Ok(())
}

/// `cert show [--json]`: the certificate and where its key lives; never the key or a PIN.
pub fn show(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let (config, _) = config::load(path)?;
    let tls = &config.config().broker.tls;
    let _floor = super::connect::floor(tls)?;
    let described = crate::keys::describe(tls);
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&described).expect("it serializes")
        )?;
        return Ok(());
    }
    let or_none = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    writeln!(out, "certificate  {}", or_none(&described.cert_file))?;
    writeln!(out, "  subject    {}", or_none(&described.subject))?;
    writeln!(out, "  issuer     {}", or_none(&described.issuer))?;
    writeln!(
        out,
        "  valid      {} to {}",
        or_none(&described.not_before),
        or_none(&described.not_after)
    )?;
    writeln!(
        out,
        "key          {} ({})",
        or_none(&described.key_file),
        described.key_kind.unwrap_or("-")
    )?;
    writeln!(
        out,
        "  matches    {}",
        match described.key_matches {
            Some(true) => "yes, the certificate is for this key",
            Some(false) => "NO: the certificate is for another key",
            None => "-",
        }
    )?;
    for problem in &described.problems {
        writeln!(out, "problem      {problem}")?;
    }
    Ok(())
}
