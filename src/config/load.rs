//! YAML text to [`Config`], with a key path, line and column on every problem.
//!
//! serde stops at the first error it meets, so each top-level section and each list entry is
//! deserialized on its own: a broken sensor does not hide a broken alert. The key path of a serde
//! error comes from `serde_path_to_error`; its line and column come from a [`Positions`] index built
//! from the YAML event stream (`positions`), since serde_yaml forgets positions once the text is a
//! `Value`. What a file may cost is bounded before it is parsed: its size, and no aliases.

use std::path::{Path, PathBuf};

use super::finding::{Finding, Findings};
use super::positions::Positions;
use super::validate::{validate, ValidConfig};
use super::{
    ActuatorConfig, AlertConfig, Config, IdentityConfig, LogConfig, OperationsConfig,
    SecurityConfig, SensorConfig, SparkplugConfig, TelemetryConfig, TopicsConfig,
};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// Why a config cannot be used. Every variant is a config error (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read, but has at least one error-level finding.
    #[error("{0}")]
    Invalid(Findings),
}

const SECTIONS: &[&str] = &[
    "broker",
    "identity",
    "topics",
    "state_dir",
    "sysfs_root",
    "telemetry",
    "sensors",
    "alerts",
    "actuators",
    "sparkplug",
    "operations",
    "security",
    "log",
];

/// Reads, parses and validates the config at `path`. Warnings and notes come back with the valid
/// config; any error refuses it.
pub fn load(path: &Path) -> Result<(ValidConfig, Findings), ConfigError> {
    let (config, findings) = inspect(path)?;
    match config {
        Some(config) if !findings.has_errors() => Ok((config, findings)),
        _ => Err(ConfigError::Invalid(findings)),
    }
}

/// As [`load`], for text already in memory; `path` only names the file in findings.
pub fn load_str(text: &str, path: &Path) -> Result<(ValidConfig, Findings), ConfigError> {
    match inspect_str(text, path) {
        (Some(config), findings) if !findings.has_errors() => Ok((config, findings)),
        (_, findings) => Err(ConfigError::Invalid(findings)),
    }
}

/// The most one config file may hold; more is refused unread. A config of 10 000 sensors is
/// about a megabyte; reading one costs about 35 bytes of memory a byte (`bench/config`).
pub const MAX_FILE_BYTES: u64 = 2 << 20;

/// The most the config file and its drop-ins may hold together: what a config can cost to read
/// is bounded by this (`bench/config` measures the largest).
pub const MAX_TOTAL_BYTES: u64 = 2 << 20;

/// For `check`: reads and parses the file and returns every finding together with whatever
/// parsed, even when findings contain errors, so certificates and sensors can still be probed.
/// The config is `None` only when the file is not YAML or not a mapping.
pub fn inspect(path: &Path) -> Result<(Option<ValidConfig>, Findings), ConfigError> {
    inspect_with(path, None)
}

/// A drop-in as a remote change would make it: `name` in `conf.d/` with `content`, or deleted
/// when `content` is `None`.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub content: Option<&'a str>,
}

/// [`inspect`] of the config as it would be with `candidate` in place of what `conf.d/` holds
/// under its name (nothing on disk is changed).
pub fn inspect_with(
    path: &Path,
    candidate: Option<Candidate>,
) -> Result<(Option<ValidConfig>, Findings), ConfigError> {
    let mut budget = MAX_TOTAL_BYTES;
    let mut findings = Vec::new();
    let text = match read_bounded(path, &mut budget)? {
        Ok(text) => text,
        Err(finding) => {
            return Ok((
                None,
                Findings {
                    file: path.to_owned(),
                    items: vec![finding],
                },
            ))
        }
    };
    let (dropins, refused) = super::dropin::files(path).map_err(|source| ConfigError::Read {
        path: super::dropin::directory(path),
        source,
    })?;
    findings.extend(refused);
    let mut texts = vec![(path.to_owned(), text)];
    let replaced = candidate.map(|c| super::dropin::directory(path).join(c.name));
    for file in dropins {
        if Some(&file) == replaced.as_ref() {
            continue;
        }
        match read_bounded(&file, &mut budget)? {
            Ok(text) => texts.push((file, text)),
            Err(mut finding) => {
                finding.file = Some(file);
                findings.push(finding);
            }
        }
    }
    if let (
        Some(file),
        Some(Candidate {
            content: Some(content),
            ..
        }),
    ) = (replaced, candidate)
    {
        if content.len() as u64 > budget {
            let mut finding = Finding::error(
                "",
                format!(
                    "refused: with it the config file and its drop-ins would hold more than {} MiB",
                    MAX_TOTAL_BYTES >> 20
                ),
            );
            finding.file = Some(file);
            findings.push(finding);
        } else {
            texts.push((file, content.to_owned()));
            // Drop-ins apply in name order.
            texts[1..].sort_by(|a, b| a.0.cmp(&b.0));
        }
    }
    Ok(inspect_many(&texts, path, findings))
}

/// Reads a config file of at most [`MAX_FILE_BYTES`] and what is left of `budget`; a larger
/// one is an error finding, not read. A file that cannot be read at all is a `ConfigError`.
fn read_bounded(path: &Path, budget: &mut u64) -> Result<Result<String, Finding>, ConfigError> {
    use std::io::Read;
    let failed = |source: std::io::Error| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let size = file.metadata().map_err(failed)?.len();
    let limit = MAX_FILE_BYTES.min(*budget);
    if size > limit {
        let why = if size > MAX_FILE_BYTES {
            format!(
                "a config file may hold at most {} MiB",
                MAX_FILE_BYTES >> 20
            )
        } else {
            format!(
                "the config file and its drop-ins may hold at most {} MiB together",
                MAX_TOTAL_BYTES >> 20
            )
        };
        return Ok(Err(Finding::error(
            "",
            format!("refused unread: {size} bytes; {why}"),
        )));
    }
    let mut text = String::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(failed)?;
    if text.len() as u64 > limit {
        return Ok(Err(Finding::error(
            "",
            format!("refused: it grew past {limit} bytes while being read"),
        )));
    }
    *budget -= text.len() as u64;
    Ok(Ok(text))
}

/// The config file and its drop-ins (`texts[0]` is the config file), merged, with `found`
/// (what was found about the drop-in directory) among the findings. Findings come in file
/// order: the config file's first, by line and column, then each drop-in's.
fn inspect_many(
    texts: &[(PathBuf, String)],
    path: &Path,
    found: Vec<Finding>,
) -> (Option<ValidConfig>, Findings) {
    let (config, mut findings) = inspect_texts(texts, path, found);
    findings.items = findings
        .items
        .into_iter()
        .map(super::finding::redacted)
        .collect();
    (config, findings)
}

fn inspect_texts(
    texts: &[(PathBuf, String)],
    path: &Path,
    found: Vec<Finding>,
) -> (Option<ValidConfig>, Findings) {
    let mut findings = Findings {
        file: path.to_owned(),
        items: found,
    };
    let mut indexes = Vec::with_capacity(texts.len());
    let mut documents = Vec::with_capacity(texts.len());
    for (number, (file, text)) in texts.iter().enumerate() {
        let named = (number > 0).then(|| file.clone());
        let index = Positions::index(text).and_then(|positions| {
            let document = serde_yaml::from_str::<Value>(text).map_err(|err| {
                let mut finding =
                    Finding::error("", format!("not valid YAML: {}", strip_location(&err)));
                finding.position = err.location().map(|l| (l.line(), l.column()));
                finding
            })?;
            match document {
                Value::Mapping(_) | Value::Null => Ok((positions, document)),
                other if number > 0 => Err(Finding::error(
                    "",
                    format!(
                        "a drop-in is a mapping of sections, found {}",
                        describe(&other)
                    ),
                )),
                other => Ok((positions, other)),
            }
        });
        match index {
            Ok((positions, document)) => {
                indexes.push(positions.into_index());
                documents.push(document);
            }
            Err(mut finding) => {
                finding.file = named;
                findings.items.push(finding);
            }
        }
    }
    if findings.has_errors() {
        return (None, findings);
    }
    let merged = super::dropin::merge(documents);
    let (document, origins) = (merged.value, merged.origins);
    for (file, mut finding) in merged.findings {
        finding.position = indexes
            .get(file)
            .and_then(|index| index.get(&finding.key))
            .map(|&(_, line, column)| (line, column));
        finding.file = (file > 0).then(|| texts[file].0.clone());
        findings.items.push(finding);
    }
    let files = texts.iter().map(|(file, _)| file.clone()).collect();
    let positions = Positions::merged(indexes, files, origins);
    let parsed = parse_document(document, &mut findings.items);
    let valid =
        parsed.and_then(|(config, partial)| validate(config, &partial, &mut findings.items));
    positions.locate(&mut findings.items);
    {
        let rank = positions.file_ranks();
        findings.items.sort_by_key(|f| {
            (
                f.file.as_ref().map_or(0, &rank),
                f.position.unwrap_or((usize::MAX, 0)),
            )
        });
    }
    (valid.map(|valid| valid.with_positions(positions)), findings)
}

/// One text with no drop-ins: the same path as a file with its drop-ins.
fn inspect_str(text: &str, path: &Path) -> (Option<ValidConfig>, Findings) {
    inspect_many(&[(path.to_owned(), text.to_owned())], path, Vec::new())
}

/// What validation needs to know about entries that failed to parse: it reports nothing more
/// about them, and keeps naming list entries by their index in the file.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    /// Names of sensors whose entry did not parse; references to them are not reported.
    pub sensor_names: Vec<String>,
    /// The file index of each parsed entry of `sensors`, `alerts`, `actuators`.
    pub sensor_index: Vec<usize>,
    pub alert_index: Vec<usize>,
    pub actuator_index: Vec<usize>,
    /// The broker section did not parse; its defaults stand in and are not checked.
    pub broker_failed: bool,
}

fn parse_document(document: Value, findings: &mut Vec<Finding>) -> Option<(Config, Partial)> {
    let mapping = match document {
        Value::Mapping(mapping) => mapping,
        Value::Null => {
            findings.push(Finding::error(
                "",
                "expected a mapping with at least broker.urls, found an empty file",
            ));
            return None;
        }
        other => {
            findings.push(Finding::error(
                "",
                format!("expected a mapping of sections, found {}", describe(&other)),
            ));
            return None;
        }
    };

    let mut partial = Partial::default();
    let mut config = Config {
        broker: serde_yaml::from_value(Value::Mapping(Default::default()))
            .expect("every broker key has a default"),
        identity: IdentityConfig::default(),
        topics: TopicsConfig::default(),
        state_dir: super::default_state_dir(),
        sysfs_root: super::default_sysfs_root(),
        telemetry: TelemetryConfig::default(),
        sensors: Vec::new(),
        alerts: Vec::new(),
        actuators: Vec::new(),
        sparkplug: None,
        operations: OperationsConfig::default(),
        security: SecurityConfig::default(),
        log: LogConfig::default(),
    };
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_owned) else {
            findings.push(Finding::error(
                "",
                format!("expected section names as keys, found {}", describe(&key)),
            ));
            continue;
        };
        match key.as_str() {
            "broker" => match section(value, &key, findings) {
                Some(broker) => config.broker = broker,
                None => partial.broker_failed = true,
            },
            "identity" => set(
                &mut config.identity,
                section::<IdentityConfig>(value, &key, findings),
            ),
            "topics" => set(
                &mut config.topics,
                section::<TopicsConfig>(value, &key, findings),
            ),
            "state_dir" => set(&mut config.state_dir, section(value, &key, findings)),
            "sysfs_root" => set(&mut config.sysfs_root, section(value, &key, findings)),
            "telemetry" => set(&mut config.telemetry, section(value, &key, findings)),
            "sensors" => {
                let parsed = list::<SensorConfig>(value, &key, findings, |item| {
                    if let Some(name) = item.get("name").and_then(Value::as_str) {
                        partial.sensor_names.push(name.to_owned());
                    }
                });
                (partial.sensor_index, config.sensors) = parsed.into_iter().unzip();
            }
            "alerts" => {
                let parsed = list::<AlertConfig>(value, &key, findings, |_| {});
                (partial.alert_index, config.alerts) = parsed.into_iter().unzip();
            }
            "actuators" => {
                let parsed = list::<ActuatorConfig>(value, &key, findings, |_| {});
                (partial.actuator_index, config.actuators) = parsed.into_iter().unzip();
            }
            "sparkplug" => {
                config.sparkplug = section::<Option<SparkplugConfig>>(value, &key, findings)?
            }
            "operations" => set(&mut config.operations, section(value, &key, findings)),
            "security" => set(&mut config.security, section(value, &key, findings)),
            "log" => set(&mut config.log, section(value, &key, findings)),
            _ => findings.push(Finding::error(
                key.as_str(),
                format!(
                    "unknown key; {}expected one of {}",
                    did_you_mean(&key, SECTIONS.iter().copied())
                        .map(|guess| format!("did you mean `{guess}`? "))
                        .unwrap_or_default(),
                    SECTIONS.join(", ")
                ),
            )),
        }
    }
    Some((config, partial))
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Deserializes one section, reporting a failure as a finding under `prefix`.
fn section<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    findings: &mut Vec<Finding>,
) -> Option<T> {
    deserialize(value, prefix, findings).ok()
}

/// Deserializes a list entry by entry, so every broken entry is reported. Returns each parsed
/// entry with its index in the file; `on_failure` sees the raw entry that did not parse.
fn list<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    findings: &mut Vec<Finding>,
    mut on_failure: impl FnMut(&Value),
) -> Vec<(usize, T)> {
    let items = match value {
        Value::Sequence(items) => items,
        Value::Null => return Vec::new(),
        other => {
            findings.push(Finding::error(
                prefix,
                format!("expected a list, found {}", describe(&other)),
            ));
            return Vec::new();
        }
    };
    let mut parsed = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match deserialize(item, &format!("{prefix}[{index}]"), findings) {
            Ok(entry) => parsed.push((index, entry)),
            Err(item) => on_failure(&item),
        }
    }
    parsed
}

/// Deserializes `value`, reporting failures under `prefix`. An unknown key is reported, removed
/// and the value tried again, so one typo does not hide the rest of its section. Any other
/// failure gives the value back.
fn deserialize<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
    findings: &mut Vec<Finding>,
) -> Result<T, Value> {
    // Bounded: each retry removes one key, and a config has few.
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(parsed) => return Ok(parsed),
            Err(err) => err,
        };
        findings.push(serde_finding(prefix, &err));
        if !err.inner().to_string().starts_with("unknown field `")
            || !remove_at(&mut value, err.path())
        {
            return Err(value);
        }
    }
    Err(value)
}

/// Removes the key that `path` ends in; false when the path does not lead to a mapping key.
fn remove_at(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&serde_path_to_error::Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        node = match (segment, node) {
            (serde_path_to_error::Segment::Map { key }, Value::Mapping(map)) => {
                match map.get_mut(key.as_str()) {
                    Some(child) => child,
                    None => return false,
                }
            }
            (serde_path_to_error::Segment::Seq { index }, Value::Sequence(items)) => {
                match items.get_mut(*index) {
                    Some(child) => child,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (last, node) {
        (serde_path_to_error::Segment::Map { key }, Value::Mapping(map)) => {
            map.remove(key.as_str()).is_some()
        }
        _ => false,
    }
}

/// Turns a serde error into a finding with the full key path and a message in the house form
/// "expected X, found Y".
fn serde_finding(prefix: &str, err: &serde_path_to_error::Error<serde_yaml::Error>) -> Finding {
    let mut key = prefix.to_owned();
    for segment in err.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key: name } => {
                key.push('.');
                key.push_str(name);
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let raw = strip_location(err.inner());
    let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        if !key.ends_with(&format!(".{name}")) {
            key.push('.');
            key.push_str(name);
        }
        let expected = expected
            .trim_start_matches(", expected ")
            .trim_start_matches("one of ")
            .replace('`', "");
        let guess = did_you_mean(name, expected.split(", "))
            .map(|guess| format!("did you mean `{guess}`? "))
            .unwrap_or_default();
        if expected.is_empty() {
            "unknown key".to_owned()
        } else {
            format!("unknown key; {guess}expected one of {expected}")
        }
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        format!("missing required key `{name}`")
    } else if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let (found, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(", expected ").replace('`', "");
        format!("expected {expected}, found \"{found}\"")
    } else if let Some((found, expected)) = raw
        .strip_prefix("invalid type: ")
        .or_else(|| raw.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "))
    {
        format!("expected {}, found {found}", plain_type(expected))
    } else {
        raw
    };
    Finding::error(key, message)
}

/// serde's names of Rust types in words a config's reader knows.
fn plain_type(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        other => other
            .replace("a sequence", "a list")
            .replace("struct ", "a mapping of ")
            .replace("a map", "a mapping"),
    }
}

/// The closest of `candidates` to a misspelt `name`, when it is close enough to be meant: an
/// edit distance of at most 2, and at most a third of the name.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 2);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// serde_yaml appends " at line L column C" to some messages; positions are reported separately.
fn strip_location(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(tagged) => format!("tagged value {}", tagged.tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_key_gets_a_suggestion_and_types_read_plainly() {
        let (_, findings) = inspect_str(
            "broker: { urls: [\"mqtts://a\"], keepalive: 60, connect_timeout_s: soon }\nsensor: []\n",
            Path::new("c.yaml"),
        );
        let text = findings.to_string();
        assert!(
            text.contains("broker.keepalive: unknown key; did you mean `keepalive_s`?"),
            "{text}"
        );
        assert!(
            text.contains("sensor: unknown key; did you mean `sensors`?"),
            "{text}"
        );
        assert!(
            text.contains(
                "connect_timeout_s: expected a whole number, 0 or more, found string \"soon\""
            ),
            "{text}"
        );
        assert_eq!(did_you_mean("zzz", ["broker", "log"]), None);
    }

    /// tck-id-case-sensitivity-metric-names: an edge node should not publish metric names that
    /// match in lower case; `check` warns (the config stays valid).
    #[test]
    fn sparkplug_names_that_differ_only_in_case_are_warned_about() {
        let yaml = "broker: { urls: [\"mqtts://a\"], tls: { ca_file: /etc/ssl/certs/ca-certificates.crt } }\n\
            sensors:\n  - { name: Temp, file: /run/a }\n  - { name: temp, file: /run/b }\n  - { name: other, file: /run/c }\n\
            sparkplug: { group_id: plant1 }\n";
        let (valid, findings) = inspect_str(yaml, Path::new("c.yaml"));
        let text = findings.to_string();
        assert!(valid.is_some(), "{text}");
        assert!(
            text.contains("sensors[1].name: \"temp\" differs from \"Temp\" only in case"),
            "{text}"
        );
        assert!(!text.contains("sensors[2].name"), "{text}");
        // Not in plain mode, where names are JSON keys and case tells them apart.
        let plain = yaml.replace("sparkplug: { group_id: plant1 }\n", "");
        let (_, findings) = inspect_str(&plain, Path::new("c.yaml"));
        assert!(!findings.to_string().contains("only in case"), "{findings}");
    }
}
