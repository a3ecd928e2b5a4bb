//! A plain file holding a number, such as one a PLC bridge writes under /run.
//!
//! Strict: the file holds exactly one number, surrounding whitespace allowed; anything else is a
//! read error naming the file and what was found, never a guessed value (`ERROR -1 sensor
//! disconnected` is not -1, `0x7f` is not 0). For bridge files with several values, the config
//! picks one: by key (`level=12.5`, `level: 12.5`) or by column of the first line.
//!
//! Writers usually replace such files by renaming a new one over them, so a kept descriptor could
//! read the old one forever. The file is kept open all the same, and each read first asks the
//! path which file it names (one `stat`): the same device and inode is read again with one
//! `pread`; another is opened anew. Two system calls a read instead of five (open, fstat, two
//! reads, close). The inode cannot be reused by a new file while the old one is held open, so
//! the comparison cannot be fooled.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{SensorError, Source};
use crate::config::FileField;

/// Only the start of the file is read; the value is expected near it.
const MAX_BYTES: usize = 4096;

/// The most files all `file:` sensors of the process keep open between reads. Past it a sensor
/// opens its file for each read and closes it again (five system calls instead of two), so a
/// config of thousands of file sensors never runs the process out of descriptors (sockets,
/// the outbox and state files need theirs too).
pub const MAX_HELD: usize = 256;

/// Files held now, by every `FileSource` of the process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A file kept open between reads, counted in `HELD` while it lives.
struct Held {
    file: File,
    dev: u64,
    ino: u64,
}

impl Held {
    /// `file` kept, if the budget has room.
    fn keep(file: File, dev: u64, ino: u64) -> Result<Held, File> {
        match HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_HELD).then_some(n + 1)
        }) {
            Ok(_) => Ok(Held { file, dev, ino }),
            Err(_) => Err(file),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct FileSource {
    path: PathBuf,
    field: FileField,
    /// The file the path named at the last read, with its device and inode.
    held: Option<Held>,
    /// A file opened for one read only (the budget of held files was spent).
    once: Option<File>,
    /// Reused between reads.
    buf: Vec<u8>,
}

impl FileSource {
    pub fn new(path: PathBuf, field: FileField) -> FileSource {
        FileSource {
            path,
            field,
            held: None,
            once: None,
            buf: Vec::new(),
        }
    }

    /// The open file the path names now: the held one if it still is, else opened anew.
    fn file(&mut self) -> Result<&File, std::io::Error> {
        let now = std::fs::metadata(&self.path)?;
        let same = self
            .held
            .as_ref()
            .is_some_and(|held| (held.dev, held.ino) == (now.dev(), now.ino()));
        if !same {
            self.held = None;
            if !now.file_type().is_file() {
                return Err(not_regular(now.file_type()));
            }
            // Non-blocking, and only a regular file: opening a FIFO with no writer would block
            // the sampler until one appears (and it may have replaced the file since the stat).
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&self.path)?;
            let opened = file.metadata()?;
            if !opened.file_type().is_file() {
                return Err(not_regular(opened.file_type()));
            }
            match Held::keep(file, opened.dev(), opened.ino()) {
                Ok(held) => self.held = Some(held),
                Err(file) => return Ok(self.once.insert(file)),
            }
        }
        Ok(&self.held.as_ref().expect("held just above").file)
    }

    fn read_value(&mut self) -> Result<f64, SensorError> {
        let read_error = |path: &PathBuf, source| SensorError::Read {
            path: path.clone(),
            source,
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(MAX_BYTES, 0);
        let read = self.file().and_then(|file| file.read_at(&mut buf, 0));
        // A file opened for this read only is closed now.
        self.once = None;
        let length = match read {
            Ok(length) => length,
            Err(err) => {
                self.held = None;
                self.buf = buf;
                return Err(read_error(&self.path, err));
            }
        };
        buf.truncate(length);
        self.buf = buf;
        parse(&self.buf, &self.field).map_err(|err| match err {
            ParseError::NotANumber(found) => SensorError::NotANumber {
                path: self.path.clone(),
                found,
            },
            ParseError::Missing(what) => SensorError::NoField {
                path: self.path.clone(),
                what,
            },
        })
    }
}

fn not_regular(file_type: std::fs::FileType) -> std::io::Error {
    std::io::Error::other(format!(
        "not a regular file but {}",
        describe_type(file_type)
    ))
}

/// Why a file gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// What stands where the number should be.
    NotANumber(String),
    /// The key or column is not there.
    Missing(String),
}

/// The value `field` picks out of a file's bytes, or why there is none.
pub fn parse(bytes: &[u8], field: &FileField) -> Result<f64, ParseError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(ParseError::NotANumber(
            "bytes that are not UTF-8 text".to_owned(),
        ));
    };
    let value = match field {
        FileField::Whole => text.trim(),
        FileField::Key(key) => text
            .lines()
            .find_map(|line| keyed(line, key))
            .ok_or_else(|| {
                ParseError::Missing(format!(
                    "no line \"{key}=…\" or \"{key}: …\" in \"{}\"",
                    shown(text)
                ))
            })?,
        FileField::Column(column) => {
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            line.split_whitespace()
                .nth(column.saturating_sub(1))
                .ok_or_else(|| {
                    ParseError::Missing(format!(
                        "no column {column} in the line \"{}\"",
                        shown(line)
                    ))
                })?
        }
    };
    number(value).ok_or_else(|| ParseError::NotANumber(shown(value)))
}

/// The value of `key` on `line` (`key=value`, `key: value`, spaces around), if it is the key.
fn keyed<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?;
    let rest = rest.trim_start();
    let value = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':'))?;
    Some(value.trim())
}

/// Exactly one decimal number: an optional sign, digits with an optional fraction, an optional
/// exponent; finite. Nothing else (no hex, no units, no words).
pub fn number(text: &str) -> Option<f64> {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let has_digits = !whole.is_empty() || fraction.is_some_and(|f| !f.is_empty());
    if !has_digits || !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    if let Some(exponent) = exponent {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if exponent.is_empty() || !digits(exponent) {
            return None;
        }
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// What was found, as the error shows it: escaped, at most 40 characters.
fn shown(text: &str) -> String {
    let short: String = text.trim().chars().take(40).collect();
    short.escape_debug().to_string()
}

impl Source for FileSource {
    fn read(&mut self, out: &mut [Result<f64, SensorError>]) {
        out[0] = self.read_value();
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn unit(&self, _index: usize) -> Option<&'static str> {
        None
    }
}

/// A file type in words, for the error of a `file:` sensor that is not a regular file.
fn describe_type(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, field: FileField, expected: Result<f64, &str>) {
        match (parse(text.as_bytes(), &field), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(ParseError::NotANumber(found) | ParseError::Missing(found)), Err(part)) => {
                assert!(found.contains(part), "{text:?}: {found}")
            }
            (got, want) => panic!("{text:?} {field:?}: {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn exactly_one_number() {
        for (text, expected) in [
            ("123\n", Ok(123.0)),
            ("  -4.5 \n", Ok(-4.5)),
            (".5", Ok(0.5)),
            ("5.", Ok(5.0)),
            ("1.5e3", Ok(1500.0)),
            ("+2E-1", Ok(0.2)),
            // Issue 20: each of these read as a number before.
            (
                "ERROR -1 sensor disconnected",
                Err("ERROR -1 sensor disconnected"),
            ),
            ("0x7f", Err("0x7f")),
            ("level=12.5%", Err("level=12.5%")),
            ("12.5 %", Err("12.5 %")),
            ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES", Err("72 01")),
            ("", Err("")),
            ("nan", Err("nan")),
            ("inf", Err("inf")),
            ("1e999", Err("1e999")),
            ("2e", Err("2e")),
            ("-", Err("-")),
            ("1 2", Err("1 2")),
        ] {
            check(text, FileField::Whole, expected);
        }
    }

    #[test]
    fn a_field_by_key_or_column() {
        let bridge = "status: ok\nlevel=12.5\npressure : 3.25 \n";
        check(bridge, FileField::Key("level".to_owned()), Ok(12.5));
        check(bridge, FileField::Key("pressure".to_owned()), Ok(3.25));
        check(bridge, FileField::Key("status".to_owned()), Err("ok"));
        check(
            bridge,
            FileField::Key("flow".to_owned()),
            Err("no line \"flow=…\""),
        );
        check(bridge, FileField::Key("lev".to_owned()), Err("no line"));
        let columns = "\n  1700000000 21.5 45.0\n";
        check(columns, FileField::Column(2), Ok(21.5));
        check(columns, FileField::Column(3), Ok(45.0));
        check(columns, FileField::Column(4), Err("no column 4"));
        assert_eq!(
            parse(&[0xff, 0x31], &FileField::Whole),
            Err(ParseError::NotANumber(
                "bytes that are not UTF-8 text".to_owned()
            ))
        );
    }

    /// The file is held open between reads; whatever a writer does, a read gives what the path
    /// names now: rewritten in place, replaced by rename, removed, replaced by a FIFO, back.
    #[test]
    fn a_held_file_follows_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tank");
        let mut source = FileSource::new(path.clone(), FileField::Whole);
        std::fs::write(&path, "1\n").unwrap();
        assert_eq!(source.read_value().unwrap(), 1.0);
        std::fs::write(&path, "2\n").unwrap(); // in place: the same inode
        assert_eq!(source.read_value().unwrap(), 2.0);
        let next = dir.path().join("tank.new");
        std::fs::write(&next, "3\n").unwrap();
        std::fs::rename(&next, &path).unwrap(); // a new inode under the same name
        assert_eq!(source.read_value().unwrap(), 3.0);
        std::fs::write(&path, "").unwrap();
        assert!(source.read_value().is_err(), "an emptied file is no number");
        std::fs::remove_file(&path).unwrap();
        let err = source.read_value().unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = source.read_value().unwrap_err().to_string();
        assert!(err.contains("not a regular file but a FIFO"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "4").unwrap();
        assert_eq!(source.read_value().unwrap(), 4.0);
    }
}
