//! Drop-in configuration: every `*.yaml` in `conf.d/` beside the config file, in name order,
//! merged over it. A map key overrides (maps merge key by key, all the way down; a scalar or a
//! list replaces what was there); `sensors`, `alerts` and `actuators` merge entry by entry by
//! `name`: the same name replaces the entry in place, a new name is appended, and
//! `{ name: X, remove: true }` removes the entry named X.
//!
//! The merge records where each part of the result came from ([`Origin`]), so a finding about
//! the merged config names the file, the key path as written there (`sensors[0]` of the drop-in,
//! not the merged list's index) and its line and column.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::finding::Finding;

/// The lists whose entries merge by `name`.
const NAMED_LISTS: &[&str] = &["sensors", "alerts", "actuators"];

/// The directory of drop-ins for the config at `path`.
pub fn directory(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).join("conf.d")
}

/// The drop-ins for the config at `path`, in name order: every `*.yaml` in `conf.d/` that is
/// not hidden, each a
/// regular file (not a symlink, which could put another file's contents into findings and the
/// journal), owned by root or by the user the agent runs as, and not writable by others. What
/// is refused is an error finding; any other entry (but the package's `README`) is a warning,
/// never skipped in silence. A missing directory is none; one that cannot be read is an error.
pub fn files(path: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<Finding>)> {
    use std::os::unix::fs::MetadataExt;
    let dir = directory(path);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()))
        }
        Err(err) => return Err(err),
    };
    let euid = nix::unistd::geteuid().as_raw();
    let mut files = Vec::new();
    let mut findings = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file = entry.path();
        let finding = |mut finding: Finding| {
            finding.file = Some(file.clone());
            finding
        };
        if !name.ends_with(".yaml") {
            if name != "README" {
                findings.push(finding(Finding::warning(
                    "",
                    "not read: only files ending in .yaml in conf.d/ are drop-ins",
                )));
            }
            continue;
        }
        if name.starts_with('.') {
            findings.push(finding(Finding::warning(
                "",
                "not read: a hidden file is not a drop-in (an editor's or a tool's temporary file)",
            )));
            continue;
        }
        let metadata = std::fs::symlink_metadata(&file)?;
        let refused = if metadata.file_type().is_symlink() {
            Some("a symlink; a drop-in must be a regular file in conf.d/ itself".to_owned())
        } else if !metadata.is_file() {
            Some("not a regular file".to_owned())
        } else if metadata.uid() != 0 && metadata.uid() != euid {
            Some(format!(
                "owned by uid {}, neither root nor the user the agent runs as (uid {euid})",
                metadata.uid()
            ))
        } else if metadata.mode() & 0o002 != 0 {
            Some("writable by every user; chmod o-w it".to_owned())
        } else {
            None
        };
        match refused {
            Some(why) => findings.push(finding(Finding::error("", format!("refused: {why}")))),
            None => files.push(file),
        }
    }
    files.sort();
    findings.sort_by(|a, b| a.file.cmp(&b.file));
    Ok((files, findings))
}

/// Where a subtree of the merged config came from: the subtree at `merged` is the one at
/// `source` in file number `file` (0 is the main config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub merged: String,
    pub file: usize,
    pub source: String,
}

/// Whether `key` is `prefix` or lies under it (`prefix.x`, `prefix[3]`).
pub fn under(key: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// What a merge made of `documents`: the merged config, where each part came from, and what
/// was wrong with a removal (`(file, finding)`, the finding's key as that file writes it).
pub struct Merged {
    pub value: Value,
    pub origins: Vec<Origin>,
    pub findings: Vec<(usize, Finding)>,
}

/// Marks an entry a removal took out, until the merge drops it.
const REMOVED: &str = "!fieldagent-removed";

/// Merges `documents` (each a mapping; the first is the main config) into one, with the origin
/// of every part, in the order they apply (a later one overrides an earlier one it lies in),
/// and what was wrong with a removal.
pub fn merge(documents: Vec<Value>) -> Merged {
    let mut findings = Vec::new();
    let mut documents = documents.into_iter();
    let mut merged = documents.next().unwrap_or(Value::Null);
    let mut origins = vec![Origin {
        merged: String::new(),
        file: 0,
        source: String::new(),
    }];
    for (index, document) in documents.enumerate() {
        let file = index + 1;
        match (&mut merged, document) {
            (_, Value::Null) => {}
            (Value::Mapping(base), Value::Mapping(over)) => {
                merge_map(base, over, "", file, &mut origins, &mut findings);
            }
            (base, over) => {
                // Not a mapping: the parse of the merged config reports it.
                *base = over;
                origins.push(Origin {
                    merged: String::new(),
                    file,
                    source: String::new(),
                });
            }
        }
    }
    drop_removed(&mut merged, &mut origins);
    Merged {
        value: merged,
        origins,
        findings,
    }
}

/// Takes the entries removals marked out of the named lists, and says where each entry left now
/// came from (its index moved).
fn drop_removed(merged: &mut Value, origins: &mut Vec<Origin>) {
    let Value::Mapping(map) = merged else {
        return;
    };
    for list in NAMED_LISTS {
        let Some(Value::Sequence(entries)) = map.get_mut(*list) else {
            continue;
        };
        if !entries.iter().any(is_removed) {
            continue;
        }
        let mut kept = Vec::with_capacity(entries.len());
        let mut moved = Vec::new();
        for (index, entry) in std::mem::take(entries).into_iter().enumerate() {
            if is_removed(&entry) {
                continue;
            }
            let at = format!("{list}[{index}]");
            if let Some(origin) = origins.iter().rev().find(|o| under(&at, &o.merged)) {
                moved.push(Origin {
                    merged: format!("{list}[{}]", kept.len()),
                    file: origin.file,
                    source: format!("{}{}", origin.source, &at[origin.merged.len()..]),
                });
            }
            kept.push(entry);
        }
        *entries = kept;
        origins.extend(moved);
    }
}

fn is_removed(entry: &Value) -> bool {
    matches!(entry, Value::Tagged(tagged) if tagged.tag == REMOVED)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_map(
    base: &mut serde_yaml::Mapping,
    over: serde_yaml::Mapping,
    path: &str,
    file: usize,
    origins: &mut Vec<Origin>,
    findings: &mut Vec<(usize, Finding)>,
) {
    for (key, value) in over {
        let name = key.as_str().unwrap_or("?").to_owned();
        let child = join(path, &name);
        match (base.get_mut(&key), value) {
            (Some(Value::Sequence(entries)), Value::Sequence(more))
                if path.is_empty() && NAMED_LISTS.contains(&name.as_str()) =>
            {
                merge_named(entries, more, &name, file, origins, findings);
            }
            (None, Value::Sequence(more))
                if path.is_empty() && NAMED_LISTS.contains(&name.as_str()) =>
            {
                // A list the main config does not have: its removals remove nothing.
                let mut entries = Vec::new();
                merge_named(&mut entries, more, &name, file, origins, findings);
                base.insert(key, Value::Sequence(entries));
            }
            (Some(Value::Mapping(inner)), Value::Mapping(more)) => {
                merge_map(inner, more, &child, file, origins, findings);
            }
            (_, value) => {
                base.insert(key, value);
                origins.push(Origin {
                    merged: child.clone(),
                    file,
                    source: child,
                });
            }
        }
    }
}

fn merge_named(
    entries: &mut Vec<Value>,
    more: Vec<Value>,
    list: &str,
    file: usize,
    origins: &mut Vec<Origin>,
    findings: &mut Vec<(usize, Finding)>,
) {
    fn name_of(entry: &Value) -> Option<String> {
        entry.get("name").and_then(Value::as_str).map(str::to_owned)
    }
    // By name, so merging is linear in the entries (a drop-in of thousands of sensors over a
    // main file of thousands was quadratic).
    let mut by_name: std::collections::HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| name_of(entry).map(|name| (name, index)))
        .collect();
    for (at, entry) in more.into_iter().enumerate() {
        let name = name_of(&entry);
        if let Some(removal) = removal(&entry) {
            let key = format!("{list}[{at}]");
            match (removal, name.as_ref().and_then(|name| by_name.remove(name))) {
                (Err(why), _) => findings.push((file, Finding::error(key, why))),
                (Ok(()), Some(index)) => {
                    entries[index] = Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
                        tag: serde_yaml::value::Tag::new(REMOVED),
                        value: Value::Null,
                    }));
                }
                (Ok(()), None) => findings.push((
                    file,
                    Finding::warning(
                        key,
                        format!(
                            "removes nothing: no entry of {list} named \"{}\" comes before this drop-in",
                            name.as_deref().unwrap_or_default()
                        ),
                    ),
                )),
            }
            continue;
        }
        let index = match name.as_ref().and_then(|name| by_name.get(name)) {
            Some(&index) => {
                entries[index] = entry;
                index
            }
            None => {
                entries.push(entry);
                if let Some(name) = name {
                    by_name.insert(name, entries.len() - 1);
                }
                entries.len() - 1
            }
        };
        origins.push(Origin {
            merged: format!("{list}[{index}]"),
            file,
            source: format!("{list}[{at}]"),
        });
    }
}

/// Whether `entry` is a removal (`remove:` set), and whether it is a well-formed one: exactly
/// `name` and `remove: true`.
fn removal(entry: &Value) -> Option<Result<(), String>> {
    let Value::Mapping(map) = entry else {
        return None;
    };
    let remove = map.get("remove")?;
    if remove != &Value::Bool(true) {
        return Some(Err(
            "expected remove: true (the entry named so is removed), found another value".to_owned(),
        ));
    }
    if !map.get("name").is_some_and(Value::is_string) {
        return Some(Err(
            "a removal names the entry it removes: { name: X, remove: true }".to_owned(),
        ));
    }
    if map.len() != 2 {
        return Some(Err(
            "a removal holds only name and remove: true; to change the entry, leave remove out"
                .to_owned(),
        ));
    }
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn maps_merge_scalars_and_lists_replace_named_entries_merge_by_name() {
        let Merged {
            value: merged,
            origins,
            ..
        } = merge(vec![
            yaml(
                "broker: { urls: [a], keepalive_s: 60, tls: { ca_file: /ca } }\n\
                 sensors: [{ name: t, file: /t }, { name: u, file: /u }]\n",
            ),
            yaml(
                "broker: { urls: [b, c], tls: { cert_file: /c } }\n\
                 sensors: [{ name: u, file: /u2 }, { name: v, file: /v }]\n",
            ),
            yaml("broker: { keepalive_s: 30 }\n"),
        ]);
        let expected = yaml(
            "broker: { urls: [b, c], keepalive_s: 30, tls: { ca_file: /ca, cert_file: /c } }\n\
             sensors: [{ name: t, file: /t }, { name: u, file: /u2 }, { name: v, file: /v }]\n",
        );
        assert_eq!(merged, expected);
        let from = |merged: &str| {
            origins
                .iter()
                .rev()
                .find(|o| under(merged, &o.merged))
                .map(|o| (o.file, o.source.clone()))
                .unwrap()
        };
        assert_eq!(from("broker.urls"), (1, "broker.urls".to_owned()));
        assert_eq!(
            from("broker.keepalive_s"),
            (2, "broker.keepalive_s".to_owned())
        );
        assert_eq!(from("broker.tls.ca_file"), (0, String::new()));
        assert_eq!(from("sensors[1].file"), (1, "sensors[0]".to_owned()));
        assert_eq!(from("sensors[2]"), (1, "sensors[1]".to_owned()));
        assert_eq!(from("sensors[0]"), (0, String::new()));
    }

    #[test]
    fn a_removal_takes_an_entry_out_and_the_rest_keep_their_origins() {
        let merged = merge(vec![
            yaml("sensors: [{ name: a, file: /a }, { name: b, file: /b }, { name: c, file: /c }]\n"),
            yaml("sensors: [{ name: b, remove: true }, { name: d, file: /d }, { name: zz, remove: true }]\n"),
            yaml("sensors: [{ name: b, file: /b2 }, { name: a, remove: true, file: /x }, { name: c, remove: yes }]\n"),
        ]);
        assert_eq!(
            merged.value,
            yaml("sensors: [{ name: a, file: /a }, { name: c, file: /c }, { name: d, file: /d }, { name: b, file: /b2 }]\n")
        );
        let from = |key: &str| {
            merged
                .origins
                .iter()
                .rev()
                .find(|o| under(key, &o.merged))
                .map(|o| (o.file, o.source.clone()))
                .unwrap()
        };
        assert_eq!(from("sensors[1]"), (0, "sensors[2]".to_owned()));
        assert_eq!(from("sensors[2].file"), (1, "sensors[1]".to_owned()));
        assert_eq!(from("sensors[3]"), (2, "sensors[0]".to_owned()));
        let findings: Vec<(usize, String, String)> = merged
            .findings
            .iter()
            .map(|(file, f)| (*file, f.key.clone(), f.message.clone()))
            .collect();
        assert_eq!(findings.len(), 3, "{findings:?}");
        assert_eq!((findings[0].0, findings[0].1.as_str()), (1, "sensors[2]"));
        assert!(findings[0].2.contains("removes nothing"), "{findings:?}");
        assert!(
            findings[1].2.contains("only name and remove"),
            "{findings:?}"
        );
        assert!(
            findings[2].2.contains("expected remove: true"),
            "{findings:?}"
        );
        assert_eq!(
            merged.findings[0].1.severity,
            super::super::finding::Severity::Warning
        );
        assert_eq!(
            merged.findings[1].1.severity,
            super::super::finding::Severity::Error
        );
    }

    #[test]
    fn prefixes_end_at_a_key_boundary() {
        assert!(under("sensors[1].file", "sensors[1]"));
        assert!(!under("sensors[10]", "sensors[1]"));
        assert!(!under("broker.urlsx", "broker.urls"));
        assert!(under("anything", ""));
    }
}
