//! The system's OpenSSL config, read far enough to put the agent's TLS floor on top of it.
//!
//! The config the agent points `OPENSSL_CONF` at includes the system's (`.include`), so whatever
//! the distribution set there still applies: providers (FIPS, PKCS#11), crypto-policies,
//! `CipherString`, a stricter `MinProtocol`. Then it names the one setting it adds: the
//! `MinProtocol` of the `system_default` section OpenSSL applies to every new `SSL_CTX`, raised
//! to the floor and never lowered. To know which section that is, and what the system asks for,
//! this module follows the chain OpenSSL follows: `openssl_conf` in the default section names the
//! init section, its `ssl_conf` the SSL section, its `system_default` the section of settings.
//!
//! The syntax read is OpenSSL's: `[section]`, `name = value`, `#` comments, `\` continuations,
//! `.include [=] path` (a file, or a directory's `*.cnf` and `*.conf` in name order, relative
//! paths from the working directory, as OpenSSL resolves them). The section in force carries
//! into and out of an included file, as in OpenSSL. `$variables` are not expanded: a value that
//! needs them counts as unknown.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// How deep includes may nest (OpenSSL has no limit; a loop must end somewhere).
const MAX_DEPTH: usize = 8;

/// The sections OpenSSL's default section is called by in a file.
const DEFAULT: &str = "default";

/// A parsed OpenSSL config: every section's last value for each name.
#[derive(Debug, Default)]
pub struct Conf {
    sections: HashMap<String, HashMap<String, String>>,
}

impl Conf {
    /// Reads `path` and what it includes.
    pub fn read(path: &Path) -> io::Result<Conf> {
        let mut conf = Conf::default();
        let mut section = DEFAULT.to_owned();
        conf.read_file(path, &mut section, 0)?;
        Ok(conf)
    }

    /// Parses `text` as one file (includes are read from disk).
    #[cfg(test)]
    pub fn parse(text: &str) -> Conf {
        let mut conf = Conf::default();
        let mut section = DEFAULT.to_owned();
        // An include that cannot be read leaves its settings out, as a parse error would.
        let _ = conf.read_text(text, &mut section, 0);
        conf
    }

    fn read_file(&mut self, path: &Path, section: &mut String, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{}: includes nest deeper than {MAX_DEPTH}",
                path.display()
            )));
        }
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|file| {
                    file.extension()
                        .is_some_and(|ext| ext == "cnf" || ext == "conf")
                })
                .collect();
            files.sort();
            for file in files {
                self.read_file(&file, section, depth + 1)?;
            }
            return Ok(());
        }
        let bytes = std::fs::read(path)?;
        self.read_text(&String::from_utf8_lossy(&bytes), section, depth)
    }

    fn read_text(&mut self, text: &str, section: &mut String, depth: usize) -> io::Result<()> {
        let mut pending = String::new();
        for raw in text.lines() {
            // A backslash at the end of a line continues it on the next.
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(raw);
            let line = std::mem::take(&mut pending);
            let line = strip_comment(&line).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                if let Some(name) = rest.strip_suffix(']') {
                    *section = name.trim().to_owned();
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(".include") {
                let target = rest.trim_start().trim_start_matches('=').trim();
                if !target.is_empty() {
                    self.read_file(Path::new(target), section, depth + 1)?;
                }
                continue;
            }
            if line.starts_with(".pragma") {
                continue;
            }
            if let Some((name, value)) = line.split_once('=') {
                let value = unquote(value.trim());
                self.sections
                    .entry(section.clone())
                    .or_default()
                    .insert(name.trim().to_owned(), value.to_owned());
            }
        }
        Ok(())
    }

    /// The value of `name` in `section`, unless it needs variables expanded.
    fn get(&self, section: &str, name: &str) -> Option<&str> {
        let value = self.sections.get(section)?.get(name)?;
        (!value.contains('$')).then_some(value.as_str())
    }

    /// The lines to write after `.include <system config>` so that every new `SSL_CTX` has a
    /// minimum protocol version of at least `min` (e.g. `TLSv1.2`), keeping the system's own
    /// when it is higher. Section names of our own begin with `fieldagent_`.
    pub fn floor_lines(&self, min: &str) -> String {
        let Some(init) = self.get(DEFAULT, "openssl_conf") else {
            return format!(
                "[{DEFAULT}]\nopenssl_conf = fieldagent_init\n\
                 [fieldagent_init]\nssl_conf = fieldagent_ssl\n{}",
                ssl_section("fieldagent_ssl", min)
            );
        };
        let Some(ssl) = self.get(init, "ssl_conf") else {
            return format!(
                "[{init}]\nssl_conf = fieldagent_ssl\n{}",
                ssl_section("fieldagent_ssl", min)
            );
        };
        let Some(settings) = self.get(ssl, "system_default") else {
            return ssl_section(ssl, min);
        };
        match self.get(settings, "MinProtocol").map(rank) {
            Some(Some(system)) if Some(system) >= rank(min) => String::new(),
            _ => format!("[{settings}]\nMinProtocol = {min}\n"),
        }
    }
}

/// What the device key needs of OpenSSL besides the floor (`keys::openssl_needs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyNeeds {
    /// A TPM key: the tpm2 provider beside the default one; with `true`, signatures go to the
    /// TPM by default (`?tpm2.signature`), which tpm2-openssl before 1.2 needs and which needs
    /// a resource manager that swaps objects (tpm2-abrmd).
    pub tpm2: Option<bool>,
    /// A PKCS#11 key: the pkcs11 engine (libp11) with this module, initialised when first used.
    pub pkcs11_module: Option<PathBuf>,
}

impl Conf {
    /// The lines that load what `needs` asks for, on top of the system's config: its own
    /// providers, engines and algorithm properties kept, ours added beside them.
    pub fn key_lines(&self, needs: &KeyNeeds) -> String {
        if needs.tpm2.is_none() && needs.pkcs11_module.is_none() {
            return String::new();
        }
        let init = self
            .get(DEFAULT, "openssl_conf")
            .unwrap_or("fieldagent_init")
            .to_owned();
        let mut out = String::new();
        if let Some(properties) = needs.tpm2 {
            // Naming any provider turns off the implicit default one: it is activated too.
            match self.get(&init, "providers") {
                Some(providers) => {
                    let default = self
                        .get(providers, "default")
                        .unwrap_or("fieldagent_default");
                    out.push_str(&format!(
                        "[{providers}]\ndefault = {default}\ntpm2 = fieldagent_tpm2\n[{default}]\nactivate = 1\n"
                    ));
                }
                None => out.push_str(&format!(
                    "[{init}]\nproviders = fieldagent_providers\n[fieldagent_providers]\n\
                     default = fieldagent_default\ntpm2 = fieldagent_tpm2\n\
                     [fieldagent_default]\nactivate = 1\n"
                )),
            }
            out.push_str("[fieldagent_tpm2]\nactivate = 1\n");
            if properties {
                match self.get(&init, "alg_section") {
                    Some(algs) => {
                        let query = match self.get(algs, "default_properties") {
                            Some(system) if !system.is_empty() => {
                                format!("{system},?tpm2.signature")
                            }
                            _ => "?tpm2.signature".to_owned(),
                        };
                        out.push_str(&format!("[{algs}]\ndefault_properties = {query}\n"));
                    }
                    None => out.push_str(&format!(
                        "[{init}]\nalg_section = fieldagent_algs\n[fieldagent_algs]\n\
                         default_properties = ?tpm2.signature\n"
                    )),
                }
            }
        }
        if let Some(module) = &needs.pkcs11_module {
            let engines = match self.get(&init, "engines") {
                Some(engines) => engines.to_owned(),
                None => {
                    out.push_str(&format!("[{init}]\nengines = fieldagent_engines\n"));
                    "fieldagent_engines".to_owned()
                }
            };
            // Not initialised here: the key's first use does it (with the PIN, never written).
            out.push_str(&format!(
                "[{engines}]\npkcs11 = fieldagent_pkcs11\n[fieldagent_pkcs11]\nengine_id = pkcs11\n\
                 MODULE_PATH = {}\ninit = 0\n",
                module.display()
            ));
        }
        out
    }
}

/// An SSL section `name` whose `system_default` is ours, with the floor.
fn ssl_section(name: &str, min: &str) -> String {
    format!("[{name}]\nsystem_default = fieldagent_tls\n[fieldagent_tls]\nMinProtocol = {min}\n")
}

/// The order of protocol versions as `MinProtocol` names them; `None` for anything else
/// (`None` itself, DTLS versions, a typo).
fn rank(version: &str) -> Option<u8> {
    match version {
        "SSLv3" => Some(0),
        "TLSv1" => Some(1),
        "TLSv1.1" => Some(2),
        "TLSv1.2" => Some(3),
        "TLSv1.3" => Some(4),
        _ => None,
    }
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = None;
    for (at, c) in line.char_indices() {
        match (quoted, c) {
            (None, '"' | '\'') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '#') => return &line[..at],
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's openssl.cnf, in the parts that matter.
    const DEBIAN: &str =
        "HOME = .\n # Use this\nopenssl_conf = openssl_init\nconfig_diagnostics = 1\n\
        [ new_oids ]\ntsa_policy1 = 1.2.3.4.1\n[openssl_init]\n# providers = provider_sect\n\
        [ CA_default ]\ndir = ./demoCA\ncerts = $dir/certs\n";

    #[test]
    fn an_init_section_without_ssl_conf_gets_ours() {
        assert_eq!(
            Conf::parse(DEBIAN).floor_lines("TLSv1.2"),
            "[openssl_init]\nssl_conf = fieldagent_ssl\n[fieldagent_ssl]\n\
             system_default = fieldagent_tls\n[fieldagent_tls]\nMinProtocol = TLSv1.2\n"
        );
    }

    #[test]
    fn no_openssl_conf_at_all_gets_the_whole_chain() {
        let lines = Conf::parse("# nothing\n[ ca ]\nx = y\n").floor_lines("TLSv1.3");
        assert!(
            lines.starts_with("[default]\nopenssl_conf = fieldagent_init\n"),
            "{lines}"
        );
        assert!(lines.ends_with("MinProtocol = TLSv1.3\n"), "{lines}");
    }

    #[test]
    fn an_ssl_section_without_system_default_gets_ours() {
        let conf = Conf::parse("openssl_conf = i\n[i]\nssl_conf = s\n[s]\n");
        assert_eq!(
            conf.floor_lines("TLSv1.2"),
            "[s]\nsystem_default = fieldagent_tls\n[fieldagent_tls]\nMinProtocol = TLSv1.2\n"
        );
    }

    #[test]
    fn a_lower_system_minimum_is_raised_and_a_higher_one_kept() {
        let conf = |min: &str| {
            Conf::parse(&format!(
                "openssl_conf = i\n[i]\nssl_conf = s\n[s]\nsystem_default = d\n[d]\n\
                 CipherString = DEFAULT:@SECLEVEL=2\nMinProtocol = {min} # the policy\n"
            ))
        };
        assert_eq!(
            conf("TLSv1").floor_lines("TLSv1.2"),
            "[d]\nMinProtocol = TLSv1.2\n"
        );
        assert_eq!(conf("TLSv1.3").floor_lines("TLSv1.2"), "");
        assert_eq!(conf("TLSv1.2").floor_lines("TLSv1.2"), "");
        assert_eq!(
            conf("None").floor_lines("TLSv1.2"),
            "[d]\nMinProtocol = TLSv1.2\n"
        );
        assert_eq!(
            conf("\"TLSv1.3\"").floor_lines("TLSv1.3"),
            "",
            "quoted values are read unquoted"
        );
    }

    #[test]
    fn crypto_policies_settings_come_from_a_file_included_inside_the_section() {
        // Fedora and RHEL: the settings section's body is an included file of the policy.
        let dir = std::env::temp_dir().join(format!("fieldagent-osslconf-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("back-ends")).unwrap();
        std::fs::write(
            dir.join("back-ends/opensslcnf.config"),
            "CipherString = @SECLEVEL=2:kEECDH\nMinProtocol = TLSv1.3\n",
        )
        .unwrap();
        // A directory include: its *.cnf files in name order, others ignored.
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/10-init.cnf"), "[i]\nssl_conf = s\n").unwrap();
        std::fs::write(dir.join("d/README"), "[i]\nssl_conf = wrong\n").unwrap();
        let main = dir.join("openssl.cnf");
        std::fs::write(
            &main,
            format!(
                "openssl_conf = i\n.include {}\n[s]\nsystem_default = crypto_policy\n\
                 [ crypto_policy ]\n.include = {}\n",
                dir.join("d").display(),
                dir.join("back-ends/opensslcnf.config").display()
            ),
        )
        .unwrap();
        let conf = Conf::read(&main).unwrap();
        assert_eq!(
            conf.floor_lines("TLSv1.2"),
            "",
            "the policy's TLS 1.3 stays"
        );
        assert_eq!(conf.floor_lines("TLSv1.3"), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variables_and_continuations() {
        let conf = Conf::parse(
            "openssl_conf = i\n[i]\nssl_conf = s\n[s]\nsystem_\\\ndefault = d\n[d]\n\
             MinProtocol = $ENV::MIN\n",
        );
        // The continued name is read whole; a value that needs a variable is not trusted.
        assert_eq!(conf.floor_lines("TLSv1.2"), "[d]\nMinProtocol = TLSv1.2\n");
    }

    #[test]
    fn a_tpm_or_pkcs11_key_adds_its_provider_or_engine_beside_the_systems() {
        let tpm = KeyNeeds {
            tpm2: Some(true),
            pkcs11_module: None,
        };
        // Debian 12: an init section without providers.
        let lines = Conf::parse(DEBIAN).key_lines(&tpm);
        assert_eq!(
            lines,
            "[openssl_init]\nproviders = fieldagent_providers\n[fieldagent_providers]\n\
             default = fieldagent_default\ntpm2 = fieldagent_tpm2\n[fieldagent_default]\n\
             activate = 1\n[fieldagent_tpm2]\nactivate = 1\n[openssl_init]\n\
             alg_section = fieldagent_algs\n[fieldagent_algs]\n\
             default_properties = ?tpm2.signature\n"
        );
        // A system with its own providers (FIPS, say) and properties keeps them.
        let system = Conf::parse(
            "openssl_conf = i\n[i]\nproviders = p\nalg_section = a\n[p]\nfips = f\ndefault = d\n\
             [a]\ndefault_properties = fips=yes\n",
        );
        let lines = system.key_lines(&tpm);
        assert!(
            lines.starts_with("[p]\ndefault = d\ntpm2 = fieldagent_tpm2\n[d]\nactivate = 1\n"),
            "{lines}"
        );
        assert!(
            lines.ends_with("[a]\ndefault_properties = fips=yes,?tpm2.signature\n"),
            "{lines}"
        );
        let p11 = KeyNeeds {
            tpm2: None,
            pkcs11_module: Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")),
        };
        assert_eq!(
            Conf::parse(DEBIAN).key_lines(&p11),
            "[openssl_init]\nengines = fieldagent_engines\n[fieldagent_engines]\n\
             pkcs11 = fieldagent_pkcs11\n[fieldagent_pkcs11]\nengine_id = pkcs11\n\
             MODULE_PATH = /usr/lib/softhsm/libsofthsm2.so\ninit = 0\n"
        );
        assert_eq!(Conf::parse(DEBIAN).key_lines(&KeyNeeds::default()), "");
    }

    #[test]
    fn an_include_loop_ends() {
        let dir = std::env::temp_dir().join(format!("fieldagent-osslloop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = dir.join("a.cnf");
        std::fs::write(&main, format!(".include {}\n", main.display())).unwrap();
        let err = Conf::read(&main).unwrap_err();
        assert!(err.to_string().contains("nest deeper"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
