//! `software_update` through apt, with a way back that needs neither the network nor a person.
//!
//! The helper keeps a journal of one update at a time (`update.json` in its own directory, saved
//! atomically and fsynced before each phase begins), so a power cut at any instant ends in a
//! known state:
//!
//! | phase | what is done in it | after a power cut (`recover` at boot before the agent, then `run`) |
//! |---|---|---|
//! | downloading | the installed version's package kept (`apt-get download`, fsynced), the new one fetched (`apt-get install --download-only`); nothing changed yet | ends `failed` "interrupted: …": nothing was changed |
//! | installing | `apt-get install PACKAGE=VERSION` (dpkg restarts the agent) | `dpkg --configure -a`, the kept package installed again, then as `reverted` |
//! | confirming | waiting up to `confirm_s` for the new version to be running and connected (`status.json`, written in this boot by a live agent of that version) | confirming again, from the boot on |
//! | rolling_back | the kept package installed again (`apt-get install ./kept.deb`, offline) | installed again (again), then as `reverted` |
//! | reverted | the kept version installed; waiting for it to be online | waiting again, then `failed` "rolled back: …" |
//! | done | the outcome is in the journal; the result written for the agent | the result written again until it is known to be |
//!
//! The outcome is saved in the journal before the result is written for the agent, so it is
//! decided once: a power cut between the two writes the same result again. The agent learns each
//! step and the outcome from the result file; its terminal state says `successful`
//! `{"from","to"}`, or `failed` with a reason that starts `rolled back:` or `interrupted:`, or
//! why nothing was changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{run_command, run_command_in, Helper, RESUME};
use crate::operations::protocol;
use crate::operations::State;

/// The journal's file, in the helper's directory.
pub const JOURNAL: &str = "update.json";

/// The phases of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Installing,
    Confirming,
    RollingBack,
    Reverted,
    Done,
}

/// One update, as the helper keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub package: String,
    pub from: String,
    pub to: String,
    pub phase: Phase,
    /// The installed version's package, kept to go back to.
    pub kept: Option<PathBuf>,
    /// How long the new (and, rolling back, the old) version has to come online.
    pub confirm_s: f64,
    /// Why it is rolling back, for the reason its failure gives.
    #[serde(default)]
    pub why: String,
    /// How it ended, decided once (phase `done`).
    #[serde(default)]
    pub outcome: Option<State>,
    /// The outcome is written for the agent.
    #[serde(default)]
    pub reported: bool,
}

impl Journal {
    fn path(helper: &Helper) -> PathBuf {
        helper.dir.join(JOURNAL)
    }

    fn load(helper: &Helper) -> Option<Journal> {
        let path = Journal::path(helper);
        path.exists()
            .then(|| crate::state::load::<Option<Journal>>(&path))
            .flatten()
    }

    /// Enters `phase`, saved before anything of it is done.
    fn enter(&mut self, helper: &Helper, phase: Phase) {
        self.phase = phase;
        if let Err(err) = crate::state::save(&Journal::path(helper), &Some(self.clone())) {
            tracing::error!(error = %err, "Cannot save the update journal; a power cut now would leave the update's phase unknown.");
        }
    }

    /// Ends with `outcome`: saved in the journal first, then written for the agent.
    fn finish(&mut self, helper: &Helper, outcome: State) {
        self.outcome = Some(outcome);
        self.enter(helper, Phase::Done);
        self.report(helper);
    }

    /// The decided outcome written for the agent (again, after a power cut between the two).
    fn report(&mut self, helper: &Helper) {
        if let Some(outcome) = self.outcome.clone() {
            helper.result(&self.id, outcome);
            self.reported = true;
            self.enter(helper, Phase::Done);
        }
    }
}

/// The package of the installed version, kept by every update for the next one's way back.
fn installed_dir(helper: &Helper) -> PathBuf {
    helper.dir.join("installed")
}

/// The package of the version being installed.
fn incoming_dir(helper: &Helper) -> PathBuf {
    helper.dir.join("incoming")
}

fn executing(helper: &Helper, id: &str, step: &str) {
    helper.result(
        id,
        State::Executing {
            step: step.to_owned(),
        },
    );
}

/// apt waits this long for another apt or dpkg (a daily timer, a person) to let go of its lock
/// rather than failing at once.
const LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";

/// The journal of the update the request `id` asks for (`package` to `version`), saved before
/// the request file is removed, so a request taken is never lost nor taken twice; `None` when it
/// ends at once (no apt, not installed, already that version), its result written.
pub fn begin(helper: &Helper, id: &str, package: &str, version: &str) -> Option<Journal> {
    let fail = |reason: String| helper.result(id, State::Failed { reason });
    if !Path::new("/usr/bin/apt-get").exists() || !Path::new("/usr/bin/dpkg").exists() {
        fail("this system has no apt: a device built as an image (Yocto) updates its whole image with RAUC, SWUpdate or Mender instead; nothing was changed".to_owned());
        return None;
    }
    let Some(confirm_s) = helper
        .config
        .config()
        .operations
        .software_update
        .as_ref()
        .map(|update| update.confirm_s)
    else {
        fail("refused by the helper: operations.software_update is not enabled".to_owned());
        return None;
    };
    let Some(from) = installed(package) else {
        fail(format!("{package} is not installed; nothing was changed"));
        return None;
    };
    if from == version {
        helper.result(
            id,
            State::Successful {
                result: json!({ "from": from, "to": version, "note": "already installed" }),
            },
        );
        return None;
    }
    let mut journal = Journal {
        id: id.to_owned(),
        package: package.to_owned(),
        from,
        to: version.to_owned(),
        phase: Phase::Downloading,
        kept: None,
        confirm_s,
        why: String::new(),
        outcome: None,
        reported: false,
    };
    journal.enter(helper, Phase::Downloading);
    Some(journal)
}

/// The id of the update the journal holds, whatever its phase: its request was taken.
pub fn taken(helper: &Helper) -> Option<String> {
    Journal::load(helper).map(|journal| journal.id)
}

/// `software_update` as `begin` recorded it: the way back kept, the new version downloaded,
/// installed, confirmed, or rolled back.
pub fn update(helper: &Helper, mut journal: Journal) {
    let id = journal.id.clone();
    let (package, from, version) = (
        journal.package.clone(),
        journal.from.clone(),
        journal.to.clone(),
    );
    executing(helper, &id, "downloading");
    refresh_indexes();
    // The way back first: without it, nothing is changed.
    let kept = match keep(helper, &package, &from) {
        Ok(kept) => kept,
        Err(why) => {
            let reason =
                format!("cannot keep version {from} to go back to ({why}); nothing was changed");
            return journal.finish(helper, State::Failed { reason });
        }
    };
    journal.kept = Some(kept);
    let incoming = match download(helper, &package, &version) {
        Ok(incoming) => incoming,
        Err(why) => {
            let reason =
                format!("version {version} cannot be downloaded ({why}); nothing was changed");
            return journal.finish(helper, State::Failed { reason });
        }
    };
    journal.enter(helper, Phase::Installing);
    executing(helper, &id, "installing");
    let installed_at = crate::clock::boot_ms();
    if let Err(why) = install_file(&incoming) {
        journal.why = format!("the install of {version} failed ({why})");
        journal.enter(helper, Phase::RollingBack);
        return roll_back(helper, &mut journal);
    }
    executing(helper, &id, "restarting");
    journal.enter(helper, Phase::Confirming);
    confirm(helper, &mut journal, installed_at);
}

/// Installs the package file at `path` (its dependencies from the device's sources when it
/// has new ones), keeping the operator's conffiles.
fn install_file(path: &Path) -> Result<(), String> {
    let path = path.display().to_string();
    run_command(
        "apt-get",
        &[
            "install",
            "--yes",
            "--allow-downgrades",
            "-o",
            LOCK_WAIT,
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "Dpkg::Options::=--force-confdef",
            &path,
        ],
    )
    .map(|_| ())
}

/// Waits for the new version to be running and connected, then ends; rolls back when it is not
/// within `confirm_s`.
fn confirm(helper: &Helper, journal: &mut Journal, since_boot_ms: u64) {
    executing(helper, &journal.id, "confirming");
    let upstream = crate::operations::upstream_version(&journal.to).to_owned();
    let wait = Duration::from_secs_f64(journal.confirm_s);
    if online(helper, &upstream, since_boot_ms, wait) {
        // The new version's package is the way back of the next update.
        promote_incoming(helper);
        let result = json!({ "from": journal.from, "to": journal.to });
        return journal.finish(helper, State::Successful { result });
    }
    journal.why = format!(
        "version {} was not running and connected within {} s",
        journal.to, journal.confirm_s
    );
    journal.enter(helper, Phase::RollingBack);
    roll_back(helper, journal);
}

/// Installs the kept version again (offline), then waits for it as `reverted`.
fn roll_back(helper: &Helper, journal: &mut Journal) {
    executing(helper, &journal.id, "rolling back");
    let installed_at = crate::clock::boot_ms();
    match reinstall(journal) {
        Ok(()) => {
            journal.enter(helper, Phase::Reverted);
            reverted(helper, journal, installed_at);
        }
        Err(why) => {
            let reason = format!(
                "rolled back: {}; installing {} again failed too ({why}): a person must look at this device",
                journal.why, journal.from
            );
            journal.finish(helper, State::Failed { reason });
        }
    }
}

/// The kept version is installed again: waits for it to be online, and ends `failed`
/// "rolled back: …".
fn reverted(helper: &Helper, journal: &mut Journal, since_boot_ms: u64) {
    let upstream = crate::operations::upstream_version(&journal.from).to_owned();
    let wait = Duration::from_secs_f64(journal.confirm_s);
    let reason = if online(helper, &upstream, since_boot_ms, wait) {
        format!(
            "rolled back: {}; {} is installed again and online",
            journal.why, journal.from
        )
    } else {
        format!(
            "rolled back: {}; {} is installed again but was not online within {} s either",
            journal.why, journal.from, journal.confirm_s
        )
    };
    let _ = std::fs::remove_dir_all(incoming_dir(helper));
    journal.finish(helper, State::Failed { reason });
}

/// The kept package installed again: dpkg's own repairs first (an install a power cut
/// interrupted), then the package from its file, offline, with what apt has for its
/// dependencies; dpkg alone when apt will not.
fn reinstall(journal: &Journal) -> Result<(), String> {
    let _ = run_command("dpkg", &["--configure", "-a"]);
    let kept = journal
        .kept
        .as_ref()
        .ok_or_else(|| "no package was kept".to_owned())?;
    let kept = kept.display().to_string();
    run_command(
        "apt-get",
        &[
            "install",
            "--yes",
            "--allow-downgrades",
            "--no-download",
            "-o",
            LOCK_WAIT,
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "Dpkg::Options::=--force-confdef",
            &kept,
        ],
    )
    .or_else(|first| {
        run_command("dpkg", &["--install", "--force-confold", &kept])
            .map_err(|second| format!("{first}; then {second}"))
    })
    .map(|_| ())
}

/// The package file of `package` at `version`, in the helper's `installed/`: kept there by the
/// update that installed it, else copied from apt's cache, else downloaded from the device's
/// sources (which often hold only the newest version: hence the first two).
fn keep(helper: &Helper, package: &str, version: &str) -> Result<PathBuf, String> {
    let dir = installed_dir(helper);
    crate::state::private_dir(&dir).map_err(|err| err.to_string())?;
    if let Some(found) = package_in(&dir, package, version) {
        return Ok(found);
    }
    let cached = package_in(Path::new("/var/cache/apt/archives"), package, version);
    let found = if let Some(cached) = cached {
        let target = dir.join(cached.file_name().expect("a file"));
        std::fs::copy(&cached, &target).map_err(|err| err.to_string())?;
        target
    } else {
        let wanted = format!("{package}={version}");
        run_command_in(
            "apt-get",
            &["download", "-o", LOCK_WAIT, &wanted],
            Some(&dir),
            super::COMMAND_TIMEOUT,
        )
        .map_err(|why| format!("not kept by an earlier update, not in apt's cache, and {why}"))?;
        package_in(&dir, package, version)
            .ok_or_else(|| format!("apt-get download left no package in {}", dir.display()))?
    };
    // Only this version's package stays; durable before anything is changed.
    for entry in std::fs::read_dir(&dir)
        .map_err(|err| err.to_string())?
        .flatten()
    {
        if entry.path() != found {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    sync_file(&found)?;
    Ok(found)
}

/// The new version's package, downloaded from the device's sources into `incoming/`.
fn download(helper: &Helper, package: &str, version: &str) -> Result<PathBuf, String> {
    let dir = incoming_dir(helper);
    let _ = std::fs::remove_dir_all(&dir);
    crate::state::private_dir(&dir).map_err(|err| err.to_string())?;
    let wanted = format!("{package}={version}");
    let fetch = || {
        run_command_in(
            "apt-get",
            &["download", "-o", LOCK_WAIT, &wanted],
            Some(&dir),
            super::COMMAND_TIMEOUT,
        )
    };
    if let Err(first) = fetch() {
        // apt keeps its indexes without an fsync: a power cut soon after an `apt-get update`
        // can leave them empty while their signed release file says they are current, and apt
        // then knows no version at all. They are fetched whole again, once.
        tracing::warn!(reason = %first, "Download failed; fetching apt's indexes whole again.");
        clear_indexes();
        refresh_indexes();
        fetch().map_err(|second| {
            format!("{second} (and before the indexes were fetched again: {first})")
        })?;
    }
    let found = package_in(&dir, package, version)
        .ok_or_else(|| format!("apt-get download left no package in {}", dir.display()))?;
    // On disk before the install: after it, this file is the next update's way back.
    sync_file(&found)?;
    Ok(found)
}

/// `path` and its directory on disk.
fn sync_file(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .and_then(|()| std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all())
        .map_err(|err| format!("cannot write {} to disk: {err}", path.display()))
}

/// `apt-get update`, then everything to disk: apt does not fsync its indexes, and a power cut
/// before the kernel writes them would leave them empty.
fn refresh_indexes() {
    if let Err(why) = run_command("apt-get", &["update", "-o", LOCK_WAIT]) {
        tracing::warn!(reason = %why, "apt-get update failed; trying the indexes there are.");
    }
    nix::unistd::sync();
}

/// apt's downloaded indexes removed (not its lock or its partial downloads' directory), so the
/// next `apt-get update` fetches each whole.
fn clear_indexes() {
    let Ok(entries) = std::fs::read_dir("/var/lib/apt/lists") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name != "lock" && name != "partial" && entry.path().is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The new version is confirmed: its package replaces the old one in `installed/`.
fn promote_incoming(helper: &Helper) {
    let incoming = incoming_dir(helper);
    let installed = installed_dir(helper);
    let Ok(entries) = std::fs::read_dir(&incoming) else {
        return;
    };
    let new: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    if new.is_empty() {
        return;
    }
    let _ = std::fs::remove_dir_all(&installed);
    if std::fs::rename(&incoming, &installed).is_ok() {
        let _ = std::fs::File::open(&helper.dir).and_then(|dir| dir.sync_all());
    }
}

/// The package file in `dir` whose control fields say `package` and `version`.
fn package_in(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .find(|path| {
            let path = path.display().to_string();
            run_command(
                "dpkg-deb",
                &["--show", "--showformat=${Package} ${Version}", &path],
            )
            .is_ok_and(|fields| fields.trim() == format!("{package} {version}"))
        })
}

/// The installed version of `package`, when it is installed.
fn installed(package: &str) -> Option<String> {
    let output = run_command(
        "dpkg-query",
        &[
            "--show",
            "--showformat=${db:Status-Status} ${Version}",
            package,
        ],
    )
    .ok()?;
    let (status, version) = output.trim().split_once(' ')?;
    (status == "installed").then(|| version.to_owned())
}

/// Waits up to `wait` until `state_dir/status.json` says an agent of version `upstream` is
/// running and connected: written in this boot (its boot id), after `since_boot_ms`, by a
/// process that is alive.
fn online(helper: &Helper, upstream: &str, since_boot_ms: u64, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let boot_id = crate::mqtt::boot_id();
    loop {
        let written: Option<crate::local_status::Written> = helper
            .state
            .read(crate::local_status::FILE, 1024 * 1024)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(written) = written {
            if says_online(&written, upstream, &boot_id, since_boot_ms) {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `written` is from an agent of version `upstream`, of boot `boot_id`, written after
/// `since_boot_ms`, alive and connected.
fn says_online(
    written: &crate::local_status::Written,
    upstream: &str,
    boot_id: &str,
    since_boot_ms: u64,
) -> bool {
    let this_boot = written.boot_id.as_deref() == Some(boot_id);
    let fresh = written
        .written_boot_ms
        .is_some_and(|written| written >= since_boot_ms);
    let alive = Path::new(&format!("/proc/{}", written.pid)).exists();
    this_boot && fresh && alive && written.connected && written.version == upstream
}

/// `run`: an update a start found unfinished (after `recover`, or a helper killed mid-way) goes
/// on from its phase.
pub fn resume(helper: &Helper) {
    let Some(mut journal) = Journal::load(helper) else {
        return;
    };
    match journal.phase {
        Phase::Done if journal.reported => {}
        Phase::Done => journal.report(helper),
        Phase::Downloading => {
            let _ = std::fs::remove_dir_all(incoming_dir(helper));
            let reason = format!(
                "interrupted: the update stopped while downloading; nothing was changed, {} is installed",
                journal.from
            );
            journal.finish(helper, State::Failed { reason });
        }
        Phase::Installing => {
            journal.why = "the install was interrupted (a power cut or a kill)".to_owned();
            journal.enter(helper, Phase::RollingBack);
            roll_back(helper, &mut journal);
        }
        Phase::Confirming => {
            tracing::info!(id = %journal.id, "Confirming the update again after a restart.");
            // Whatever this boot's agent of the new version wrote counts (the boot id tells
            // this boot from the one before).
            confirm(helper, &mut journal, 0);
        }
        Phase::RollingBack => roll_back(helper, &mut journal),
        Phase::Reverted => reverted(helper, &mut journal, 0),
    }
}

/// `recover`, at boot before the agent starts: the packages are put right so the agent that
/// starts is one of the two versions, cleanly installed; waiting for it to come online is left
/// to `run`, which a request file of the helper's own starts once the agent runs.
pub fn recover(helper: &Helper) {
    let Some(mut journal) = Journal::load(helper) else {
        return;
    };
    match journal.phase {
        Phase::Done if journal.reported => return,
        Phase::Done | Phase::Downloading | Phase::Reverted => {}
        Phase::Installing | Phase::RollingBack => {
            tracing::warn!(id = %journal.id, phase = ?journal.phase, "An update was interrupted; installing the kept version again before the agent starts.");
            if journal.phase == Phase::Installing {
                journal.why = "a power cut interrupted the install".to_owned();
                journal.enter(helper, Phase::RollingBack);
            }
            match reinstall(&journal) {
                Ok(()) => journal.enter(helper, Phase::Reverted),
                Err(why) => {
                    tracing::error!(reason = %why, "Cannot install the kept version again.")
                }
            }
        }
        Phase::Confirming => {
            // A half-configured package would not start: dpkg finishes it.
            let _ = run_command("dpkg", &["--configure", "-a"]);
        }
    }
    // `run` goes on once the agent runs (the path unit starts it for this file).
    if let Err(err) =
        helper.write_for_agent(protocol::REQUESTS, RESUME, &json!({ "resume": journal.id }))
    {
        tracing::error!(error = %err, "Cannot leave the resume request; the update ends at the next request.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_its_phase_through_its_file() {
        let journal = Journal {
            id: "u1".to_owned(),
            package: "fieldagent".to_owned(),
            from: "0.1.0-1".to_owned(),
            to: "0.1.1-1".to_owned(),
            phase: Phase::Confirming,
            kept: Some(PathBuf::from(
                "/var/lib/fieldagent-helper/kept/fieldagent_0.1.0-1_amd64.deb",
            )),
            confirm_s: 120.0,
            why: String::new(),
            outcome: None,
            reported: false,
        };
        let text = serde_json::to_string(&Some(journal.clone())).unwrap();
        assert!(text.contains(r#""phase":"confirming""#), "{text}");
        let back: Option<Journal> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Some(journal));
    }

    #[test]
    fn online_means_this_boot_this_version_a_live_process_and_connected() {
        let written = crate::local_status::Written {
            pid: std::process::id(),
            version: "0.1.1".to_owned(),
            written_boot_ms: Some(5_000),
            boot_id: Some("boot-a".to_owned()),
            connected: true,
            ..Default::default()
        };
        assert!(says_online(&written, "0.1.1", "boot-a", 4_000));
        // Another version, another boot, written before the install, offline, a dead process.
        assert!(!says_online(&written, "0.1.0", "boot-a", 4_000));
        assert!(!says_online(&written, "0.1.1", "boot-b", 4_000));
        assert!(!says_online(&written, "0.1.1", "boot-a", 6_000));
        let offline = crate::local_status::Written {
            connected: false,
            ..written.clone()
        };
        assert!(!says_online(&offline, "0.1.1", "boot-a", 4_000));
        let gone = crate::local_status::Written {
            pid: u32::MAX - 1,
            ..written.clone()
        };
        assert!(!says_online(&gone, "0.1.1", "boot-a", 4_000));
        // A file of an older agent, without the boot id: never proof.
        let old = crate::local_status::Written {
            boot_id: None,
            ..written
        };
        assert!(!says_online(&old, "0.1.1", "boot-a", 0));
    }
}
