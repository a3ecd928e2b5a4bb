//! The .deb's `usr/share/doc/fieldagent/copyright` (`packaging/copyright`, DEP-5): every crate
//! built into the binary, from `cargo metadata` (normal dependencies of the agent, without
//! proc-macro crates, which run in the compiler and leave no code behind), with its licence as
//! it declares it, plus Eclipse Paho C and the Rust standard library, and the text of every
//! licence named. This test is the generator: `FIELDAGENT_BLESS=1 cargo test deb_copyright`
//! writes the file again after the dependencies changed; without it, a stale file fails. The
//! Yocto recipe's LICENSE must name the same licences, and its LIC_FILES_CHKSUM every text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const COPYRIGHT: &str = "packaging/copyright";
/// Licence texts by short name; Apache-2.0 is in every Debian system's common-licenses.
const LICENSES: &str = "packaging/licenses";

/// A crate built into the binary.
struct Crate {
    name: String,
    version: String,
    license: String,
    authors: Vec<String>,
    repository: Option<String>,
}

/// The crates of the agent's binary, by name and version (the root package excluded).
fn linked_crates(root: &Path) -> Vec<Crate> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            // The same list whoever runs it; the crates of the Linux targets are the same.
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let proc_macro = |id: &str| {
        packages[id]["targets"].as_array().unwrap().iter().any(|t| {
            t["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "proc-macro")
        })
    };
    let root_id = metadata["resolve"]["root"].as_str().unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        if proc_macro(id) || !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            // Normal dependencies only: build scripts' and tests' crates are not linked.
            if dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null())
            {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .into_iter()
        .filter(|&id| id != root_id)
        .map(|id| {
            let p = packages[id];
            Crate {
                name: p["name"].as_str().unwrap().to_owned(),
                version: p["version"].as_str().unwrap().to_owned(),
                license: p["license"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} declares no licence", p["name"]))
                    .to_owned(),
                authors: p["authors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                repository: p["repository"].as_str().map(str::to_owned),
            }
        })
        .collect();
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    crates
}

/// An SPDX expression as DEP-5 writes it: `MIT OR Apache-2.0` and `MIT/Apache-2.0` become
/// `MIT or Apache-2.0`; `(A OR B) AND C` becomes `A or B, and C`.
fn dep5_license(spdx: &str) -> String {
    spdx.split(" AND ")
        .map(|part| {
            part.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .replace(" OR ", " or ")
                .replace('/', " or ")
        })
        .collect::<Vec<_>>()
        .join(", and ")
}

/// The short names in a DEP-5 licence expression.
fn short_names(dep5: &str) -> Vec<&str> {
    dep5.split(", and ")
        .flat_map(|part| part.split(" or "))
        .map(str::trim)
        .collect()
}

/// Text as a DEP-5 field continuation: each line indented by one space, empty lines as " .".
fn indented(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|line| {
            if line.trim().is_empty() {
                " .\n".to_owned()
            } else {
                format!(" {}\n", line.trim_end())
            }
        })
        .collect()
}

fn generate(root: &Path, crates: &[Crate]) -> String {
    let mut out = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: fieldagent\n\
         Upstream-Contact: fieldagent developers <fieldagent@example.org>\n\
         Comment: The fieldagent binary has the Rust crates listed below, Eclipse Paho C and the\n \
         Rust standard library built into it; each is named here with its licence as its\n \
         authors declare it (a Files pattern names the crate's source as published on crates.io).\n \
         OpenSSL and the GNU C library are linked dynamically and come with their own packages.\n \
         Generated from Cargo.lock by `FIELDAGENT_BLESS=1 cargo test deb_copyright`.\n\n\
         Files: *\n\
         Copyright: 2026, fieldagent developers\n\
         License: Apache-2.0\n\n\
         Files: vendor/paho-mqtt-sys/paho.mqtt.c/*\n\
         Copyright: 2009-2026 IBM Corp., Ian Craggs, Wind River Systems, Inc. and others\n\
         License: EPL-2.0 or BSD-3-Clause\n\
         Comment: Eclipse Paho MQTT C, built by paho-mqtt-sys and linked statically, with one change\n \
         in src/Socket.c (vendor/paho-mqtt-sys/FIELDAGENT.md). BSD-3-Clause here is the Eclipse\n \
         Distribution License 1.0.\n\n\
         Files: rust-std/*\n\
         Copyright: The Rust Project Developers\n\
         License: MIT or Apache-2.0\n\
         Comment: The Rust standard library (core, alloc, std), built into every Rust program.\n",
    );
    let mut names: BTreeSet<String> = ["Apache-2.0", "BSD-3-Clause", "EPL-2.0", "MIT"]
        .map(str::to_owned)
        .into();
    for c in crates {
        let license = dep5_license(&c.license);
        names.extend(short_names(&license).into_iter().map(str::to_owned));
        let holders = if c.authors.is_empty() {
            vec![format!("The {} authors", c.name)]
        } else {
            c.authors.clone()
        };
        out.push_str(&format!(
            "\nFiles: crates.io/{}-{}/*\nCopyright: {}\nLicense: {license}\n",
            c.name,
            c.version,
            holders.join("\n "),
        ));
        if let Some(repository) = &c.repository {
            out.push_str(&format!("Comment: {repository}\n"));
        }
    }
    for name in names {
        out.push_str(&format!("\nLicense: {name}\n"));
        // Licences Debian ships in /usr/share/common-licenses are named there, not copied (as
        // policy 12.5 asks; lintian warns about a full GPL in a copyright file).
        let common = match name.as_str() {
            "Apache-2.0" => Some(("the Apache License, Version 2.0", "Apache-2.0")),
            "GPL-3.0-only" => Some(("the GNU General Public License, version 3", "GPL-3")),
            "MPL-2.0" => Some(("the Mozilla Public License, version 2.0", "MPL-2.0")),
            _ => None,
        };
        if let Some((title, file)) = common {
            out.push_str(&format!(
                " On Debian systems, the complete text of {title} can be\n \
                 found in /usr/share/common-licenses/{file}.\n"
            ));
            continue;
        }
        let path = root.join(LICENSES).join(&name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "a crate is licensed under {name}: put its text in {}",
                path.display()
            )
        });
        out.push_str(&indented(&text));
    }
    out
}

/// The Yocto recipe's LICENSE: every licence group of what the binary links (ours, Paho C's,
/// the Rust standard library's, each crate's), `&`-joined; single licences first.
fn yocto_license(crates: &[Crate]) -> String {
    let mut groups = BTreeSet::new();
    let ours = ["Apache-2.0", "EPL-2.0 or BSD-3-Clause", "MIT or Apache-2.0"].map(str::to_owned);
    let declared = crates.iter().map(|c| dep5_license(&c.license));
    for dep5 in ours.into_iter().chain(declared) {
        for part in dep5.split(", and ") {
            let mut names: Vec<&str> = part.split(" or ").map(str::trim).collect();
            names.sort_unstable();
            names.dedup();
            groups.insert(match names.as_slice() {
                [one] => (false, (*one).to_owned()),
                _ => (true, format!("({})", names.join(" | "))),
            });
        }
    }
    groups
        .into_iter()
        .map(|(_, group)| group)
        .collect::<Vec<_>>()
        .join(" & ")
}

/// The recipe names the same licences as the .deb, and checksums every licence text.
fn check_yocto_recipe(root: &Path, crates: &[Crate]) {
    let recipe = crate::yocto::recipe();
    let path = crate::yocto::recipe_path();
    let license = format!("LICENSE = \"{}\"", yocto_license(crates));
    assert!(
        recipe.lines().any(|l| l == license),
        "{path} must say\n{license}"
    );
    for entry in std::fs::read_dir(root.join(LICENSES)).unwrap() {
        let text = entry.unwrap().path();
        let md5 = crate::util::md5(&std::fs::read(&text).unwrap());
        let name = text.file_name().unwrap().to_str().unwrap();
        let chksum = format!("file://{LICENSES}/{name};md5={md5}");
        assert!(
            recipe.contains(&chksum),
            "{path}: LIC_FILES_CHKSUM lacks {chksum}"
        );
    }
}

#[test]
fn deb_copyright_names_every_linked_crate_and_licence() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crates = linked_crates(root);
    let by_name: BTreeMap<&str, &Crate> = crates.iter().map(|c| (c.name.as_str(), c)).collect();
    // What the agent links for sure, and what it must not list: build-time and test crates.
    for name in [
        "paho-mqtt-sys",
        "tokio",
        "serde_yaml",
        "prost",
        "sysinfo",
        "openssl",
    ] {
        assert!(by_name.contains_key(name), "{name} is not listed");
    }
    for name in [
        "cmake",
        "cc",
        "rcgen",
        "proptest",
        "serde_derive",
        "prost-build",
    ] {
        assert!(!by_name.contains_key(name), "{name} is listed");
    }
    assert_eq!(dep5_license("MIT/Apache-2.0"), "MIT or Apache-2.0");
    assert_eq!(
        dep5_license("(Apache-2.0 OR MIT) AND BSD-3-Clause"),
        "Apache-2.0 or MIT, and BSD-3-Clause"
    );
    crate::util::check_generated(COPYRIGHT, &generate(root, &crates), "deb_copyright");
    check_yocto_recipe(root, &crates);
}
