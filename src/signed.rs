//! Signed requests (`security.command_keys`): every command and operation request is a JWS
//! (RFC 7515) in compact serialization, signed with Ed25519 (EdDSA, RFC 8037) by a key whose
//! public half is in the key directory under the key id. The payload is the usual request JSON
//! plus `topic` (the exact topic it was published to: it binds the device and the command, so a
//! token cannot be replayed on another actuator or another device) and `iat` (when it was signed,
//! Unix ms: a token older than `max_command_age_s` is refused; within that window its id makes a
//! replay a duplicate).
//!
//! [`open`] is pure: the token, the topic it arrived on, the keys, the time and whether the clock
//! can be believed are its arguments. Signatures are checked with OpenSSL, the one crypto library
//! the agent links.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use openssl::pkey::{Id, PKey, Private, Public};
use serde_json::{Map, Value};

/// How far ahead of this device's clock a request may be signed (clocks differ a little).
pub const MAX_AHEAD_MS: u64 = 60_000;

/// The largest token looked at; larger ones are refused unread (a request is at most 64 KiB of
/// content, which base64 makes 4/3 larger).
pub const MAX_TOKEN: usize = 128 * 1024;

/// The public keys requests may be signed with, by key id.
#[derive(Clone, Default)]
pub struct Keys {
    keys: BTreeMap<String, PKey<Public>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

/// What a key directory holds that is not right, file by file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: PathBuf,
    pub error: bool,
    pub message: String,
}

impl Keys {
    /// The keys in `dir`: each `<kid>.pem` an Ed25519 public key. Every problem comes back (an
    /// error refuses the config): a directory that cannot be read or that every user may write
    /// to, a file that is not an Ed25519 public key; a file not ending in `.pem`, or the same
    /// key under two ids, is a warning.
    pub fn load(dir: &Path) -> (Keys, Vec<Problem>) {
        use std::os::unix::fs::MetadataExt;
        let mut keys = Keys::default();
        let mut problems = Vec::new();
        let problem = |file: &Path, error: bool, message: String| Problem {
            file: file.to_owned(),
            error,
            message,
        };
        match std::fs::metadata(dir) {
            Ok(metadata) if !metadata.is_dir() => {
                problems.push(problem(dir, true, "not a directory".to_owned()));
                return (keys, problems);
            }
            Ok(metadata) if metadata.mode() & 0o002 != 0 => {
                problems.push(problem(
                    dir,
                    true,
                    "writable by every user: anyone on the device could add a key; chmod o-w it"
                        .to_owned(),
                ));
            }
            Ok(_) => {}
            Err(err) => {
                problems.push(problem(dir, true, format!("cannot be read: {err}")));
                return (keys, problems);
            }
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) => {
                problems.push(problem(dir, true, format!("cannot be read: {err}")));
                return (keys, problems);
            }
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        files.sort();
        let mut seen: Vec<(Vec<u8>, String)> = Vec::new();
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(kid) = name.strip_suffix(".pem").filter(|kid| !kid.is_empty()) else {
                if !name.starts_with('.') {
                    problems.push(problem(
                        &file,
                        false,
                        "not read: only <key id>.pem files are keys".to_owned(),
                    ));
                }
                continue;
            };
            let read = std::fs::metadata(&file)
                .map_err(|err| err.to_string())
                .and_then(|metadata| {
                    if !metadata.is_file() || metadata.len() > 16 * 1024 {
                        Err("not a regular file of a key's size".to_owned())
                    } else {
                        std::fs::read(&file).map_err(|err| err.to_string())
                    }
                });
            let pem = match read {
                Ok(pem) => pem,
                Err(why) => {
                    problems.push(problem(&file, true, format!("cannot be read: {why}")));
                    continue;
                }
            };
            match public_key(&pem) {
                Ok(key) => {
                    let raw = key.raw_public_key().unwrap_or_default();
                    if let Some((_, other)) = seen.iter().find(|(bytes, _)| *bytes == raw) {
                        problems.push(problem(
                            &file,
                            false,
                            format!("the same key as {other}.pem: one key, one id"),
                        ));
                    }
                    seen.push((raw, kid.to_owned()));
                    keys.keys.insert(kid.to_owned(), key);
                }
                Err(why) => problems.push(problem(&file, true, why)),
            }
        }
        (keys, problems)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys from `(kid, public key PEM)` pairs (tests, and `sign`'s own check).
    pub fn from_pems(pems: &[(&str, &[u8])]) -> Result<Keys, String> {
        let mut keys = Keys::default();
        for (kid, pem) in pems {
            keys.keys.insert((*kid).to_owned(), public_key(pem)?);
        }
        Ok(keys)
    }
}

/// The keys `security.command_keys` names, or `None` when requests need no signature; what is
/// wrong with the directory as findings of `security.command_keys` (errors refuse the config).
pub fn probe(
    security: &crate::config::SecurityConfig,
) -> (Option<Keys>, Vec<crate::config::Finding>) {
    use crate::config::Finding;
    let Some(dir) = &security.command_keys else {
        return (None, Vec::new());
    };
    let (keys, problems) = Keys::load(dir);
    let mut findings: Vec<Finding> = problems
        .into_iter()
        .map(|problem| {
            let message = format!("{}: {}", problem.file.display(), problem.message);
            if problem.error {
                Finding::error("security.command_keys", message)
            } else {
                Finding::warning("security.command_keys", message)
            }
        })
        .collect();
    if keys.is_empty()
        && !findings
            .iter()
            .any(|f| f.severity == crate::config::Severity::Error)
    {
        findings.push(Finding::warning(
            "security.command_keys",
            format!(
                "{} holds no key: every command and operation will be refused until one is added (and the agent reloaded)",
                dir.display()
            ),
        ));
    }
    (Some(keys), findings)
}

/// An Ed25519 public key from PEM; anything else is refused with what it is.
fn public_key(pem: &[u8]) -> Result<PKey<Public>, String> {
    if PKey::private_key_from_pem(pem).is_ok() {
        return Err(
            "holds a private key: only the public half belongs on the device (openssl pkey -pubout)"
                .to_owned(),
        );
    }
    let key = PKey::public_key_from_pem(pem)
        .map_err(|_| "not a PEM public key (expected -----BEGIN PUBLIC KEY-----)".to_owned())?;
    if key.id() != Id::ED25519 {
        return Err(format!(
            "not an Ed25519 key ({}); requests are signed with EdDSA over Ed25519",
            describe(key.id())
        ));
    }
    Ok(key)
}

fn describe(id: Id) -> &'static str {
    match id {
        Id::RSA => "an RSA key",
        Id::EC => "an EC key",
        Id::ED448 => "an Ed448 key",
        Id::DSA => "a DSA key",
        _ => "another kind of key",
    }
}

/// A request whose signature, topic and age hold: its JSON without `topic` and `iat`.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub payload: Vec<u8>,
    pub kid: String,
}

/// Why a request was refused, with what could be read of it for the answer: its `id` (from the
/// payload, signed or not: the answer names it, nothing is done with it) and its `kid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub reason: String,
    pub id: Option<String>,
    pub kid: Option<String>,
}

/// What the agent knows when a request arrives.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Unix ms.
    pub ms: u64,
    /// The wall clock can be believed (`clock::synced`).
    pub synced: bool,
    /// `security.max_command_age_s`, in ms.
    pub max_age_ms: u64,
}

fn b64(text: &str) -> Result<Vec<u8>, ()> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| ())
}

/// Checks `token`, which arrived on `topic`: a JWS of an Ed25519 key in `keys`, signed for this
/// topic, not older than the window nor too far ahead, while the clock can be believed. The
/// checks come in the SPEC's order, so each refusal names the first thing wrong.
pub fn open(token: &[u8], topic: &str, keys: &Keys, now: Now) -> Result<Opened, Refused> {
    let refuse =
        |reason: String, id: Option<String>, kid: Option<String>| Refused { reason, id, kid };
    if token.len() > MAX_TOKEN {
        return Err(refuse(
            format!(
                "refused: the request is {} bytes, more than {MAX_TOKEN}",
                token.len()
            ),
            None,
            None,
        ));
    }
    let text = std::str::from_utf8(token).unwrap_or_default().trim();
    let parts: Vec<&str> = text.split('.').collect();
    let not_jws = || {
        // An unsigned request: its id still answers it.
        let id = serde_json::from_slice::<Value>(token)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
        refuse(
            "refused: not a signed request; security.command_keys is set, so every request must be a JWS (compact serialization) signed with EdDSA".to_owned(),
            id,
            None,
        )
    };
    if parts.len() != 3 || parts.iter().any(|part| part.is_empty()) {
        return Err(not_jws());
    }
    let (Ok(header), Ok(payload), Ok(signature)) = (b64(parts[0]), b64(parts[1]), b64(parts[2]))
    else {
        return Err(not_jws());
    };
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
        return Err(not_jws());
    };
    // What the payload says, before it is trusted: only to name the request in the answer.
    let claims: Option<Map<String, Value>> = match serde_json::from_slice(&payload) {
        Ok(Value::Object(claims)) => Some(claims),
        _ => None,
    };
    let id = claims
        .as_ref()
        .and_then(|c| c.get("id").and_then(Value::as_str))
        .map(str::to_owned);
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err(refuse(
            "refused: the JWS header's alg is not EdDSA".to_owned(),
            id,
            kid,
        ));
    }
    if header.contains_key("crit") {
        return Err(refuse(
            "refused: the JWS header lists critical extensions (crit), which this agent does not know".to_owned(),
            id,
            kid,
        ));
    }
    let Some(kid_text) = kid.clone() else {
        return Err(refuse(
            "refused: the JWS header names no key (kid)".to_owned(),
            id,
            kid,
        ));
    };
    let Some(key) = keys.keys.get(&kid_text) else {
        return Err(refuse(
            format!("refused: unknown key id \"{}\"", shown(&kid_text)),
            id,
            kid,
        ));
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    if !verify(key, signed.as_bytes(), &signature) {
        return Err(refuse("refused: bad signature".to_owned(), id, kid));
    }
    let Some(mut claims) = claims else {
        return Err(refuse(
            "refused: the signed payload is not a JSON object".to_owned(),
            id,
            kid,
        ));
    };
    match claims.remove("topic") {
        Some(Value::String(signed_for)) if signed_for == topic => {}
        Some(Value::String(signed_for)) => {
            return Err(refuse(
                format!(
                    "refused: signed for topic \"{}\", arrived on \"{}\"",
                    shown(&signed_for),
                    shown(topic)
                ),
                id,
                kid,
            ))
        }
        _ => {
            return Err(refuse(
                "refused: the signed payload has no topic".to_owned(),
                id,
                kid,
            ))
        }
    }
    let Some(iat) = claims.remove("iat").and_then(|iat| iat.as_u64()) else {
        return Err(refuse(
            "refused: the signed payload has no iat (Unix time in ms)".to_owned(),
            id,
            kid,
        ));
    };
    if !now.synced {
        return Err(refuse(
            "refused: the clock is not synchronised, so the age of a signed request cannot be judged".to_owned(),
            id,
            kid,
        ));
    }
    if iat > now.ms.saturating_add(MAX_AHEAD_MS) {
        return Err(refuse(
            format!(
                "refused: signed {:.0} s in the future (more than {} s ahead of this device's clock)",
                (iat - now.ms) as f64 / 1000.0,
                MAX_AHEAD_MS / 1000
            ),
            id,
            kid,
        ));
    }
    if now.ms.saturating_sub(iat) > now.max_age_ms {
        return Err(refuse(
            format!(
                "refused: signed {:.0} s ago, more than security.max_command_age_s ({} s)",
                (now.ms - iat) as f64 / 1000.0,
                now.max_age_ms / 1000
            ),
            id,
            kid,
        ));
    }
    Ok(Opened {
        payload: Value::Object(claims).to_string().into_bytes(),
        kid: kid_text,
    })
}

/// An Ed25519 signature of `signed` by `key`.
fn verify(key: &PKey<Public>, signed: &[u8], signature: &[u8]) -> bool {
    openssl::sign::Verifier::new_without_digest(key)
        .and_then(|mut verifier| verifier.verify_oneshot(signature, signed))
        .unwrap_or(false)
}

/// At most 64 characters of something a request said, for a reason.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A signed request for `topic`: `request` (a JSON object) with `topic` and `iat` added, as a
/// JWS signed by `key` (Ed25519) under `kid`. What `fieldagent sign` prints.
pub fn sign(
    key: &PKey<Private>,
    kid: &str,
    request: &str,
    topic: &str,
    iat_ms: u64,
) -> Result<String, String> {
    if key.id() != Id::ED25519 {
        return Err("the key is not an Ed25519 private key".to_owned());
    }
    let mut claims: Map<String, Value> = match serde_json::from_str(request) {
        Ok(Value::Object(claims)) => claims,
        Ok(_) => return Err("the request is not a JSON object".to_owned()),
        Err(err) => return Err(format!("the request is not JSON: {err}")),
    };
    claims.insert("topic".to_owned(), topic.into());
    claims.insert("iat".to_owned(), iat_ms.into());
    let header = serde_json::json!({ "alg": "EdDSA", "kid": kid }).to_string();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!(
        "{}.{}",
        engine.encode(header),
        engine.encode(Value::Object(claims).to_string())
    );
    let signature = openssl::sign::Signer::new_without_digest(key)
        .and_then(|mut signer| signer.sign_oneshot_to_vec(signed.as_bytes()))
        .map_err(|err| format!("cannot sign: {err}"))?;
    Ok(format!("{signed}.{}", engine.encode(signature)))
}

#[cfg(test)]
mod tests;
