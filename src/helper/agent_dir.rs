//! The helper's way into `state_dir`, a directory the agent's user owns. The helper runs as
//! root and the agent may have been made to plant anything there: a symlink where a result goes
//! (into `/etc`), a FIFO where `status.json` is read (a helper waiting forever), a directory
//! replaced by a link. So every name is opened relative to a directory descriptor, with
//! `O_NOFOLLOW`, never a symlink followed, never a FIFO or device opened, and a written file is
//! created new (`O_EXCL`) and only then renamed into place.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

/// A directory in `state_dir` (or `state_dir` itself), opened once.
pub struct AgentDir {
    fd: OwnedFd,
    /// The agent's user and group: what the helper writes here is theirs.
    owner: (u32, u32),
}

fn errno(err: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(err)
}

/// A descriptor `open`/`openat` just returned, owned.
#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: the descriptor is new and nothing else owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl AgentDir {
    /// `state_dir` itself (its path is the config's, which only root writes).
    pub fn open_root(path: &Path, owner: (u32, u32)) -> std::io::Result<AgentDir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let fd = owned(fd);
        Ok(AgentDir { fd, owner })
    }

    /// The directory `name` in this one, made (mode 0700, the agent's) when missing; a symlink
    /// or anything not a directory there is refused.
    pub fn dir(&self, name: &str) -> std::io::Result<AgentDir> {
        plain_name(name)?;
        match nix::sys::stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) => {
                nix::unistd::fchownat(
                    Some(self.fd.as_raw_fd()),
                    name,
                    Some(self.owner.0.into()),
                    Some(self.owner.1.into()),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
            }
            Err(nix::errno::Errno::EEXIST) => {}
            Err(err) => return Err(errno(err)),
        }
        let fd = nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| {
            std::io::Error::other(format!(
                "{name} is not a directory (a symlink?): {}",
                errno(err)
            ))
        })?;
        let fd = owned(fd);
        Ok(AgentDir {
            fd,
            owner: self.owner,
        })
    }

    /// Reads the regular file `name`, at most `limit` bytes; a symlink, FIFO, device or larger
    /// file is an error, never a wait.
    pub fn read(&self, name: &str, limit: u64) -> std::io::Result<Vec<u8>> {
        plain_name(name)?;
        let fd = nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let file = File::from(owned(fd));
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other(format!(
                "{name} is not a regular file"
            )));
        }
        if metadata.len() > limit {
            return Err(std::io::Error::other(format!(
                "{name} is larger than {limit} bytes"
            )));
        }
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(std::io::Error::other(format!(
                "{name} is larger than {limit} bytes"
            )));
        }
        Ok(bytes)
    }

    /// A new file to write to, in place of `name` once [`Writing::commit`]ted: created fresh
    /// (whatever had its temporary name is removed, never written through), mode 0600, the
    /// agent's.
    pub fn create(&self, name: &str) -> std::io::Result<Writing<'_>> {
        plain_name(name)?;
        let temporary = format!(".{name}.tmp");
        let _ = nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            temporary.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let fd = nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            temporary.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        let file = File::from(owned(fd));
        std::os::unix::fs::fchown(&file, Some(self.owner.0), Some(self.owner.1))?;
        Ok(Writing {
            dir: self,
            file,
            temporary,
            name: name.to_owned(),
        })
    }

    /// Writes `bytes` as `name`, atomically and durably.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut writing = self.create(name)?;
        writing.write_all(bytes)?;
        writing.commit()
    }

    /// Removes the file `name` (a symlink itself, not what it leads to); gone already is fine.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        plain_name(name)?;
        match nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(err) => Err(errno(err)),
        }
    }

    /// The names of the regular files here with their modification times (no symlink, no
    /// directory), oldest first.
    pub fn files(&self) -> std::io::Result<Vec<String>> {
        let dup = nix::unistd::dup(self.fd.as_raw_fd()).map_err(errno)?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(errno)?;
        let mut files = Vec::new();
        for entry in dir.iter() {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(stat) = nix::sys::stat::fstatat(
                Some(self.fd.as_raw_fd()),
                name,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            if stat.st_mode & libc::S_IFMT == libc::S_IFREG {
                files.push(((stat.st_mtime, stat.st_mtime_nsec), name.to_owned()));
            }
        }
        files.sort();
        Ok(files.into_iter().map(|(_, name)| name).collect())
    }
}

impl AgentDir {
    /// Removes whatever is left here that is not a regular file (a symlink, a FIFO, an empty
    /// directory): nothing but requests may keep the helper's path unit triggering.
    pub fn clear_others(&self) {
        let Ok(dup) = nix::unistd::dup(self.fd.as_raw_fd()) else {
            return;
        };
        let Ok(mut dir) = nix::dir::Dir::from_fd(dup) else {
            return;
        };
        let names: Vec<std::ffi::CString> = dir
            .iter()
            .flatten()
            .map(|entry| entry.file_name().to_owned())
            .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
            .collect();
        for name in names {
            let Ok(stat) = nix::sys::stat::fstatat(
                Some(self.fd.as_raw_fd()),
                name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            let how = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                nix::unistd::UnlinkatFlags::RemoveDir
            } else if stat.st_mode & libc::S_IFMT == libc::S_IFREG {
                continue;
            } else {
                nix::unistd::UnlinkatFlags::NoRemoveDir
            };
            let _ = nix::unistd::unlinkat(Some(self.fd.as_raw_fd()), name.as_c_str(), how);
        }
    }
}

/// A file being written in an [`AgentDir`].
pub struct Writing<'a> {
    dir: &'a AgentDir,
    file: File,
    temporary: String,
    name: String,
}

impl Write for Writing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Writing<'_> {
    /// Durable, then in place: fsync, rename over `name` (a symlink there is replaced, not
    /// followed), fsync the directory.
    pub fn commit(self) -> std::io::Result<()> {
        self.file.sync_all()?;
        nix::fcntl::renameat(
            Some(self.dir.fd.as_raw_fd()),
            self.temporary.as_str(),
            Some(self.dir.fd.as_raw_fd()),
            self.name.as_str(),
        )
        .map_err(errno)?;
        nix::unistd::fsync(self.dir.fd.as_fd().as_raw_fd()).map_err(errno)
    }

    /// Given up: the temporary file goes.
    pub fn abandon(self) {
        let _ = nix::unistd::unlinkat(
            Some(self.dir.fd.as_raw_fd()),
            self.temporary.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// A name in one directory: no `/`, not `.` or `..`, not empty.
fn plain_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(std::io::Error::other(format!(
            "{name:?} is not a file name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    #[test]
    fn a_symlink_planted_where_the_helper_writes_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "precious").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(state.join("results")).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("results/r.json")).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("results/.r.json.tmp")).unwrap();
        let root = AgentDir::open_root(&state, me()).unwrap();
        let results = root.dir("results").unwrap();
        results.write("r.json", b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(std::fs::read(state.join("results/r.json")).unwrap(), b"{}");
        assert!(!std::fs::symlink_metadata(state.join("results/r.json"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("etc");
        std::fs::create_dir(&elsewhere).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.join("results")).unwrap();
        let root = AgentDir::open_root(&state, me()).unwrap();
        let err = root.dir("results").err().expect("refused");
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(root.dir("../etc").is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn a_fifo_or_a_symlink_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "{\"pid\":1}").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("status.json")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        let root = AgentDir::open_root(dir.path(), me()).unwrap();
        assert!(root.read("status.json", 1024).is_err());
        let started = std::time::Instant::now();
        assert!(root.read("fifo", 1024).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(root.read("big", 99).is_err());
        assert_eq!(root.read("big", 100).unwrap().len(), 100);
        assert_eq!(root.read("secret", 1024).unwrap(), b"{\"pid\":1}");
    }

    #[test]
    fn only_regular_files_are_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = AgentDir::open_root(dir.path(), me()).unwrap();
        root.write("b.json", b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        root.write("a.json", b"2").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.json")).unwrap();
        assert_eq!(root.files().unwrap(), ["b.json", "a.json"]);
        root.remove("b.json").unwrap();
        root.remove("b.json").unwrap();
        assert_eq!(root.files().unwrap(), ["a.json"]);
        root.clear_others();
        assert!(!dir.path().join("sub").exists() && !dir.path().join("link.json").exists());
        assert!(dir.path().join("a.json").exists());
    }
}
