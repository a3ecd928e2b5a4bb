//! The guest's apt repository: `scripts/apt-repo` (reprepro) with a throwaway signing key (gpg,
//! in a home of its own), served over HTTP from the host's loopback by a small static file server; the guest reaches it
//! at 10.0.2.101:80 through qemu's guestfwd. Like most real repositories it holds one version of
//! a package at a time: what an update installs is what `publish` put there last.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository as the guest sees it.
pub const REPO_IN_GUEST: &str = "10.0.2.101";

pub struct Repo {
    /// reprepro's base directory, also what is served.
    pub base: PathBuf,
    gnupg: PathBuf,
    /// The public key, armored, for the guest's `Signed-By`.
    pub key: String,
    pub port: u16,
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Repo {
    /// A repository made by `scripts/apt-repo` (the script a fleet uses) in `dir`, signed by a key
    /// made now, served on a free loopback port until the process ends.
    pub fn new(dir: &Path) -> Repo {
        let base = dir.join("repo");
        let gnupg = dir.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        run(
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apt-repo"))
                .env("GNUPGHOME", &gnupg)
                .arg("init")
                .arg(&base)
                .args(["--url", &format!("http://{REPO_IN_GUEST}/")]),
        );
        let key = std::fs::read_to_string(base.join("fieldagent.asc")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = base.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = served.clone();
                std::thread::spawn(move || serve(stream, &root));
            }
        });
        Repo {
            base,
            gnupg,
            key,
            port,
        }
    }

    /// `deb` becomes the one version of its package in the repository, indexes signed.
    pub fn publish(&self, deb: &Path) {
        run(
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apt-repo"))
                .env("GNUPGHOME", &self.gnupg)
                .arg("add")
                .arg(&self.base)
                .arg("bookworm")
                .arg(deb)
                .stdout(Stdio::piped()),
        );
    }

    /// The guest's apt source for this repository, as the script wrote it for bookworm.
    pub fn sources(&self) -> String {
        std::fs::read_to_string(self.base.join("fieldagent-bookworm.sources")).unwrap()
    }
}

/// One HTTP/1.1 connection: each GET answered with the file under `root` (no `..`), or 404;
/// closed after the answer.
fn serve(stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(stream) => stream,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or("/");
    let path = path
        .split('?')
        .next()
        .unwrap_or("/")
        .replace("%3a", ":")
        .replace("%3A", ":");
    let mut out = stream;
    let file = root.join(path.trim_start_matches('/'));
    let body = (!path.contains("..") && file.is_file())
        .then(|| std::fs::read(&file).ok())
        .flatten();
    let _ = match body {
        Some(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes()).and_then(|()| {
                if method == "HEAD" {
                    Ok(())
                } else {
                    out.write_all(&body)
                }
            })
        }
        None => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
    let _ = out.flush();
}
