use super::*;

fn b64d(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// RFC 8037, A.4: the Ed25519 JWS of "Example of Ed25519 signing" with the key of A.1. The
/// signature verifies with the public key, Ed25519 is deterministic so signing gives the same
/// bytes, and `open` refuses it for what it lacks (a kid).
#[test]
fn rfc_8037_example() {
    let x = b64d("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    let d = b64d("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    let public = PKey::public_key_from_raw_bytes(&x, Id::ED25519).unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    assert_eq!(
        b64d(signed.split('.').nth(1).unwrap()),
        b"Example of Ed25519 signing"
    );
    assert!(verify(&public, signed.as_bytes(), &b64d(signature)));
    assert!(!verify(
        &public,
        b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZQ",
        &b64d(signature)
    ));
    let private = PKey::private_key_from_raw_bytes(&d, Id::ED25519).unwrap();
    let again = openssl::sign::Signer::new_without_digest(&private)
        .unwrap()
        .sign_oneshot_to_vec(signed.as_bytes())
        .unwrap();
    assert_eq!(again, b64d(signature));
    let keys = Keys {
        keys: [("a".to_owned(), public)].into_iter().collect(),
    };
    let refused = open(token.as_bytes(), "t", &keys, now()).unwrap_err();
    assert_eq!(refused.reason, "refused: the JWS header names no key (kid)");
}

const TOPIC: &str = "devices/press-07/commands/fan";
const NOW: u64 = 1_800_000_000_000;

fn now() -> Now {
    Now {
        ms: NOW,
        synced: true,
        max_age_ms: 300_000,
    }
}

fn key() -> PKey<Private> {
    PKey::generate_ed25519().unwrap()
}

fn keys_of(pairs: &[(&str, &PKey<Private>)]) -> Keys {
    let pems: Vec<(String, Vec<u8>)> = pairs
        .iter()
        .map(|(kid, key)| ((*kid).to_owned(), key.public_key_to_pem().unwrap()))
        .collect();
    let borrowed: Vec<(&str, &[u8])> = pems
        .iter()
        .map(|(kid, pem)| (kid.as_str(), pem.as_slice()))
        .collect();
    Keys::from_pems(&borrowed).unwrap()
}

/// A token of `payload` (raw) under `header` (raw), signed by `key`.
fn raw_token(key: &PKey<Private>, header: &str, payload: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!("{}.{}", engine.encode(header), engine.encode(payload));
    let signature = openssl::sign::Signer::new_without_digest(key)
        .unwrap()
        .sign_oneshot_to_vec(signed.as_bytes())
        .unwrap();
    format!("{signed}.{}", engine.encode(signature))
}

#[test]
fn a_good_request_opens_to_its_json_without_topic_and_iat() {
    let ops = key();
    let keys = keys_of(&[("ops-1", &ops)]);
    let token = sign(
        &ops,
        "ops-1",
        r#"{"id":"c1","value":"1"}"#,
        TOPIC,
        NOW - 1_000,
    )
    .unwrap();
    let opened = open(token.as_bytes(), TOPIC, &keys, now()).unwrap();
    assert_eq!(opened.kid, "ops-1");
    let payload: Value = serde_json::from_slice(&opened.payload).unwrap();
    assert_eq!(payload, serde_json::json!({"id":"c1","value":"1"}));
    // Extra header parameters (typ, as JWT libraries add) are fine; only crit is not.
    let typed = raw_token(
        &ops,
        r#"{"alg":"EdDSA","kid":"ops-1","typ":"JWT"}"#,
        &format!(r#"{{"id":"c2","topic":"{TOPIC}","iat":{NOW}}}"#),
    );
    assert!(open(typed.as_bytes(), TOPIC, &keys, now()).is_ok());
    // A token signed just within 60 s ahead, and one at the edge of the window.
    for iat in [NOW + MAX_AHEAD_MS, NOW - 300_000] {
        let token = sign(&ops, "ops-1", r#"{"id":"c3"}"#, TOPIC, iat).unwrap();
        assert!(open(token.as_bytes(), TOPIC, &keys, now()).is_ok(), "{iat}");
    }
}

/// Every refusal of the SPEC, each with its reason, and the id when one can be read.
#[test]
fn refusals() {
    let ops = key();
    let other = key();
    let keys = keys_of(&[("ops-1", &ops)]);
    let good = |iat: u64| sign(&ops, "ops-1", r#"{"id":"c9","value":"1"}"#, TOPIC, iat).unwrap();
    let payload = format!(r#"{{"id":"c9","topic":"{TOPIC}","iat":{NOW}}}"#);
    let table: Vec<(String, &str, Now, &str)> = vec![
        (r#"{"id":"c9","value":"1"}"#.to_owned(), TOPIC, now(), "refused: not a signed request"),
        ("a.b".to_owned(), TOPIC, now(), "refused: not a signed request"),
        ("!!.??.**".to_owned(), TOPIC, now(), "refused: not a signed request"),
        (raw_token(&ops, r#"{"alg":"none","kid":"ops-1"}"#, &payload), TOPIC, now(), "alg is not EdDSA"),
        (raw_token(&ops, r#"{"alg":"HS256","kid":"ops-1"}"#, &payload), TOPIC, now(), "alg is not EdDSA"),
        (raw_token(&ops, r#"{"alg":"EdDSA","kid":"ops-1","crit":["b64"],"b64":false}"#, &payload), TOPIC, now(), "(crit)"),
        (sign(&ops, "ops-9", r#"{"id":"c9"}"#, TOPIC, NOW).unwrap(), TOPIC, now(), "unknown key id \"ops-9\""),
        (sign(&other, "ops-1", r#"{"id":"c9"}"#, TOPIC, NOW).unwrap(), TOPIC, now(), "refused: bad signature"),
        (good(NOW), "devices/press-07/commands/valve", now(), "signed for topic \"devices/press-07/commands/fan\", arrived on \"devices/press-07/commands/valve\""),
        (good(NOW), "devices/press-08/commands/fan", now(), "arrived on \"devices/press-08/commands/fan\""),
        (raw_token(&ops, r#"{"alg":"EdDSA","kid":"ops-1"}"#, &format!(r#"{{"id":"c9","iat":{NOW}}}"#)), TOPIC, now(), "has no topic"),
        (raw_token(&ops, r#"{"alg":"EdDSA","kid":"ops-1"}"#, &format!(r#"{{"id":"c9","topic":"{TOPIC}"}}"#)), TOPIC, now(), "has no iat"),
        (raw_token(&ops, r#"{"alg":"EdDSA","kid":"ops-1"}"#, "[1,2]"), TOPIC, now(), "not a JSON object"),
        (good(NOW - 300_001), TOPIC, now(), "signed 300 s ago, more than security.max_command_age_s (300 s)"),
        (good(NOW + 61_000), TOPIC, now(), "signed 61 s in the future"),
        (good(NOW), TOPIC, Now { synced: false, ..now() }, "the clock is not synchronised"),
    ];
    for (token, topic, when, expected) in table {
        let refused = open(token.as_bytes(), topic, &keys, when).unwrap_err();
        assert!(
            refused.reason.contains(expected),
            "{token}: {} (expected {expected:?})",
            refused.reason
        );
        // The id is read for the answer whenever the payload is an object with one.
        let unreadable =
            token == "a.b" || token.starts_with("!!") || expected == "not a JSON object";
        assert_eq!(
            refused.id.as_deref(),
            (!unreadable).then_some("c9"),
            "{token}"
        );
    }
    // A tampered payload under a good signature.
    let token = good(NOW);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        r#"{{"id":"c9","value":"0","topic":"{TOPIC}","iat":{NOW}}}"#
    ));
    let refused = open(parts.join(".").as_bytes(), TOPIC, &keys, now()).unwrap_err();
    assert_eq!(refused.reason, "refused: bad signature");
    assert_eq!(refused.kid.as_deref(), Some("ops-1"));
    // Larger than any request: refused unread.
    let huge = vec![b'a'; MAX_TOKEN + 1];
    assert!(open(&huge, TOPIC, &keys, now())
        .unwrap_err()
        .reason
        .contains("more than"));
}

#[test]
fn the_key_directory_says_what_is_wrong_with_each_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ops = key();
    std::fs::write(
        dir.path().join("ops-1.pem"),
        ops.public_key_to_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ops-1-again.pem"),
        ops.public_key_to_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("secret.pem"),
        ops.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    let rsa = PKey::from_rsa(rsa).unwrap();
    std::fs::write(dir.path().join("rsa.pem"), rsa.public_key_to_pem().unwrap()).unwrap();
    std::fs::write(dir.path().join("README"), "keys").unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
    let (keys, problems) = Keys::load(dir.path());
    assert_eq!(keys.len(), 2, "{keys:?}");
    let said = |name: &str| {
        problems
            .iter()
            .find(|p| p.file.file_name().unwrap() == name)
            .map(|p| (p.error, p.message.clone()))
            .unwrap_or_else(|| panic!("nothing said of {name}: {problems:?}"))
    };
    assert!(!said("ops-1.pem").0);
    assert!(
        said("ops-1.pem")
            .1
            .contains("the same key as ops-1-again.pem"),
        "{problems:?}"
    );
    assert!(said("secret.pem").0);
    assert!(said("secret.pem").1.contains("private key"));
    assert!(said("rsa.pem")
        .1
        .contains("not an Ed25519 key (an RSA key)"));
    assert!(said("junk.pem").1.contains("not a PEM public key"));
    assert!(!said("README").0);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_, problems) = Keys::load(dir.path());
    assert!(problems
        .iter()
        .any(|p| p.error && p.message.contains("writable by every user")));
    let (keys, problems) = Keys::load(&dir.path().join("missing"));
    assert!(keys.is_empty() && problems[0].error && problems[0].message.contains("cannot be read"));
}
