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
