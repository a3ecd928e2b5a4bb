//! Where every key of a config stands: line and column by key path, built from the YAML event
//! stream (yaml-rust2) of each file, then placed where the drop-in merge put each part. The same
//! pass refuses YAML aliases before anything expands them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::finding::Finding;

/// Line and column of every key and list entry, by key path; with drop-ins, also the file
/// each came from and where the merged config's parts came from.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// Key path (of the merged config) to (file number, line, column).
    by_path: HashMap<String, (usize, usize, usize)>,
    /// The config file and its drop-ins; empty for text that is not from files.
    files: Vec<PathBuf>,
    origins: Vec<super::dropin::Origin>,
}

impl Positions {
    /// The index of one file, for [`Positions::merged`].
    pub fn into_index(self) -> HashMap<String, (usize, usize, usize)> {
        self.by_path
    }

    /// Builds the index of one file, or returns the YAML syntax error as a finding.
    pub fn index(text: &str) -> Result<Positions, Finding> {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut indexer, false) {
            Ok(()) if indexer.alias.is_some() => {
                let mut finding = Finding::error(
                    indexer.alias_path.clone(),
                    "YAML aliases (*name) are not accepted: a few bytes of them can stand for gigabytes; write the value out",
                );
                finding.position = indexer.alias;
                Err(finding)
            }
            Ok(()) => Ok(Positions {
                by_path: indexer.by_path,
                files: Vec::new(),
                origins: Vec::new(),
            }),
            Err(err) => {
                let mut finding = Finding::error("", format!("not valid YAML: {}", err.info()));
                finding.position = Some((err.marker().line(), err.marker().col() + 1));
                Err(finding)
            }
        }
    }

    /// The index of a merged config: each file's own index (from [`Positions::index`]),
    /// placed where the merge put its parts.
    pub fn merged(
        indexes: Vec<HashMap<String, (usize, usize, usize)>>,
        files: Vec<PathBuf>,
        origins: Vec<super::dropin::Origin>,
    ) -> Positions {
        use super::dropin::under;
        use std::collections::BTreeMap;
        // One file, no drop-ins: its index is the merged one (no copy of thousands of keys).
        if indexes.len() == 1
            && origins.len() == 1
            && origins[0].file == 0
            && origins[0].merged.is_empty()
            && origins[0].source.is_empty()
        {
            let by_path = indexes.into_iter().next().unwrap_or_default();
            return Positions {
                by_path,
                files,
                origins,
            };
        }
        // Ordered, so the keys under a prefix are one range: linear in the size of the config
        // rather than in its square (thousands of sensors in several files).
        let sorted: Vec<BTreeMap<&str, (usize, usize)>> = indexes
            .iter()
            .map(|index| {
                index
                    .iter()
                    .map(|(key, &(_, line, column))| (key.as_str(), (line, column)))
                    .collect()
            })
            .collect();
        let mut by_path: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for origin in &origins {
            let stale: Vec<String> = by_path
                .range::<str, _>((
                    std::ops::Bound::Included(origin.merged.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(key, _)| key.starts_with(origin.merged.as_str()))
                .filter(|(key, _)| under(key, &origin.merged))
                .map(|(key, _)| key.clone())
                .collect();
            for key in stale {
                by_path.remove(&key);
            }
            let Some(index) = sorted.get(origin.file) else {
                continue;
            };
            let source = origin.source.as_str();
            for (key, &(line, column)) in index
                .range::<str, _>((
                    std::ops::Bound::Included(source),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(key, _)| key.starts_with(source))
            {
                if under(key, source) {
                    let merged = format!("{}{}", origin.merged, &key[source.len()..]);
                    by_path.insert(merged, (origin.file, line, column));
                }
            }
        }
        Positions {
            by_path: by_path.into_iter().collect(),
            files,
            origins,
        }
    }

    /// The position of `key`, or of its nearest ancestor that is in the file (a missing key is
    /// reported where its parent stands).
    #[cfg(test)]
    pub fn find(&self, key: &str) -> Option<(usize, usize)> {
        self.find_in_file(key)
            .map(|(_, line, column)| (line, column))
    }

    fn find_in_file(&self, key: &str) -> Option<(usize, usize, usize)> {
        let mut key = key;
        loop {
            if let Some(position) = self.by_path.get(key) {
                return Some(*position);
            }
            let cut = key.rfind(['.', '['])?;
            key = &key[..cut];
        }
    }

    /// The file, line and column where `key` itself is written (not an ancestor), if it is.
    pub fn written(&self, key: &str) -> Option<(&Path, usize, usize)> {
        let &(file, line, column) = self.by_path.get(key)?;
        Some((self.files.get(file)?.as_path(), line, column))
    }

    /// Places findings that have no position yet: line and column, and for a key from a
    /// drop-in, that file and the key path as the drop-in writes it.
    pub fn locate(&self, findings: &mut [Finding]) {
        for finding in findings.iter_mut() {
            if finding.position.is_some() {
                continue;
            }
            if let Some((file, line, column)) = self.find_in_file(&finding.key) {
                finding.position = Some((line, column));
                if file > 0 {
                    finding.file = self.files.get(file).cloned();
                }
            }
            let origin = self
                .origins
                .iter()
                .rev()
                .find(|o| super::dropin::under(&finding.key, &o.merged));
            if let Some(origin) = origin.filter(|o| o.file > 0) {
                finding.key = format!("{}{}", origin.source, &finding.key[origin.merged.len()..]);
                finding.file = self.files.get(origin.file).cloned();
            }
        }
    }

    /// The rank of a file in merge order, for sorting findings.
    pub fn file_ranks(&self) -> impl Fn(&PathBuf) -> usize + '_ {
        |file| self.files.iter().position(|f| f == file).unwrap_or(0)
    }
}

#[derive(Debug)]
enum Frame {
    Map {
        path: String,
        expecting_key: bool,
        key: String,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Debug, Default)]
struct Indexer {
    stack: Vec<Frame>,
    /// Key path to (file number, always 0 here, line, column).
    by_path: HashMap<String, (usize, usize, usize)>,
    /// Where the first alias stands, and its key path: aliases are refused before serde_yaml
    /// expands them (an alias bomb is K² nodes from 5·K bytes).
    alias: Option<(usize, usize)>,
    alias_path: String,
}

impl Indexer {
    /// Called for every node; returns the path of that node and records its position.
    fn enter_node(&mut self, scalar: Option<&str>, mark: Marker) -> String {
        let position = (0, mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map {
                path,
                expecting_key,
                key,
            }) => {
                if *expecting_key {
                    *expecting_key = false;
                    *key = scalar.unwrap_or("?").to_owned();
                    let child = join(path, key);
                    self.by_path.insert(child.clone(), position);
                    child
                } else {
                    *expecting_key = true;
                    join(path, key)
                }
            }
            Some(Frame::Seq { path, index }) => {
                let child = format!("{path}[{index}]");
                *index += 1;
                self.by_path.insert(child.clone(), position);
                child
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                self.enter_node(Some(&value), mark);
            }
            Event::Alias(_) => {
                let path = self.enter_node(None, mark);
                if self.alias.is_none() {
                    self.alias = Some((mark.line(), mark.col() + 1));
                    self.alias_path = path;
                }
            }
            Event::MappingStart(..) => {
                let path = self.enter_node(None, mark);
                self.stack.push(Frame::Map {
                    path,
                    expecting_key: true,
                    key: String::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_node(None, mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_name_keys_and_list_entries() {
        let text = "broker:\n  urls: [\"mqtts://a:8883\"]\nsensors:\n  - name: a\n    file: /x\n  - { name: b, i2c: { bus: 1, address: 0x90 } }\n";
        let positions = Positions::index(text).unwrap();
        assert_eq!(positions.find("broker.urls"), Some((2, 3)));
        assert_eq!(positions.find("sensors[0].file"), Some((5, 5)));
        assert_eq!(positions.find("sensors[1].i2c.address"), Some((6, 31)));
        // A missing key is placed at its parent.
        assert_eq!(positions.find("sensors[1].i2c.chip"), Some((6, 16)));
    }
}
