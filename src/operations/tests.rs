use serde_json::json;

use super::engine::{Arrival, Engine, Ledger, KEEP};
use super::*;
use crate::config::{
    ConfigUpdateConfig, LogUploadConfig, OperationsConfig, RestartConfig, SoftwareUpdateConfig,
};

fn config() -> OperationsConfig {
    OperationsConfig {
        software_update: Some(SoftwareUpdateConfig {
            packages: vec!["fieldagent".to_owned()],
            confirm_s: 120.0,
        }),
        config_update: Some(ConfigUpdateConfig {
            names: vec!["50-remote*.yaml".to_owned()],
            confirm_s: 60.0,
        }),
        log_upload: Some(LogUploadConfig { max_lines: 5000 }),
        restart: Some(RestartConfig { device: false }),
    }
}

/// Parses `payload` on `type_name`; the refusal's reason, or "ok".
fn check(type_name: &str, payload: &str, expected: &str) {
    let got = match parse(type_name, payload.as_bytes(), &config()) {
        Ok(_) => "ok".to_owned(),
        Err(refusal) => refusal.reason,
    };
    assert!(
        got.contains(expected),
        "{type_name} {payload}: got {got:?}, expected {expected:?}"
    );
}

#[test]
fn requests_are_checked_against_what_the_config_enables() {
    check(
        "software_update",
        r#"{"id":"u1","package":"fieldagent","version":"1.2.3-1"}"#,
        "ok",
    );
    check(
        "software_update",
        r#"{"id":"u1","package":"openssh-server","version":"1"}"#,
        "is not in operations.software_update.packages",
    );
    check(
        "software_update",
        r#"{"id":"u1","package":"fieldagent","version":"1.2; rm -rf /"}"#,
        "is not a Debian version",
    );
    check(
        "software_update",
        r#"{"id":"u1","package":"fieldagent"}"#,
        "missing \"version\"",
    );
    check(
        "config_update",
        r#"{"id":"c1","name":"50-remote.yaml","content":"telemetry: {}\n"}"#,
        "ok",
    );
    check(
        "config_update",
        r#"{"id":"c1","name":"50-remote.yaml","delete":true}"#,
        "ok",
    );
    check(
        "config_update",
        r#"{"id":"c1","name":"../config.yaml","content":"x"}"#,
        "is not a drop-in name",
    );
    check(
        "config_update",
        r#"{"id":"c1","name":"10-board.yaml","content":"x"}"#,
        "is not a drop-in name",
    );
    check(
        "config_update",
        r#"{"id":"c1","name":"50-remote.yaml","delete":true,"content":"x"}"#,
        "takes no \"content\"",
    );
    check("log_upload", r#"{"id":"l1"}"#, "ok");
    check(
        "log_upload",
        r#"{"id":"l1","lines":5001}"#,
        "must be 1 to 5000",
    );
    check(
        "log_upload",
        r#"{"id":"l1","priority":9}"#,
        "0 (emerg) to 7 (debug)",
    );
    check(
        "log_upload",
        r#"{"id":"l1","since_ts":5,"until_ts":4}"#,
        "is after",
    );
    check("restart", r#"{"id":"r1","target":"agent"}"#, "ok");
    check(
        "restart",
        r#"{"id":"r1","target":"device"}"#,
        "not enabled (operations.restart.device)",
    );
    check(
        "restart",
        r#"{"id":"r1","target":"kernel"}"#,
        "must be \"agent\" or \"device\"",
    );
    check(
        "reboot",
        r#"{"id":"x"}"#,
        "unknown operation type \"reboot\"",
    );
    check(
        "restart",
        r#"{"id":"r1","force":true}"#,
        "unknown parameter \"force\"",
    );
    check("restart", "not json", "malformed: not JSON");
    check("restart", r#"{"target":"agent"}"#, "missing \"id\"");
    // A signed request's envelope fields pass (the signature was checked before).
    check(
        "restart",
        r#"{"id":"r1","topic":"devices/x/operations/restart","iat":1}"#,
        "ok",
    );
    let disabled = OperationsConfig::default();
    let refusal = parse("restart", br#"{"id":"r1"}"#, &disabled).unwrap_err();
    assert!(refusal.reason.starts_with("not enabled"), "{refusal:?}");
    assert_eq!(refusal.id.as_deref(), Some("r1"));
}

fn request(id: &str, params: Params) -> Request {
    Request {
        id: id.to_owned(),
        params,
        expires_ts: None,
    }
}

fn logs() -> Params {
    Params::LogUpload {
        since_ts: None,
        until_ts: None,
        lines: 10,
        priority: None,
        grep: None,
    }
}

fn update() -> Params {
    Params::SoftwareUpdate {
        package: "fieldagent".to_owned(),
        version: "2".to_owned(),
    }
}

fn state_of(answer: &Arrival) -> serde_json::Value {
    match answer {
        Arrival::Answered(json) => serde_json::from_str(json).unwrap(),
        Arrival::Accepted(op) => serde_json::from_str(&status_json(op, false)).unwrap(),
    }
}

#[test]
fn one_of_a_kind_at_a_time_and_an_update_or_restart_alone() {
    let mut engine = Engine::default();
    let before = Before::default();
    assert!(matches!(
        engine.arrive(request("l1", logs()), 1, before.clone()),
        Arrival::Accepted(_)
    ));
    let busy = state_of(&engine.arrive(request("l2", logs()), 2, before.clone()));
    assert_eq!(busy["state"], "failed");
    assert!(
        busy["reason"]
            .as_str()
            .unwrap()
            .starts_with("busy: log_upload l1 is running"),
        "{busy}"
    );
    // An update runs alone: refused while the upload runs.
    let busy = state_of(&engine.arrive(request("u1", update()), 3, before.clone()));
    assert!(
        busy["reason"].as_str().unwrap().contains("runs alone"),
        "{busy}"
    );
    engine
        .set(
            "l1",
            State::Successful {
                result: json!({"chunks":1}),
            },
            4,
        )
        .unwrap();
    // A busy refusal is not recorded: the same id may come again.
    assert!(matches!(
        engine.arrive(request("u1", update()), 5, before.clone()),
        Arrival::Accepted(_)
    ));
    // Nothing else while it runs.
    let busy = state_of(&engine.arrive(request("l3", logs()), 6, before.clone()));
    assert!(
        busy["reason"]
            .as_str()
            .unwrap()
            .contains("nothing else starts"),
        "{busy}"
    );
}

#[test]
fn a_repeated_id_gets_its_last_state_and_exactly_one_terminal_state() {
    let mut engine = Engine::default();
    let before = Before::default();
    engine.arrive(request("l1", logs()), 1, before.clone());
    let executing = engine
        .set(
            "l1",
            State::Executing {
                step: "reading".to_owned(),
            },
            2,
        )
        .unwrap();
    assert_eq!(executing.ts, 2);
    assert!(!executing.published);
    let again = state_of(&engine.arrive(request("l1", logs()), 3, before.clone()));
    assert_eq!(again["state"], "executing");
    assert_eq!(again["step"], "reading");
    assert_eq!(again["duplicate"], true);
    engine
        .set(
            "l1",
            State::Failed {
                reason: "x".to_owned(),
            },
            4,
        )
        .unwrap();
    assert_eq!(
        engine.set("l1", State::Successful { result: json!({}) }, 5),
        None,
        "one terminal state"
    );
    assert_eq!(
        engine.set(
            "l1",
            State::Executing {
                step: "again".to_owned()
            },
            5
        ),
        None
    );
    let again = state_of(&engine.arrive(request("l1", logs()), 6, before));
    assert_eq!(
        (
            again["state"].as_str(),
            again["reason"].as_str(),
            again["duplicate"].as_bool()
        ),
        (Some("failed"), Some("x"), Some(true))
    );
}

#[test]
fn a_start_decides_what_was_left_unfinished() {
    let mut engine = Engine::default();
    let before = Before {
        started_ts: 100,
        boot_id: "boot-a".to_owned(),
        version: "1".to_owned(),
    };
    engine.arrive(request("l1", logs()), 1, before.clone());
    engine.arrive(
        request(
            "r1",
            Params::Restart {
                target: Target::Agent,
            },
        ),
        2,
        before.clone(),
    );
    // (r1 was refused as busy: l1 ran.)
    let mut engine = Engine::new(Ledger {
        operations: engine.ledger().operations.clone(),
    });
    engine.set("l1", State::Successful { result: json!({}) }, 3);
    engine.arrive(
        request(
            "r2",
            Params::Restart {
                target: Target::Agent,
            },
        ),
        4,
        before.clone(),
    );
    engine.arrive(request("x1", logs()), 5, before);
    // The restart is proven by a new start time; anything else with nothing to prove it ends
    // interrupted.
    let changed = engine.resume(10, |op| match &op.params {
        Params::Restart { .. } => Some(State::Successful {
            result: json!({"started_ts": 200}),
        }),
        _ => None,
    });
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].id, "r2");
    assert!(engine.running().next().is_none());
    assert_eq!(engine.get("x1"), None, "refused as busy, never recorded");
}

#[test]
fn unfinished_without_proof_ends_interrupted_and_unpublished_states_are_pushed_again() {
    let mut engine = Engine::default();
    engine.arrive(request("l1", logs()), 1, Before::default());
    engine.published("l1");
    assert!(engine.unpublished().is_empty());
    let changed = engine.resume(9, |_| None);
    assert_eq!(changed.len(), 1);
    match &changed[0].state {
        State::Failed { reason } => assert!(reason.starts_with("interrupted"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        engine.unpublished().len(),
        1,
        "the new state is to be pushed"
    );
}

#[test]
fn the_ledger_keeps_running_operations_and_the_newest_finished() {
    let mut engine = Engine::default();
    for n in 0..(KEEP + 20) {
        let id = format!("l{n}");
        engine.arrive(request(&id, logs()), n as u64, Before::default());
        engine.set(&id, State::Successful { result: json!({}) }, n as u64);
        engine.published(&id);
    }
    assert!(engine.ledger().operations.len() <= KEEP + 1);
    let summaries = engine.summaries();
    assert_eq!(summaries.len(), RECENT);
    assert_eq!(summaries.last().unwrap().id, format!("l{}", KEEP + 19));
    // Round trip through the file's form.
    let text = serde_json::to_string(engine.ledger()).unwrap();
    let back: Ledger = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, engine.ledger());
}

#[test]
fn versions() {
    for (version, ok, upstream) in [
        ("1.2.3", true, "1.2.3"),
        ("1.2.3-1", true, "1.2.3"),
        ("2:1.0~rc1-3+deb12u1", true, "1.0~rc1"),
        ("a1", false, "a1"),
        ("1.0 ; ls", false, "1.0 ; ls"),
    ] {
        assert_eq!(debian_version(version), ok, "{version}");
        assert_eq!(upstream_version(version), upstream, "{version}");
    }
}
