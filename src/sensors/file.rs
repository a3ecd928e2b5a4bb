//! A plain file holding a number, such as one a PLC bridge writes under /run.
//!
//! The file is opened on every read, unlike sysfs attributes: writers usually replace such files
//! by renaming a new one over them, and a kept descriptor would read the old one forever.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use super::{SensorError, Source};

/// Only the start of the file is read; the first number is expected near it.
const MAX_BYTES: usize = 4096;

pub(crate) struct FileSource {
    path: PathBuf,
    /// Reused between reads.
    buf: Vec<u8>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource {
            path,
            buf: Vec::with_capacity(256),
        }
    }

    fn read_value(&mut self) -> Result<f64, SensorError> {
        let read_error = |source| SensorError::Read {
            path: self.path.clone(),
            source,
        };
        // Non-blocking, and only a regular file: opening a FIFO with no writer would block the
        // sampler until one appears.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&self.path)
            .map_err(read_error)?;
        let file_type = file.metadata().map_err(read_error)?.file_type();
        if !file_type.is_file() {
            return Err(read_error(std::io::Error::other(format!(
                "not a regular file but {}",
                describe_type(file_type)
            ))));
        }
        self.buf.clear();
        file.take(MAX_BYTES as u64)
            .read_to_end(&mut self.buf)
            .map_err(read_error)?;
        first_number(&self.buf).ok_or_else(|| {
            let text = String::from_utf8_lossy(&self.buf);
            let shown: String = text.trim().chars().take(40).collect();
            SensorError::NotANumber {
                path: self.path.clone(),
                found: shown.escape_debug().to_string(),
            }
        })
    }
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

/// The first decimal number in `bytes`: an optional sign, digits with an optional fraction, and
/// an optional exponent. `level=12.5%` gives 12.5.
pub(crate) fn first_number(bytes: &[u8]) -> Option<f64> {
    let is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let mut start = 0;
    while start < bytes.len() {
        let mut i = start;
        if matches!(bytes[i], b'+' | b'-') {
            i += 1;
        }
        let digits_at = i;
        while is_digit(i) {
            i += 1;
        }
        let mut had_digits = i > digits_at;
        if bytes.get(i) == Some(&b'.') && (had_digits || is_digit(i + 1)) {
            i += 1;
            while is_digit(i) {
                i += 1;
            }
            had_digits = true;
        }
        if had_digits {
            if matches!(bytes.get(i), Some(b'e' | b'E')) {
                let mut j = i + 1;
                if matches!(bytes.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                if is_digit(j) {
                    while is_digit(j) {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text = std::str::from_utf8(&bytes[start..i]).ok()?;
            return text.parse::<f64>().ok().filter(|v| v.is_finite());
        }
        start += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::first_number;

    #[test]
    fn first_numbers() {
        for (text, expected) in [
            ("123\n", Some(123.0)),
            ("  -4.5 rest", Some(-4.5)),
            ("level=12.5%", Some(12.5)),
            ("t: .5", Some(0.5)),
            ("1.5e3", Some(1500.0)),
            ("2e", Some(2.0)),
            ("v-3", Some(-3.0)),
            ("abc", None),
            ("", None),
            ("- . e", None),
        ] {
            assert_eq!(first_number(text.as_bytes()), expected, "{text:?}");
        }
    }
}
