//! The merged config as the agent runs it, every default filled in, with where each value comes
//! from (`fieldagent config`): the file and line that set it, or `default`. In the structs' order
//! (broker first), as YAML with each origin as a comment, or as JSON.

use serde_yaml::Value;

use super::ValidConfig;

/// One value of the config: its key path, the value (a scalar, or a list of scalars such as
/// `broker.urls`), and where it is written (`file:line`) or `None` for a default.
pub struct Leaf {
    pub key: String,
    pub value: serde_json::Value,
    pub origin: Option<String>,
}

/// Every value of `config`, in order.
pub fn leaves(config: &ValidConfig) -> Vec<Leaf> {
    let value = serde_yaml::to_value(config.config()).expect("the config serializes");
    let mut out = Vec::new();
    walk(config, "", &value, &mut out);
    out
}

fn is_leaf(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map.is_empty(),
        Value::Sequence(items) => !items
            .iter()
            .any(|item| matches!(item, Value::Mapping(_) | Value::Sequence(_))),
        _ => true,
    }
}

fn walk(config: &ValidConfig, key: &str, value: &Value, out: &mut Vec<Leaf>) {
    if is_leaf(value) && !key.is_empty() {
        out.push(Leaf {
            key: key.to_owned(),
            value: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            origin: config
                .written(key)
                .map(|(file, line, _)| format!("{}:{line}", file.display())),
        });
        return;
    }
    match value {
        Value::Mapping(map) => {
            for (name, child) in map {
                let name = name.as_str().unwrap_or_default();
                let child_key = if key.is_empty() {
                    name.to_owned()
                } else {
                    format!("{key}.{name}")
                };
                walk(config, &child_key, child, out);
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(config, &format!("{key}[{index}]"), item, out);
            }
        }
        _ => {}
    }
}

/// `{"config":{…},"origins":{"key.path":"file:line"|"default",…}}`, in order.
pub fn json(config: &ValidConfig) -> String {
    let origins: Vec<String> = leaves(config)
        .into_iter()
        .map(|leaf| {
            format!(
                "{}:{}",
                serde_json::Value::from(leaf.key),
                serde_json::Value::from(leaf.origin.unwrap_or_else(|| "default".to_owned()))
            )
        })
        .collect();
    format!(
        "{{\"config\":{},\"origins\":{{{}}}}}",
        serde_json::to_string(config.config()).expect("the config serializes"),
        origins.join(",")
    )
}

/// YAML with each value's origin as a comment after it.
pub fn yaml(config: &ValidConfig) -> String {
    let value = serde_yaml::to_value(config.config()).expect("the config serializes");
    let origins: std::collections::HashMap<String, Option<String>> = leaves(config)
        .into_iter()
        .map(|leaf| (leaf.key, leaf.origin))
        .collect();
    let mut text = String::new();
    render(&value, "", "", &origins, &mut text);
    text
}

fn render(
    value: &Value,
    key: &str,
    pad: &str,
    origins: &std::collections::HashMap<String, Option<String>>,
    text: &mut String,
) {
    let Value::Mapping(map) = value else {
        return;
    };
    for (n, (name, child)) in map.iter().enumerate() {
        let name = name.as_str().unwrap_or_default();
        let path = if key.is_empty() {
            name.to_owned()
        } else {
            format!("{key}.{name}")
        };
        // The first key of a list entry follows its "- ".
        let lead = if n == 0 && pad.ends_with("- ") {
            pad.to_owned()
        } else {
            " ".repeat(pad.len())
        };
        if is_leaf(child) {
            let from = origins
                .get(&path)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "default".to_owned());
            let shown = serde_json::to_string(child).unwrap_or_default();
            text.push_str(&format!("{lead}{name}: {shown}  # {from}\n"));
            continue;
        }
        text.push_str(&format!("{lead}{name}:\n"));
        match child {
            Value::Mapping(_) => render(
                child,
                &path,
                &format!("{}  ", " ".repeat(pad.len())),
                origins,
                text,
            ),
            Value::Sequence(items) => {
                for (index, item) in items.iter().enumerate() {
                    let entry = format!("{path}[{index}]");
                    render(
                        item,
                        &entry,
                        &format!("{}- ", " ".repeat(pad.len())),
                        origins,
                        text,
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_says_where_it_comes_from_in_the_structs_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        std::fs::write(
            &main,
            "broker:\n  urls: [\"mqtts://b:8883\"]\n  tls: { ca_file: /ca, cert_file: /c, key_file: /k }\n\
             identity: { client_id: dev-1 }\n\
             sensors:\n  - { name: a, file: /a }\n  - { name: b, file: /b }\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/50-remote.yaml"),
            "telemetry: { interval_s: 5 }\nsensors:\n  - { name: a, remove: true }\n  - { name: c, file: /c }\n",
        )
        .unwrap();
        let (config, _) = crate::config::load(&main).unwrap();
        let leaves = leaves(&config);
        let at = |key: &str| {
            leaves
                .iter()
                .find(|leaf| leaf.key == key)
                .unwrap_or_else(|| panic!("no {key}"))
        };
        assert_eq!(leaves[0].key, "broker.urls");
        assert_eq!(
            at("broker.urls").origin.as_deref(),
            Some(format!("{}:2", main.display()).as_str())
        );
        assert_eq!(at("broker.keepalive_s").origin, None);
        assert_eq!(at("broker.keepalive_s").value, 60);
        let dropin = dir
            .path()
            .join("conf.d/50-remote.yaml")
            .display()
            .to_string();
        assert_eq!(
            at("telemetry.interval_s").origin,
            Some(format!("{dropin}:1"))
        );
        // `a` removed: b is first, from the main file; c from the drop-in.
        assert_eq!(at("sensors[0].name").value, "b");
        assert_eq!(
            at("sensors[0].file").origin,
            Some(format!("{}:7", main.display()))
        );
        assert_eq!(at("sensors[1].name").value, "c");
        assert_eq!(at("sensors[1].file").origin, Some(format!("{dropin}:4")));
        assert_eq!(at("sensors[1].scale").origin, None);

        let text = yaml(&config);
        assert!(
            text.starts_with("broker:\n  urls: [\"mqtts://b:8883\"]  # "),
            "{text}"
        );
        assert!(text.contains("\n  keepalive_s: 60  # default\n"), "{text}");
        assert!(text.contains("sensors:\n- name: \"b\"  # "), "{text}");
        // What it prints is YAML that reads back as the config.
        let back: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, serde_yaml::to_value(config.config()).unwrap());
        let json: serde_json::Value = serde_json::from_str(&json(&config)).unwrap();
        assert_eq!(json["config"]["telemetry"]["interval_s"], 5.0);
        assert_eq!(json["origins"]["broker.keepalive_s"], "default");
        assert_eq!(json["origins"]["sensors[1].file"], format!("{dropin}:4"));
    }
}
