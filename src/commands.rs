//! Remote commands as data: what a command asks ([`parse`], pure) and its answer ([`Response`]).
//!
//! A command arrives on `{prefix}/commands/{name}` as `{"id":"…","value":"1"}`. `{name}` is an
//! actuator of the allow-list or a built-in (`ping`, `read`). Whatever a remote party sends gets
//! an answer on `{prefix}/responses` (`ok:false` with a reason for anything wrong) and nothing it
//! sends can crash the agent or touch a path outside the allow-list. Parsing is apart from
//! executing: the daemon's executor (`daemon::commands`) runs what [`parse`] allowed, and the
//! one write a command makes is `crate::actuators::set`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::actuators::Target;
use crate::config::ActuatorSpec;

/// Payloads larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 4096;

/// What a command asks for, once checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Ping,
    Read,
    /// Set `target` to `value` (one of the actuator's allowed values).
    Write {
        target: Target,
        value: String,
    },
}

/// A parsed, allowed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub name: String,
    pub action: Action,
    pub expires_ts: Option<u64>,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Null when the payload was too broken to carry an id.
    pub id: Option<String>,
    pub command: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// What a built-in answers with (`uptime_s`, `version`, `values`, …).
    #[serde(flatten)]
    pub data: Map<String, Value>,
}

impl Response {
    pub fn ok(id: &str, command: &str) -> Response {
        Response {
            id: Some(id.to_owned()),
            command: command.to_owned(),
            ok: true,
            error: None,
            duplicate: false,
            data: Map::new(),
        }
    }

    pub fn refused(id: Option<&str>, command: &str, error: impl Into<String>) -> Response {
        Response {
            id: id.map(str::to_owned),
            command: command.to_owned(),
            ok: false,
            error: Some(error.into()),
            duplicate: false,
            data: Map::new(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a response always serializes")
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    id: Option<Value>,
    value: Option<Value>,
    expires_ts: Option<Value>,
}

/// Checks one incoming command. `name` is the last topic level.
pub fn parse(name: &str, payload: &[u8], actuators: &[ActuatorSpec]) -> Result<Command, Response> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Response::refused(
            None,
            name,
            format!(
                "payload of {} bytes is over the limit of {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let parsed: Payload = serde_json::from_slice(payload).map_err(|err| {
        Response::refused(
            None,
            name,
            format!("expected a JSON object like {{\"id\":\"…\",\"value\":\"1\"}}: {err}"),
        )
    })?;
    let id = match parsed.id {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id,
        Some(Value::String(_)) => {
            return Err(Response::refused(
                None,
                name,
                "expected an id of 1 to 128 characters",
            ))
        }
        Some(other) => {
            return Err(Response::refused(
                None,
                name,
                format!("expected the id as a string, found {other}"),
            ))
        }
        None => return Err(Response::refused(None, name, "missing \"id\"")),
    };
    let refuse = |reason: String| Response::refused(Some(&id), name, reason);
    let expires_ts = match parsed.expires_ts {
        None => None,
        Some(Value::Number(number)) if number.as_u64().is_some() => number.as_u64(),
        Some(other) => {
            return Err(refuse(format!(
                "expected expires_ts as Unix milliseconds, found {other}"
            )))
        }
    };
    let value = match parsed.value {
        None => None,
        Some(Value::String(value)) => Some(value),
        // Numbers and booleans are what a file would hold as text.
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::Bool(flag)) => Some(flag.to_string()),
        Some(other) => {
            return Err(refuse(format!(
                "expected the value as a string, found {other}"
            )))
        }
    };
    let action = match name {
        "ping" => Action::Ping,
        "read" => Action::Read,
        _ => {
            let Some(actuator) = actuators.iter().find(|a| a.name == name) else {
                let mut known: Vec<&str> = actuators.iter().map(|a| a.name.as_str()).collect();
                known.extend(["ping", "read"]);
                return Err(refuse(format!(
                    "unknown command \"{name}\"; this device accepts {}",
                    known.join(", ")
                )));
            };
            Action::Write {
                target: actuator.target.clone(),
                value: allowed_value(actuator, value).map_err(refuse)?,
            }
        }
    };
    Ok(Command {
        id,
        name: name.to_owned(),
        action,
        expires_ts,
    })
}

/// `value`, if `actuator`'s allow-list has it; else why not.
pub fn allowed_value(actuator: &ActuatorSpec, value: Option<String>) -> Result<String, String> {
    let name = &actuator.name;
    let Some(value) = value else {
        return Err(format!(
            "missing \"value\"; {name} accepts {}",
            actuator.values.join(", ")
        ));
    };
    if !actuator.values.contains(&value) {
        return Err(format!(
            "value \"{}\" is not allowed; {name} accepts {}",
            value.escape_debug(),
            actuator.values.join(", ")
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actuators() -> Vec<ActuatorSpec> {
        vec![ActuatorSpec {
            key: "actuators[0]".to_owned(),
            name: "fan".to_owned(),
            target: Target::File("/sys/class/leds/fan/brightness".into()),
            values: vec!["0".to_owned(), "1".to_owned()],
        }]
    }

    fn check(name: &str, payload: &str, expected: Result<Action, &str>) {
        match (parse(name, payload.as_bytes(), &actuators()), expected) {
            (Ok(command), Ok(action)) => assert_eq!(command.action, action, "{payload}"),
            (Err(response), Err(fragment)) => {
                assert!(!response.ok);
                let error = response.error.unwrap();
                assert!(error.contains(fragment), "{payload}: {error}");
            }
            (got, expected) => panic!("{name} {payload}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn commands() {
        let fan = |value: &str| Action::Write {
            target: Target::File("/sys/class/leds/fan/brightness".into()),
            value: value.to_owned(),
        };
        check("fan", r#"{"id":"a1","value":"1"}"#, Ok(fan("1")));
        check("fan", r#"{"id":"a2","value":0}"#, Ok(fan("0")));
        check("ping", r#"{"id":"p"}"#, Ok(Action::Ping));
        check("read", r#"{"id":"r","value":"ignored"}"#, Ok(Action::Read));
        check(
            "fan",
            r#"{"id":"a3","value":"2"}"#,
            Err("value \"2\" is not allowed; fan accepts 0, 1"),
        );
        check("fan", r#"{"id":"a4"}"#, Err("missing \"value\""));
        check(
            "pump",
            r#"{"id":"a5","value":"1"}"#,
            Err("unknown command \"pump\"; this device accepts fan, ping, read"),
        );
        check("fan", r#"{"value":"1"}"#, Err("missing \"id\""));
        check(
            "fan",
            r#"{"id":7,"value":"1"}"#,
            Err("expected the id as a string, found 7"),
        );
        check("fan", "not json", Err("expected a JSON object"));
        check(
            "fan",
            r#"{"id":"a6","value":"1","expires_ts":"soon"}"#,
            Err("expected expires_ts as Unix milliseconds"),
        );
        check(
            "fan",
            &format!(r#"{{"id":"big","value":"{}"}}"#, "1".repeat(5000)),
            Err("over the limit of 4096"),
        );
        check(
            "fan",
            r#"{"id":"a7","value":["1"]}"#,
            Err("expected the value as a string"),
        );
    }

    #[test]
    fn responses() {
        assert_eq!(
            Response::ok("a1", "fan").to_json(),
            r#"{"id":"a1","command":"fan","ok":true}"#
        );
        assert_eq!(
            Response::refused(None, "fan", "bad").to_json(),
            r#"{"id":null,"command":"fan","ok":false,"error":"bad"}"#
        );
        let mut duplicate = Response::ok("a1", "fan");
        duplicate.duplicate = true;
        assert_eq!(
            duplicate.to_json(),
            r#"{"id":"a1","command":"fan","ok":true,"duplicate":true}"#
        );
    }
}
