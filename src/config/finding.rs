//! One problem (or remark) about the config, with where it stands.

use std::fmt;
use std::path::{Path, PathBuf};

/// How much a finding matters: an `Error` refuses the config (exit 78), a `Warning` is printed
/// and the agent runs, a `Note` only informs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something that was checked and is fine; only `check` prints these.
    Ok,
    Note,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Ok => "ok",
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A finding names the key path (`sensors[2].i2c.address`), the line and column where known, and
/// a message that says what was expected and what was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// Key path in the file; empty for the file as a whole.
    pub key: String,
    /// 1-based line and column of the key, when the file had it.
    pub position: Option<(usize, usize)>,
    /// The drop-in (`conf.d/*.yaml`) the key came from; `None` for the config file itself.
    pub file: Option<PathBuf>,
    pub message: String,
}

impl Finding {
    pub fn error(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Error, key, message)
    }

    pub fn warning(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Warning, key, message)
    }

    pub fn ok(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Ok, key, message)
    }

    pub fn note(key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding::new(Severity::Note, key, message)
    }

    fn new(severity: Severity, key: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            severity,
            key: key.into(),
            position: None,
            file: None,
            message: message.into(),
        }
    }

    /// Renders the finding as one line: `error: FILE:LINE:COL: KEY: MESSAGE`.
    pub fn display<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        DisplayFinding {
            finding: self,
            file,
        }
    }
}

struct DisplayFinding<'a> {
    finding: &'a Finding,
    file: &'a Path,
}

impl fmt::Display for DisplayFinding<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let finding = self.finding;
        let file = finding.file.as_deref().unwrap_or(self.file);
        write!(f, "{}: {}", finding.severity, file.display())?;
        if let Some((line, column)) = finding.position {
            write!(f, ":{line}:{column}")?;
        }
        if !finding.key.is_empty() {
            write!(f, ": {}", finding.key)?;
        }
        write!(f, ": {}", finding.message)
    }
}

/// Every finding about one file, in file order.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub file: PathBuf,
    pub items: Vec<Finding>,
}

impl Findings {
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.items.iter().filter(|f| f.severity == Severity::Error)
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, finding) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", finding.display(&self.file))?;
        }
        Ok(())
    }
}

/// The most of a found value a finding quotes. A config file may turn out to be something else
/// (a drop-in that is a link to a key, a secret pasted into the wrong file): findings go to the
/// terminal and the journal, so they never carry more than a short prefix of what was found.
pub const QUOTED_MAX: usize = 24;

/// A finding as it may be shown: every quoted value cut to [`QUOTED_MAX`] characters (and
/// none of it when it looks like key material or a password hash), the key path's segments
/// likewise.
pub fn redacted(mut finding: Finding) -> Finding {
    finding.message = redact_quoted(&finding.message);
    finding.key = finding
        .key
        .split('.')
        .map(|segment| {
            if segment.chars().count() > 2 * QUOTED_MAX || secret_like(segment) {
                shorten(segment)
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    finding
}

/// Whether `text` looks like something never to be shown: a PEM block, a crypt(3) hash, a long
/// run of base64 or hex.
fn secret_like(text: &str) -> bool {
    if text.contains("-----BEGIN") || text.contains("PRIVATE KEY") {
        return true;
    }
    if ["$1$", "$5$", "$6$", "$y$", "$2b$", "$argon2"]
        .iter()
        .any(|mark| text.contains(mark))
    {
        return true;
    }
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-') {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// At most [`QUOTED_MAX`] characters of `text`, or nothing of it when it looks secret.
fn shorten(text: &str) -> String {
    if secret_like(text) {
        return format!("<{} characters, not shown>", text.chars().count());
    }
    let count = text.chars().count();
    if count <= QUOTED_MAX {
        return text.to_owned();
    }
    let prefix: String = text.chars().take(QUOTED_MAX).collect();
    format!("{prefix}… ({count} characters)")
}

/// `message` with the inside of every double-quoted span shortened (a backslash escapes the
/// next character, as Rust's `{:?}` writes strings).
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(256));
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let mut end = None;
        let mut escaped = false;
        for (at, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(at);
                    break;
                }
                _ => {}
            }
        }
        let (inside, next) = match end {
            Some(end) => (&after[..end], &after[end..]),
            None => (after, ""),
        };
        out.push_str(&shorten(inside));
        rest = next;
        if let Some(stripped) = rest.strip_prefix('"') {
            out.push('"');
            rest = stripped;
        }
    }
    out.push_str(rest);
    if out.chars().count() > 512 {
        // Unquoted text never carries values, but a message is one line of a journal.
        out = shorten(&out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_never_quote_more_than_a_short_prefix_nor_anything_secret() {
        for (message, expected) in [
            (
                r#"expected a number, found string "12x""#,
                r#"expected a number, found string "12x""#,
            ),
            (
                r#"expected a mapping of sections, found string "root:$y$j9T$abcdefghij:19000:0:99999:7:::""#,
                r#"expected a mapping of sections, found string "<41 characters, not shown>""#,
            ),
            (
                r#"found string "-----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASC""#,
                r#"found string "<60 characters, not shown>""#,
            ),
            (
                r#"found string "a perfectly ordinary but rather long value here""#,
                r#"found string "a perfectly ordinary but… (47 characters)""#,
            ),
            (
                r#"found string "say \"hi\"" and "x""#,
                r#"found string "say \"hi\"" and "x""#,
            ),
        ] {
            assert_eq!(redact_quoted(message), expected);
        }
        let finding = redacted(Finding::error(
            "sensors[0].MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
            "unknown key",
        ));
        assert_eq!(finding.key, "sensors[0].<52 characters, not shown>");
    }
}
