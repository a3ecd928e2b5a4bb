//! Signed requests (`security.command_keys`) through mosquitto: tokens made by an independent
//! JOSE implementation (panva/jose on Node, tests/jose) and by `fieldagent sign` are accepted;
//! every refusal of the SPEC is answered with its reason and leaves the actuator's file as it
//! was; a replay is a duplicate; a token re-targeted to another actuator or another device is
//! refused; keys are added and removed by SIGHUP; operation requests are checked the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use openssl::pkey::PKey;
use serde_json::{json, Value};

use crate::broker::{publish, Broker, BrokerPki, Subscriber};
use crate::daemon::{online, Agent, Setup};
use crate::util::TestDir;

const ID: &str = "node-s";

/// `payload` signed by the key in `key_file` under `kid`, by panva/jose.
fn jose(key_file: &Path, kid: &str, payload: &Value) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jose");
    assert!(
        dir.join("node_modules/jose").exists(),
        "panva/jose is not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let output = Command::new("node")
        .arg(dir.join("sign.mjs"))
        .arg(key_file)
        .arg(kid)
        .arg(payload.to_string())
        .output()
        .expect("node (Debian: nodejs) runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Device {
    dir: TestDir,
    pki: BrokerPki,
    broker: Broker,
    responses: Subscriber,
    operations: Subscriber,
    fan: PathBuf,
    keys: PathBuf,
}

impl Device {
    fn new() -> Device {
        let dir = TestDir::new();
        let pki = BrokerPki::new(&dir);
        let broker = Broker::start(&pki);
        let responses = Subscriber::start(&broker, &pki, &format!("devices/{ID}/responses"));
        let operations =
            Subscriber::start(&broker, &pki, &format!("devices/{ID}/operations/status"));
        let fan = dir.write("fan", "0");
        let keys = dir.path().join("command-keys.d");
        std::fs::create_dir(&keys).unwrap();
        Device {
            dir,
            pki,
            broker,
            responses,
            operations,
            fan,
            keys,
        }
    }

    /// A new operator key: its private half in the test directory, its public half as
    /// `<kid>.pem` in the device's key directory. The private key's file.
    fn add_key(&self, kid: &str) -> PathBuf {
        let key = PKey::generate_ed25519().unwrap();
        std::fs::write(
            self.keys.join(format!("{kid}.pem")),
            key.public_key_to_pem().unwrap(),
        )
        .unwrap();
        self.dir.write(
            &format!("{kid}.key"),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    fn start(&self) -> Agent {
        let mut setup = Setup::new(ID, &self.broker);
        // Signed requests are judged only by a believed clock (the refusal while it is not:
        // src/signed/tests.rs).
        setup.clock_synced = true;
        setup.top_extra = format!(
            "actuators:\n  - {{ name: fan, file: {}, values: [\"0\", \"1\"] }}\n  - {{ name: valve, file: {}, values: [\"0\", \"1\"] }}\n\
             security: {{ command_keys: {}, max_command_age_s: 300 }}\n\
             operations: {{ restart: {{}} }}\n",
            self.fan.display(),
            self.dir.write("valve", "0").display(),
            self.keys.display()
        );
        let agent = Agent::start_with(&self.dir, &self.pki, setup);
        let status = Subscriber::start(&self.broker, &self.pki, &format!("devices/{ID}/status"));
        online(&status, ID, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("not online; agent log:\n{}", agent.log()));
        agent
    }

    fn command_topic(&self, name: &str) -> String {
        format!("devices/{ID}/commands/{name}")
    }

    fn send(&self, topic: &str, payload: &str) -> Value {
        publish(&self.broker, &self.pki, topic, payload);
        let message = self
            .responses
            .wait_for(Duration::from_secs(10), |_| true)
            .expect("a response");
        serde_json::from_str(&message.payload).unwrap()
    }

    fn fan(&self) -> String {
        std::fs::read_to_string(&self.fan).unwrap()
    }
}

/// The request `fields` for `topic`, with `iat`.
fn claims(fields: Value, topic: &str, iat: u64) -> Value {
    let mut claims = fields;
    claims["topic"] = topic.into();
    claims["iat"] = iat.into();
    claims
}

#[test]
fn signed_commands_are_run_and_every_refusal_touches_nothing() {
    let device = Device::new();
    let ops = device.add_key("ops-1");
    let _agent = device.start();
    let fan = device.command_topic("fan");

    // Signed by an independent JOSE implementation: run.
    let token = jose(
        &ops,
        "ops-1",
        &claims(json!({"id":"s1","value":"1"}), &fan, now_ms()),
    );
    let answer = device.send(&fan, &token);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(device.fan(), "1");

    // The same token again: a duplicate, not run again.
    std::fs::write(&device.fan, "0").unwrap();
    let answer = device.send(&fan, &token);
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(device.fan(), "0");

    // Every refusal: answered with its reason, the file untouched.
    let other = device.dir.write(
        "other.key",
        PKey::generate_ed25519()
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap(),
    );
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unsigned",
            fan.clone(),
            r#"{"id":"r1","value":"1"}"#.to_owned(),
        ),
        (
            "unknown kid",
            fan.clone(),
            jose(
                &ops,
                "ops-9",
                &claims(json!({"id":"r2","value":"1"}), &fan, now_ms()),
            ),
        ),
        (
            "bad signature",
            fan.clone(),
            jose(
                &other,
                "ops-1",
                &claims(json!({"id":"r3","value":"1"}), &fan, now_ms()),
            ),
        ),
        (
            "re-targeted to another actuator",
            device.command_topic("valve"),
            jose(
                &ops,
                "ops-1",
                &claims(json!({"id":"r4","value":"1"}), &fan, now_ms()),
            ),
        ),
        (
            "signed for another device",
            fan.clone(),
            jose(
                &ops,
                "ops-1",
                &claims(
                    json!({"id":"r5","value":"1"}),
                    "devices/node-t/commands/fan",
                    now_ms(),
                ),
            ),
        ),
        (
            "too old",
            fan.clone(),
            jose(
                &ops,
                "ops-1",
                &claims(json!({"id":"r6","value":"1"}), &fan, now_ms() - 301_000),
            ),
        ),
        (
            "from the future",
            fan.clone(),
            jose(
                &ops,
                "ops-1",
                &claims(json!({"id":"r7","value":"1"}), &fan, now_ms() + 120_000),
            ),
        ),
    ];
    for (case, topic, token) in cases {
        let answer = device.send(&topic, &token);
        assert_eq!(answer["ok"], false, "{case}: {answer}");
        let error = answer["error"].as_str().unwrap();
        let expected = match case {
            "unsigned" => "not a signed request",
            "unknown kid" => "unknown key id \"ops-9\"",
            "bad signature" => "bad signature",
            "re-targeted to another actuator" => "arrived on \"devices/node-s/commands/valve\"",
            "signed for another device" => "signed for topic \"devices/node-t/commands/fan\"",
            "too old" => "more than security.max_command_age_s (300 s)",
            _ => "in the future",
        };
        assert!(error.contains(expected), "{case}: {error}");
        assert!(
            answer["id"].is_string(),
            "{case}: the answer names the request: {answer}"
        );
        assert_eq!(device.fan(), "0", "{case}: the actuator was written");
        assert_eq!(
            std::fs::read_to_string(device.dir.path().join("valve")).unwrap(),
            "0",
            "{case}"
        );
    }

    // `fieldagent sign`, as an operator would use it with mosquitto_pub.
    let output = crate::util::fieldagent(&[
        "sign",
        "--key",
        ops.to_str().unwrap(),
        "--kid",
        "ops-1",
        "--topic",
        &fan,
        r#"{"id":"s2","value":"1"}"#,
    ]);
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let answer = device.send(&fan, token.trim());
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(device.fan(), "1");
}

#[test]
fn keys_are_read_again_on_sighup_and_operations_are_checked_too() {
    let device = Device::new();
    let old = device.add_key("ops-2025");
    let agent = device.start();
    let fan = device.command_topic("fan");

    // The rotation: the new key added, the agent reloaded, the signer switched, the old key
    // removed, reloaded again.
    let new = device.dir.path().join("ops-2026.key");
    let pair = PKey::generate_ed25519().unwrap();
    std::fs::write(&new, pair.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let signed_new = |id: &str| {
        jose(
            &new,
            "ops-2026",
            &claims(json!({"id":id,"value":"1"}), &fan, now_ms()),
        )
    };
    let answer = device.send(&fan, &signed_new("k1"));
    assert!(
        answer["error"].as_str().unwrap().contains("unknown key id"),
        "{answer}"
    );
    std::fs::write(
        device.keys.join("ops-2026.pem"),
        pair.public_key_to_pem().unwrap(),
    )
    .unwrap();
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    let answer = device.send(&fan, &signed_new("k2"));
    assert_eq!(answer["ok"], true, "{answer}\n{}", agent.log());
    std::fs::remove_file(device.keys.join("ops-2025.pem")).unwrap();
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    let old_token = jose(
        &old,
        "ops-2025",
        &claims(json!({"id":"k3","value":"0"}), &fan, now_ms()),
    );
    let answer = device.send(&fan, &old_token);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("unknown key id \"ops-2025\""),
        "{answer}"
    );
    assert_eq!(device.fan(), "1");

    // Operation requests pass the same check.
    let restart = format!("devices/{ID}/operations/restart");
    publish(
        &device.broker,
        &device.pki,
        &restart,
        r#"{"id":"o1","target":"device"}"#,
    );
    let refused = device
        .operations
        .wait_for(Duration::from_secs(10), |m| m.payload.contains("\"o1\""))
        .expect("a status for o1");
    let refused: Value = serde_json::from_str(&refused.payload).unwrap();
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("not a signed request"),
        "{refused}"
    );
    let token = jose(
        &new,
        "ops-2026",
        &claims(json!({"id":"o2","target":"agent"}), &restart, now_ms()),
    );
    publish(&device.broker, &device.pki, &restart, &token);
    let accepted = device
        .operations
        .wait_for(Duration::from_secs(10), |m| m.payload.contains("\"o2\""))
        .expect("a status for o2");
    assert!(
        accepted.payload.contains("\"accepted\""),
        "{}",
        accepted.payload
    );
}
