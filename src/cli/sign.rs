//! `fieldagent sign`: a signed request for operators (`security.command_keys` on the devices),
//! to send with any MQTT client, e.g.
//! `mosquitto_pub -t devices/press-07/commands/fan -m "$(fieldagent sign --key ops.key --kid ops-2026 --topic devices/press-07/commands/fan '{"id":"c-17","value":"1"}')"`.

use std::io::Write;
use std::path::Path;

use crate::error::Error;

/// Signs `request` (a JSON object) for `topic` with the Ed25519 private key in `key` under
/// `kid`, stamped now; prints the JWS.
pub fn sign(
    key: &Path,
    kid: &str,
    topic: &str,
    request: &str,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let pem = std::fs::read(key)
        .map_err(|err| Error::Sign(format!("cannot read {}: {err}", key.display())))?;
    let key = openssl::pkey::PKey::private_key_from_pem(&pem).map_err(|_| {
        Error::Sign(format!(
            "{} is not a PEM private key (make one with: openssl genpkey -algorithm ed25519 -out {})",
            key.display(),
            key.display()
        ))
    })?;
    if kid.is_empty() || kid.contains('/') {
        return Err(Error::Sign(
            "--kid names a key file on the devices (<kid>.pem): not empty, no /".to_owned(),
        ));
    }
    let token = crate::signed::sign(&key, kid, request, topic, crate::model::now_ms())
        .map_err(Error::Sign)?;
    writeln!(out, "{token}")?;
    Ok(())
}
