//! `docs/configuration.md`, the users' reference of every config key, held to the definitions in
//! this module (a key added, renamed or removed here fails the test until the page follows),
//! and the man page `fieldagent.yaml(5)` rendered from it.

/// The page as roff: `## ` headings become sections, table rows become tagged paragraphs (key,
/// default, meaning), bullets and paragraphs stay text. Only the forms the page uses.
pub fn man_page(markdown: &str, date: &str) -> String {
    let roff = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('-', "\\-")
            .replace('`', "")
            .replace('\'', "\\(aq")
    };
    let mut out = format!(
        ".TH FIELDAGENT.YAML 5 {date} fieldagent \"File Formats\"\n.SH NAME\nfieldagent.yaml \\- configuration of the fieldagent device agent\n"
    );
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with("# ") {
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            out.push_str(&format!(".SH {}\n", roff(&heading.to_uppercase())));
            in_table = false;
        } else if let Some(heading) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS {}\n", roff(heading)));
            in_table = false;
        } else if let Some(row) = line.strip_prefix("| ") {
            if !in_table {
                // The header and its rule.
                in_table = row.starts_with("key |");
                continue;
            }
            if row.starts_with("---") {
                continue;
            }
            let cells: Vec<&str> = row.trim_end_matches('|').split(" | ").collect();
            let (key, default, meaning) = match cells.as_slice() {
                [key, default, meaning] => (*key, *default, *meaning),
                _ => continue,
            };
            let default = default.trim();
            let default = if default.is_empty() {
                String::new()
            } else if default.starts_with('(') {
                format!(" {}", roff(default))
            } else {
                format!(" (default: {})", roff(default))
            };
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR{default}\n{}\n",
                roff(key.trim()),
                roff(meaning.trim())
            ));
        } else if line.starts_with("|---") {
            continue;
        } else if let Some(item) = line.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", roff(item)));
        } else if let Some(more) = line.strip_prefix("  ") {
            out.push_str(&roff(more));
            out.push('\n');
        } else if line.is_empty() {
            out.push_str(".PP\n");
            in_table = false;
        } else {
            out.push_str(&roff(line));
            out.push('\n');
        }
    }
    out.push_str(
        ".SH SEE ALSO\n\\fBfieldagent\\fR(1), /usr/share/doc/fieldagent/docs/configuration.md, \
         /usr/share/doc/fieldagent/examples/config.yaml\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde::de::DeserializeOwned;

    use super::super::*;

    fn page() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
            .unwrap()
    }

    /// The keys a section accepts, as serde names them when it meets one it does not know.
    fn keys_of<T: DeserializeOwned + std::fmt::Debug>(prefix: &str, into: &mut BTreeSet<String>) {
        let err = serde_yaml::from_str::<T>("__probe: 1")
            .unwrap_err()
            .to_string();
        let list = err
            .split("expected one of ")
            .nth(1)
            .or_else(|| err.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("{prefix}: {err}"));
        let list = list
            .split(" at line")
            .next()
            .unwrap_or(list)
            .replace(" or ", ", ");
        for key in list.split(", ") {
            let key = key.trim_matches('`');
            into.insert(if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            });
        }
    }

    #[test]
    fn the_reference_documents_every_key_and_no_other() {
        let mut accepted = BTreeSet::new();
        keys_of::<Config>("", &mut accepted);
        keys_of::<BrokerConfig>("broker", &mut accepted);
        keys_of::<TlsConfig>("broker.tls", &mut accepted);
        keys_of::<TpmConfig>("broker.tls.tpm", &mut accepted);
        keys_of::<Pkcs11Config>("broker.tls.pkcs11", &mut accepted);
        keys_of::<ReconnectConfig>("broker.reconnect", &mut accepted);
        keys_of::<IdentityConfig>("identity", &mut accepted);
        keys_of::<TopicsConfig>("topics", &mut accepted);
        keys_of::<TelemetryConfig>("telemetry", &mut accepted);
        keys_of::<SensorConfig>("sensors[]", &mut accepted);
        keys_of::<ThermalZoneConfig>("sensors[].thermal_zone", &mut accepted);
        keys_of::<HwmonConfig>("sensors[].hwmon", &mut accepted);
        keys_of::<IioConfig>("sensors[].iio", &mut accepted);
        keys_of::<FileFieldConfig>("sensors[].file", &mut accepted);
        keys_of::<W1Config>("sensors[].w1", &mut accepted);
        keys_of::<I2cConfig>("sensors[].i2c", &mut accepted);
        keys_of::<ModbusConfig>("sensors[].modbus", &mut accepted);
        keys_of::<GpioInputConfig>("sensors[].gpio", &mut accepted);
        keys_of::<ModbusConfig>("actuators[].modbus", &mut accepted);
        keys_of::<GpioOutputConfig>("actuators[].gpio", &mut accepted);
        keys_of::<AlertConfig>("alerts[]", &mut accepted);
        keys_of::<ActuatorConfig>("actuators[]", &mut accepted);
        keys_of::<SparkplugConfig>("sparkplug", &mut accepted);
        keys_of::<OperationsConfig>("operations", &mut accepted);
        keys_of::<SoftwareUpdateConfig>("operations.software_update", &mut accepted);
        keys_of::<ConfigUpdateConfig>("operations.config_update", &mut accepted);
        keys_of::<LogUploadConfig>("operations.log_upload", &mut accepted);
        keys_of::<RestartConfig>("operations.restart", &mut accepted);
        keys_of::<SecurityConfig>("security", &mut accepted);
        keys_of::<LogConfig>("log", &mut accepted);
        assert!(accepted.len() > 60, "{accepted:?}");
        let documented: BTreeSet<String> = page()
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`').map(|(key, _)| key.to_owned()))
            .filter(|key| !key.starts_with('/'))
            .collect();
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/configuration.md lacks {missing:?} and documents keys that do not exist: {stale:?}"
        );
    }

    /// packaging/fieldagent.yaml.5 is rendered from docs/configuration.md;
    /// `FIELDAGENT_BLESS=1 cargo test man_page_5` writes it again.
    #[test]
    fn man_page_5_matches_the_reference() {
        let rendered = super::man_page(&page(), "2026-12-05");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/fieldagent.yaml.5");
        if std::env::var_os("FIELDAGENT_BLESS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == rendered,
            "packaging/fieldagent.yaml.5 is out of date; run FIELDAGENT_BLESS=1 cargo test man_page_5"
        );
    }
}
