//! Checks of `operations:` (plain mode's remote operations). Part of validation (see
//! `validate`): every finding at once, no I/O.

use super::finding::Finding;
use super::Config;

/// The package names a Debian archive takes: lower case letters, digits, `+ - .`, two or more,
/// starting with a letter or digit.
pub fn debian_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// Whether the drop-in name `name` matches `glob` (`*` any run of characters, `?` one). A name
/// with a path separator, or `..`, or that does not end in `.yaml`, or is hidden, never matches:
/// only files in `conf.d/` itself are drop-ins.
pub fn drop_in_matches(glob: &str, name: &str) -> bool {
    if name.contains('/')
        || name.contains('\\')
        || name.contains("..")
        || name.starts_with('.')
        || !name.ends_with(".yaml")
        || name.len() > 128
        || name.chars().any(char::is_control)
    {
        return false;
    }
    fn matches(glob: &[u8], name: &[u8]) -> bool {
        match (glob.first(), name.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                matches(&glob[1..], name) || (!name.is_empty() && matches(glob, &name[1..]))
            }
            (Some(b'?'), Some(_)) => matches(&glob[1..], &name[1..]),
            (Some(g), Some(n)) if g == n => matches(&glob[1..], &name[1..]),
            _ => false,
        }
    }
    matches(glob.as_bytes(), name.as_bytes())
}

/// `security:`: signed requests cannot be had in Sparkplug mode (an NCMD carries no signature),
/// and the window of a signed request's age is bounded.
pub(super) fn check_security(config: &Config, findings: &mut Vec<Finding>) {
    let security = &config.security;
    if security.command_keys.is_some() && config.sparkplug.is_some() {
        findings.push(Finding::error(
            "security.command_keys",
            "signed requests need the plain topics: a Sparkplug NCMD carries no signature; remove security.command_keys or sparkplug",
        ));
    }
    if !(10..=86_400).contains(&security.max_command_age_s) {
        findings.push(Finding::error(
            "security.max_command_age_s",
            format!(
                "expected 10 to 86400 seconds, found {}",
                security.max_command_age_s
            ),
        ));
    }
}

pub(super) fn check_operations(config: &Config, findings: &mut Vec<Finding>) {
    let operations = &config.operations;
    let enabled = operations.software_update.is_some()
        || operations.config_update.is_some()
        || operations.log_upload.is_some()
        || operations.restart.is_some();
    if enabled && config.sparkplug.is_some() {
        findings.push(Finding::error(
            "operations",
            "expected no operations with sparkplug: (Sparkplug B has no topic for them), found operations set",
        ));
    }
    if let Some(update) = &operations.software_update {
        if update.packages.is_empty() {
            findings.push(Finding::error(
                "operations.software_update.packages",
                "expected at least one package name, found none",
            ));
        }
        for (index, package) in update.packages.iter().enumerate() {
            if !debian_package_name(package) {
                findings.push(Finding::error(
                    format!("operations.software_update.packages[{index}]"),
                    format!("expected a Debian package name (lower case letters, digits, + - .), found \"{package}\""),
                ));
            }
        }
        check_confirm(
            "operations.software_update.confirm_s",
            update.confirm_s,
            findings,
        );
    }
    if let Some(update) = &operations.config_update {
        if update.names.is_empty() {
            findings.push(Finding::error(
                "operations.config_update.names",
                "expected at least one glob such as \"50-remote*.yaml\", found none",
            ));
        }
        for (index, glob) in update.names.iter().enumerate() {
            if glob.contains('/') || glob.contains("..") || !glob.ends_with(".yaml") {
                findings.push(Finding::error(
                    format!("operations.config_update.names[{index}]"),
                    format!("expected a glob of drop-in names in conf.d/ ending in .yaml, without / or .., found \"{glob}\""),
                ));
            }
        }
        check_confirm(
            "operations.config_update.confirm_s",
            update.confirm_s,
            findings,
        );
    }
    if let Some(upload) = &operations.log_upload {
        if !(1..=100_000).contains(&upload.max_lines) {
            findings.push(Finding::error(
                "operations.log_upload.max_lines",
                format!("expected 1 to 100000, found {}", upload.max_lines),
            ));
        }
    }
}

fn check_confirm(key: &str, confirm_s: f64, findings: &mut Vec<Finding>) {
    if !(confirm_s.is_finite() && (10.0..=3600.0).contains(&confirm_s)) {
        findings.push(Finding::error(
            key,
            format!("expected 10 to 3600 seconds, found {confirm_s}"),
        ));
    }
}

/// The most of `check`'s findings a refusal quotes.
const FINDINGS_SHOWN: usize = 4000;

/// The config at `path` with the change made in memory: `check`'s errors refuse it (with the
/// findings, so conf.d is never written with a config that would not load), and so does a
/// change the running agent cannot take without a restart.
pub fn check_change(
    path: &std::path::Path,
    name: &str,
    content: Option<&str>,
    running: &super::Config,
) -> Result<(), String> {
    let candidate = super::Candidate { name, content };
    let (config, findings) = super::inspect_with(path, Some(candidate))
        .map_err(|err| format!("refused: the config cannot be read: {err}"))?;
    if findings.has_errors() {
        let mut text = String::new();
        for finding in findings.errors() {
            let line = finding.display(path).to_string();
            if text.len() + line.len() > FINDINGS_SHOWN {
                text.push_str("; …");
                break;
            }
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&line);
        }
        return Err(format!(
            "refused: the config with this change does not pass check; nothing was written: {text}"
        ));
    }
    let Some(config) = config else {
        return Err("refused: the config with this change does not load".to_owned());
    };
    let new = config.config();
    if new.state_dir != running.state_dir {
        return Err("refused: it moves state_dir, which takes a restart of the agent".to_owned());
    }
    if new.sparkplug.is_some() != running.sparkplug.is_some() {
        return Err(
            "refused: it switches between plain and Sparkplug mode, which takes a restart"
                .to_owned(),
        );
    }
    if new.operations.config_update.is_none() {
        return Err("refused: it turns config_update off, so it could not be undone remotely if it went wrong; change that key on the device itself".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_requests_need_the_plain_topics_and_a_bounded_window() {
        let base = "broker: { urls: [\"mqtts://b:8883\"], tls: { ca_file: /ca, cert_file: /c, key_file: /k } }\n";
        let refused = |extra: &str| {
            let text = format!("{base}{extra}");
            match crate::config::load_str(
                &text,
                std::path::Path::new("/etc/fieldagent/config.yaml"),
            ) {
                Ok(_) => Vec::new(),
                Err(crate::config::ConfigError::Invalid(findings)) => findings
                    .errors()
                    .map(|f| format!("{}: {}", f.key, f.message))
                    .collect(),
                Err(other) => vec![other.to_string()],
            }
        };
        let both = refused("security: { command_keys: /etc/fieldagent/command-keys.d }\nsparkplug: { group_id: plant }\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(
            both[0].starts_with("security.command_keys: signed requests need the plain topics"),
            "{both:?}"
        );
        let window = refused("security: { max_command_age_s: 5 }\n");
        assert!(
            window[0].contains("expected 10 to 86400 seconds, found 5"),
            "{window:?}"
        );
        assert!(refused("security: { command_keys: /k, max_command_age_s: 600 }\n").is_empty());
    }

    #[test]
    fn globs_match_drop_in_names_in_conf_d_only() {
        for (glob, name, expected) in [
            ("50-remote*.yaml", "50-remote.yaml", true),
            ("50-remote*.yaml", "50-remote-sensors.yaml", true),
            ("50-remote*.yaml", "10-board.yaml", false),
            ("5?-x.yaml", "51-x.yaml", true),
            ("*.yaml", "../config.yaml", false),
            ("*.yaml", "sub/x.yaml", false),
            ("*", "x..yaml", false),
            ("*.yaml", ".hidden.yaml", false),
            ("*", "50-remote.txt", false),
        ] {
            assert_eq!(drop_in_matches(glob, name), expected, "{glob} {name}");
        }
        assert!(debian_package_name("fieldagent"));
        assert!(debian_package_name("libssl3t64"));
        assert!(!debian_package_name("Fieldagent"));
        assert!(!debian_package_name("x"));
        assert!(!debian_package_name("a;rm -rf /"));
    }
}
