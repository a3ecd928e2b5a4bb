//! The privileged helper (`fieldagent-helper`): what the agent may ask but cannot do itself, run
//! as root by systemd and nothing else. The agent keeps its user and its sandbox; the helper
//! takes its requests from `state_dir/requests/` (`operations::protocol`), checks each again
//! against the config in `/etc/fieldagent` (which the agent cannot write), acts, and writes how
//! it went to `state_dir/results/`, owned by the agent's user.
//!
//! - `run` (started by `fieldagent-helper.path` when a request waits): every request, one after
//!   the other; an update it had begun first.
//! - `recover` (at boot, before the agent starts): an update a power cut interrupted is finished
//!   or undone, so the agent that starts is one of the two versions, installed cleanly (see
//!   `update`).
//!
//! What the helper does of each kind: `software_update` through apt with a way back
//! ([`update`]); `restart` by `systemctl restart fieldagent` or `systemctl reboot`; `log_upload`
//! from the journal (`journalctl -u fieldagent -o json`), streamed into `state_dir/logs/` a line
//! at a time; `config_update` by writing the drop-in, and putting it back when the agent asks
//! ([`config`]).

pub mod agent_dir;
pub mod config;
pub mod update;

use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use agent_dir::AgentDir;

use crate::config::ValidConfig;
use crate::operations::protocol::{self, HelperRequest, HelperResult};
use crate::operations::{Params, State, Target};

/// The helper's own state (its update journal, the package kept to go back to): root's, not
/// the agent's, so nothing the agent writes decides what the helper installs.
pub const DEFAULT_DIR: &str = "/var/lib/fieldagent-helper";

/// The agent's systemd unit.
pub const AGENT_UNIT: &str = "fieldagent.service";

/// The largest request file the helper reads.
const MAX_REQUEST_FILE: u64 = 512 * 1024;

/// A request file the helper leaves itself to continue an update after `recover` (the agent
/// never writes a name starting with `~`; if it did, the helper would only look at its own
/// journal).
pub const RESUME: &str = "~resume.json";

/// What the helper works with.
pub struct Helper {
    pub config: ValidConfig,
    /// The agent's config file (its `conf.d/` is where `config_update` writes).
    pub config_path: PathBuf,
    /// The helper's own directory.
    pub dir: PathBuf,
    /// `state_dir`, the agent's: only ever entered through [`AgentDir`].
    pub state: AgentDir,
}

impl Helper {
    /// The helper for the config at `config_path`, its own state in `dir`.
    pub fn new(config_path: &Path, dir: &Path) -> Result<Helper, String> {
        let mut warnings = Vec::new();
        let config = crate::config::load_reporting(config_path, &mut warnings)
            .map_err(|err| format!("the helper cannot use the config: {err}"))?;
        let state_dir = &config.config().state_dir;
        let metadata = std::fs::metadata(state_dir)
            .map_err(|err| format!("cannot read state_dir {}: {err}", state_dir.display()))?;
        let state = AgentDir::open_root(state_dir, (metadata.uid(), metadata.gid()))
            .map_err(|err| format!("cannot open state_dir {}: {err}", state_dir.display()))?;
        crate::state::private_dir(dir)
            .map_err(|err| format!("cannot make {}: {err}", dir.display()))?;
        Ok(Helper {
            config,
            config_path: config_path.to_owned(),
            dir: dir.to_owned(),
            state,
        })
    }

    /// `run`: an update begun before comes first, then every request waiting, oldest first.
    pub fn run(&self) {
        update::resume(self);
        let requests = match self.state.dir(protocol::REQUESTS) {
            Ok(requests) => requests,
            Err(err) => {
                tracing::error!(error = %err, "Cannot open the requests' directory.");
                return;
            }
        };
        let _ = requests.remove(RESUME);
        for name in requests.files().unwrap_or_default() {
            if !name.ends_with(".json") || name.starts_with('~') {
                continue;
            }
            let request = match read_request(&requests, &name) {
                Ok(request) => request,
                Err(why) => {
                    tracing::error!(file = %name, reason = %why, "Request not taken.");
                    let _ = requests.remove(&name);
                    continue;
                }
            };
            // An update is recorded in the helper's journal before its file goes (a power cut
            // between the two finds it there, taken); anything else goes before its work
            // starts. Either way a request is never run twice.
            if update::taken(self).as_deref() == Some(request.id.as_str()) {
                let _ = requests.remove(&name);
                continue;
            }
            if let Params::SoftwareUpdate { package, version } = &request.params {
                let journal = match self.allowed(&request.params) {
                    Ok(()) => update::begin(self, &request.id, package, version),
                    Err(reason) => {
                        self.result(&request.id, State::Failed { reason });
                        None
                    }
                };
                let _ = requests.remove(&name);
                if let Some(journal) = journal {
                    update::update(self, journal);
                }
                continue;
            }
            let _ = requests.remove(&name);
            self.take(request);
        }
        // What is not a request goes too, or the path unit would start the helper again and
        // again for it.
        for name in requests.files().unwrap_or_default() {
            if !name.ends_with(".json") {
                let _ = requests.remove(&name);
            }
        }
        requests.clear_others();
    }

    /// One request: checked again against the config, then done.
    fn take(&self, request: HelperRequest) {
        tracing::info!(id = %request.id, operation = request.params.kind().name(), "Request taken.");
        if let Err(reason) = self.allowed(&request.params) {
            return self.result(&request.id, State::Failed { reason });
        }
        match &request.params {
            // Begun by `run`, which records it in the update journal first.
            Params::SoftwareUpdate { package, version } => {
                if let Some(journal) = update::begin(self, &request.id, package, version) {
                    update::update(self, journal);
                }
            }
            Params::Restart { target } => self.restart(&request.id, *target),
            Params::LogUpload {
                since_ts,
                until_ts,
                lines,
                priority,
                grep,
            } => self.log_upload(
                &request.id,
                *since_ts,
                *until_ts,
                *lines,
                *priority,
                grep.as_deref(),
            ),
            Params::ConfigUpdate { name, content } if request.undo => {
                let _ = (name, content);
                config::undo(self, &request.id)
            }
            Params::ConfigUpdate { name, content } => {
                config::apply(self, &request.id, name, content.as_deref())
            }
        }
    }

    /// The request checked again, here, against what the config allows: the agent may have
    /// been made to ask for more.
    fn allowed(&self, params: &Params) -> Result<(), String> {
        let operations = &self.config.config().operations;
        let disabled = |name: &str| {
            format!("refused by the helper: operations.{name} is not enabled in the config")
        };
        match params {
            Params::SoftwareUpdate { package, version } => {
                let update = operations
                    .software_update
                    .as_ref()
                    .ok_or_else(|| disabled("software_update"))?;
                if !update.packages.contains(package)
                    || !crate::config::operations::debian_package_name(package)
                {
                    return Err(format!("refused by the helper: package \"{package}\" is not in operations.software_update.packages"));
                }
                if !crate::operations::debian_version(version) {
                    return Err("refused by the helper: not a Debian version".to_owned());
                }
            }
            Params::Restart { target } => {
                let restart = operations
                    .restart
                    .as_ref()
                    .ok_or_else(|| disabled("restart"))?;
                if *target == Target::Device && !restart.device {
                    return Err(
                        "refused by the helper: operations.restart.device is false".to_owned()
                    );
                }
            }
            Params::LogUpload { lines, grep, .. } => {
                let upload = operations
                    .log_upload
                    .as_ref()
                    .ok_or_else(|| disabled("log_upload"))?;
                if *lines == 0 || *lines > upload.max_lines {
                    return Err(
                        "refused by the helper: more lines than operations.log_upload.max_lines"
                            .to_owned(),
                    );
                }
                if grep.as_ref().is_some_and(|grep| grep.len() > 256) {
                    return Err("refused by the helper: grep is too long".to_owned());
                }
            }
            Params::ConfigUpdate { name, .. } => {
                let update = operations
                    .config_update
                    .as_ref()
                    .ok_or_else(|| disabled("config_update"))?;
                if !update
                    .names
                    .iter()
                    .any(|glob| crate::config::operations::drop_in_matches(glob, name))
                {
                    return Err("refused by the helper: not a drop-in name operations.config_update.names allows".to_owned());
                }
            }
        }
        Ok(())
    }

    /// Writes the result of operation `id` for the agent, durably.
    pub fn result(&self, id: &str, state: State) {
        let result = HelperResult {
            id: id.to_owned(),
            state,
            ts: crate::model::now_ms(),
        };
        let name = format!("{}.json", protocol::file_name(id));
        let written = serde_json::to_vec(&result)
            .map_err(std::io::Error::other)
            .and_then(|bytes| self.state.dir(protocol::RESULTS)?.write(&name, &bytes));
        if let Err(err) = written {
            tracing::error!(file = %name, error = %err, "Cannot write a result for the agent.");
        }
    }

    /// Writes `value` as JSON, as `name` in the agent's `dir` (atomically, durably, the agent's).
    pub fn write_for_agent<T: Serialize>(
        &self,
        dir: &str,
        name: &str,
        value: &T,
    ) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        self.state.dir(dir)?.write(name, &bytes)
    }

    /// `restart`: the agent (`systemctl restart`) or the device (`systemctl reboot`). The agent
    /// proves it afterwards by its new start time or boot id; only a failure is said here.
    fn restart(&self, id: &str, target: Target) {
        self.result(
            id,
            State::Executing {
                step: "restarting".to_owned(),
            },
        );
        let args: &[&str] = match target {
            Target::Agent => &["restart", "--no-block", AGENT_UNIT],
            Target::Device => &["reboot"],
        };
        match run_command("systemctl", args) {
            Ok(_) => {}
            Err(why) => self.result(
                id,
                State::Failed {
                    reason: format!("systemctl {}: {why}", args.join(" ")),
                },
            ),
        }
    }

    /// `log_upload`: the agent's own journal within the window, at most `lines` (the newest),
    /// oldest first, a JSON object a line into `state_dir/logs/`; never held in memory whole.
    fn log_upload(
        &self,
        id: &str,
        since_ts: Option<u64>,
        until_ts: Option<u64>,
        lines: u64,
        priority: Option<u8>,
        grep: Option<&str>,
    ) {
        self.result(
            id,
            State::Executing {
                step: "reading the journal".to_owned(),
            },
        );
        let mut args = vec![
            "--unit".to_owned(),
            AGENT_UNIT.to_owned(),
            "--output".to_owned(),
            "json".to_owned(),
            "--no-pager".to_owned(),
            "--lines".to_owned(),
            lines.to_string(),
        ];
        if let Some(since) = since_ts {
            args.push(format!("--since=@{}.{:03}", since / 1000, since % 1000));
        }
        if let Some(until) = until_ts {
            args.push(format!("--until=@{}.{:03}", until / 1000, until % 1000));
        }
        if let Some(priority) = priority {
            args.push(format!("--priority={priority}"));
        }
        if let Some(grep) = grep {
            args.push(format!("--grep={grep}"));
        }
        let name = format!("{}.jsonl", protocol::file_name(id));
        match self.stream_journal(&args, &name) {
            Ok(count) => self.result(
                id,
                State::Successful {
                    result: serde_json::json!({ "lines": count }),
                },
            ),
            Err(reason) => self.result(id, State::Failed { reason }),
        }
    }

    /// Runs journalctl with `args`, writing each entry as `{"ts","priority","message"}` to
    /// `name` in `state_dir/logs/` (the agent's). How many lines were written.
    fn stream_journal(&self, args: &[String], name: &str) -> Result<u64, String> {
        let logs = self
            .state
            .dir(protocol::LOGS)
            .map_err(|err| format!("cannot open {}: {err}", protocol::LOGS))?;
        let mut child = Command::new("journalctl")
            .args(args)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("journalctl: {err} (no journal on this system?)"))?;
        let writing = logs.create(name).map_err(|err| err.to_string())?;
        let mut out = std::io::BufWriter::new(writing);
        let stdout = child.stdout.take().expect("piped");
        let mut count = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(entry) = journal_line(&line) else {
                continue;
            };
            writeln!(out, "{entry}").map_err(|err| err.to_string())?;
            count += 1;
        }
        let output = child.wait_with_output().map_err(|err| err.to_string())?;
        let writing = out.into_inner().map_err(|err| err.to_string())?;
        // journalctl exits 1 with "-- No entries --" on some versions when nothing matched.
        if !output.status.success() && count == 0 {
            let said = String::from_utf8_lossy(&output.stderr);
            if !said.contains("No entries") && !said.trim().is_empty() {
                writing.abandon();
                return Err(format!("journalctl: {}", said.trim()));
            }
        }
        writing.commit().map_err(|err| err.to_string())?;
        Ok(count)
    }
}

/// One line of `journalctl -o json` as the agent sends it: `{"ts","priority","message"}` (a
/// message journald stored as bytes, an array of numbers, as text).
fn journal_line(line: &str) -> Option<serde_json::Value> {
    let entry = serde_json::from_str::<serde_json::Value>(line).ok()?;
    let ts = entry["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|us| us.parse::<u64>().ok())
        .map_or(0, |us| us / 1000);
    let priority = entry["PRIORITY"]
        .as_str()
        .and_then(|p| p.parse::<u8>().ok())
        .unwrap_or(6);
    let message = match &entry["MESSAGE"] {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(bytes) => String::from_utf8_lossy(
            &bytes
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect::<Vec<u8>>(),
        )
        .into_owned(),
        _ => String::new(),
    };
    Some(serde_json::json!({ "ts": ts, "priority": priority, "message": message }))
}

/// Reads a request file: a regular file, not too large, a [`HelperRequest`] whose id names it.
fn read_request(requests: &AgentDir, name: &str) -> Result<HelperRequest, String> {
    let bytes = requests
        .read(name, MAX_REQUEST_FILE)
        .map_err(|err| err.to_string())?;
    let request: HelperRequest =
        serde_json::from_slice(&bytes).map_err(|err| format!("not a request: {err}"))?;
    if name != format!("{}.json", protocol::file_name(&request.id)) {
        return Err("its name is not its id's".to_owned());
    }
    Ok(request)
}

/// How long one apt or dpkg command may take before the helper gives up on it (kills it and its
/// children): a download from a slow mirror, a package's scripts. An install cut short here is
/// rolled back like one a power cut interrupted.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `program` with `args` (no shell), with a plain environment for apt and dpkg, for at most
/// [`COMMAND_TIMEOUT`]; its output, or why it failed (its last lines of errors).
pub fn run_command(program: &str, args: &[&str]) -> Result<String, String> {
    run_command_in(program, args, None, COMMAND_TIMEOUT)
}

pub fn run_command_in(
    program: &str,
    args: &[&str],
    dir: Option<&Path>,
    timeout: Duration,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LANG", "C.UTF-8")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends its children too.
        .process_group(0);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(err) => return Err(format!("{program}: {err}")),
        }
    };
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let Some(status) = status else {
        return Err(format!(
            "{program} did not finish within {} s and was stopped",
            timeout.as_secs()
        ));
    };
    if status.success() {
        return Ok(stdout);
    }
    let tail: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|line| !line.trim().is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
    Err(format!("{program} {status}: {tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_entry_becomes_a_line_of_ts_priority_and_message() {
        let line = r#"{"__REALTIME_TIMESTAMP":"1765000000123456","PRIORITY":"3","MESSAGE":"Lost the connection.","_PID":"42"}"#;
        assert_eq!(
            journal_line(line).unwrap(),
            serde_json::json!({"ts": 1765000000123u64, "priority": 3, "message": "Lost the connection."})
        );
        let bytes = r#"{"__REALTIME_TIMESTAMP":"1000","PRIORITY":"6","MESSAGE":[104,105,255]}"#;
        assert_eq!(journal_line(bytes).unwrap()["message"], "hi\u{fffd}");
        assert!(journal_line("-- No entries --").is_none());
    }

    #[test]
    fn a_command_that_hangs_is_stopped_with_its_children() {
        let started = Instant::now();
        let err = run_command_in(
            "sh",
            &["-c", "sleep 30 & sleep 30"],
            None,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(err.contains("did not finish within 0 s"), "{err}");
        // The pipes closed: the background child was killed too, or this would wait 30 s.
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = run_command("sh", &["-c", "echo first >&2; echo why >&2; exit 3"]).unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("why"),
            "{err}"
        );
        assert_eq!(run_command("echo", &["out"]).unwrap(), "out\n");
    }
}
