//! The operations scenarios: the device's software updated from its apt repository through the
//! privileged helper, with rollbacks and power cuts during updates; restarts of the agent and of
//! the device; a log upload. The operator's side is the broker: requests published, states and
//! log chunks observed on `devices/<id>/operations/#`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Report, Run, ID, ROOT};

/// How long the new version has to come online in the guest (software emulation: a start and a
/// TLS connect take seconds).
const CONFIRM_S: u64 = 45;

/// The packages of scripts/system-debs, oldest version first: this tree, its version raised,
/// broken, hanging.
pub fn debs() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("target/system/debs");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("no {}: run ./scripts/system-debs", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort_by_key(|path| version_of(path));
    assert_eq!(debs.len(), 4, "scripts/system-debs makes four: {debs:?}");
    debs
}

/// The Debian version in a package's file name, as numbers to sort by.
fn version_of(path: &Path) -> Vec<u64> {
    deb_version(path)
        .split(['.', '-'])
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// `fieldagent_0.1.1-1_amd64.deb` -> `0.1.1-1`.
pub fn deb_version(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    name.split('_').nth(1).unwrap_or_default().to_owned()
}

fn terminal(status: &Value) -> bool {
    status["state"] == "successful" || status["state"] == "failed"
}

/// One update as seen from outside.
struct Outcome {
    /// Every status of the operation, in order.
    states: Vec<Value>,
    took: Duration,
}

impl Outcome {
    fn last(&self) -> &Value {
        self.states.last().expect("a status")
    }

    /// The distinct terminal states (state with its result or reason): exactly one is right,
    /// however often it was delivered.
    fn terminals(&self) -> Vec<Value> {
        let mut distinct: Vec<Value> = Vec::new();
        for status in self.states.iter().filter(|s| terminal(s)) {
            let essence = json!({
                "state": status["state"],
                "result": status["result"],
                "reason": status["reason"],
            });
            if !distinct.contains(&essence) {
                distinct.push(essence);
            }
        }
        distinct
    }

    fn steps(&self) -> String {
        self.states
            .iter()
            .map(|s| {
                s["step"]
                    .as_str()
                    .unwrap_or(s["state"].as_str().unwrap_or("?"))
            })
            .collect::<Vec<_>>()
            .join(" > ")
    }
}

impl Run {
    /// Turns the operations on in the guest (a drop-in, then a reload).
    pub(super) fn enable_operations(&mut self) {
        let guest = self.guest();
        guest.write_file(
            "/etc/fieldagent/conf.d/20-operations.yaml",
            format!(
                "operations:\n  software_update: {{ packages: [fieldagent], confirm_s: {CONFIRM_S} }}\n  restart: {{ device: true }}\n  log_upload: {{ max_lines: 500 }}\n"
            )
            .as_bytes(),
        );
        guest.ok("sync && fieldagent check -q && systemctl reload fieldagent");
        std::thread::sleep(Duration::from_secs(3));
    }

    fn request(&self, kind: &str, payload: Value) {
        super::broker::publish(
            &self.broker,
            &self.pki,
            &format!("devices/{ID}/operations/{kind}"),
            &payload.to_string(),
        );
    }

    /// The statuses of operation `id` until its terminal one (or `within`), plus any that come
    /// in the `settle` after it.
    fn follow(&self, id: &str, within: Duration, settle: Duration) -> Outcome {
        let started = Instant::now();
        let states = RefCell::new(Vec::new());
        let statuses = |message: &super::broker::Received| {
            if !message.topic.ends_with("/operations/status") {
                return false;
            }
            let Ok(status) = serde_json::from_str::<Value>(&message.payload) else {
                return false;
            };
            if status["id"] != id {
                return false;
            }
            let done = terminal(&status);
            states.borrow_mut().push(status);
            done
        };
        self.op_states.wait_for(within, &statuses);
        let took = started.elapsed();
        self.op_states.wait_for(settle, &statuses);
        Outcome {
            states: states.into_inner(),
            took,
        }
    }

    /// The statuses of operation `id` until one for which `wanted` holds (or its terminal one,
    /// or `within`).
    fn follow_until(&self, id: &str, within: Duration, wanted: impl Fn(&Value) -> bool) -> Outcome {
        let started = Instant::now();
        let states = RefCell::new(Vec::new());
        self.op_states.wait_for(within, |message| {
            let Ok(status) = serde_json::from_str::<Value>(&message.payload) else {
                return false;
            };
            if status["id"] != id || !message.topic.ends_with("/operations/status") {
                return false;
            }
            let done = terminal(&status) || wanted(&status);
            states.borrow_mut().push(status);
            done
        });
        Outcome {
            states: states.into_inner(),
            took: started.elapsed(),
        }
    }

    fn installed_version(&mut self) -> String {
        self.guest()
            .ok("dpkg-query -W -f '${Version}' fieldagent")
            .trim()
            .to_owned()
    }

    /// `dpkg --audit` (nothing when every package is installed cleanly) and the agent online
    /// with `version` as the broker sees it.
    fn clean_and_online(&mut self, version: &str) -> (String, bool) {
        let audit = self
            .guest()
            .ok("dpkg --audit 2>&1 || true")
            .trim()
            .to_owned();
        let upstream = version.split('-').next().unwrap_or(version).to_owned();
        let online = self
            .status
            .wait_for(Duration::from_secs(120), |m| {
                m.payload.contains("\"online\":true")
                    && m.payload.contains(&format!("\"version\":\"{upstream}\""))
            })
            .is_some();
        (audit, online)
    }

    /// One update to `deb` (published in the repository first): its outcome.
    fn update_to(&mut self, id: &str, deb: &Path) -> Outcome {
        self.repo.publish(deb);
        self.request(
            "software_update",
            json!({ "id": id, "package": "fieldagent", "version": deb_version(deb) }),
        );
        self.follow(
            id,
            Duration::from_secs(4 * CONFIRM_S + 300),
            Duration::from_secs(2),
        )
    }

    /// A good update, then rollbacks of a broken and (unless `short`) a hanging version, then
    /// `cuts` power cuts at random instants of updates.
    pub(super) fn updates(&mut self, cuts: usize, short: bool, report: &mut Report) {
        let debs = debs();
        let (first, second, broken, hanging) = (&debs[0], &debs[1], &debs[2], &debs[3]);
        let from = self.installed_version();
        assert_eq!(from, deb_version(first), "the guest runs the first version");

        let good = self.update_to("up-good", second);
        let now = self.installed_version();
        let (audit, online) = self.clean_and_online(&now);
        let last = good.last().clone();
        report.figure(
            "update: request to `successful` (download, install, restart, confirmed online)",
            format!("{:.1} s", good.took.as_secs_f64()),
        );
        report.verdict(
            "update",
            last["state"] == "successful"
                && last["result"]["to"] == deb_version(second).as_str()
                && now == deb_version(second)
                && good.terminals().len() == 1
                && audit.is_empty()
                && online,
            format!(
                "{} -> {now}; states: {}; dpkg --audit: {audit:?}; online with it: {online}",
                from,
                good.steps()
            ),
        );
        let update_took = good.took;

        // apt's cache emptied, as many images do: the way back is the package the helper kept
        // when it installed this version.
        self.guest().ok("apt-get clean");
        let mut rollbacks = vec![("broken (exits 1)", "up-broken", broken)];
        if !short {
            rollbacks.push(("hanging (never connects)", "up-hanging", hanging));
        }
        for (what, id, deb) in rollbacks {
            let outcome = self.update_to(id, deb);
            let now = self.installed_version();
            let (audit, online) = self.clean_and_online(&now);
            let last = outcome.last().clone();
            let reason = last["reason"].as_str().unwrap_or_default().to_owned();
            report.figure(
                &format!(
                    "rollback of a {what} version: request to `failed` (rolled back, online again)"
                ),
                format!("{:.1} s", outcome.took.as_secs_f64()),
            );
            report.verdict(
                &format!("rollback, {what}"),
                last["state"] == "failed"
                    && reason.starts_with("rolled back:")
                    && now == deb_version(second)
                    && outcome.terminals().len() == 1
                    && audit.is_empty()
                    && online,
                format!(
                    "back on {now}; reason: {reason}; states: {}; dpkg --audit: {audit:?}; online: {online}",
                    outcome.steps()
                ),
            );
        }

        if cuts > 0 {
            self.update_power_cuts(cuts, update_took, first, second, report);
        }
    }

    /// `cuts` updates, each cut short by a power cut at a random instant within the time a
    /// whole update took; after each boot the device must run one of the two versions, cleanly
    /// installed, online, with exactly one terminal state for the update that says which.
    fn update_power_cuts(
        &mut self,
        cuts: usize,
        update_took: Duration,
        first: &Path,
        second: &Path,
        report: &mut Report,
    ) {
        let window = update_took.as_millis().max(5_000) as u64;
        let mut rows = Vec::new();
        let mut good = 0;
        for cycle in 0..cuts {
            let from = self.installed_version();
            let target = if from == deb_version(first) {
                second
            } else {
                first
            };
            let id = format!("up-cut-{cycle}");
            self.repo.publish(target);
            self.request(
                "software_update",
                json!({ "id": id, "package": "fieldagent", "version": deb_version(target) }),
            );
            // Every third cycle is cut the moment the new version says it is being confirmed
            // (a window of a few seconds a random instant seldom hits); the others at a random
            // instant within one update's duration.
            let asked = Instant::now();
            let before = if cycle % 3 == 2 {
                self.follow_until(&id, Duration::from_millis(window * 2), |status| {
                    status["step"] == "confirming"
                })
            } else {
                let cut_at = Duration::from_millis(fastrand::u64(0..window));
                self.follow(&id, cut_at, Duration::ZERO)
            };
            let cut_at = asked.elapsed();
            self.vm.take().unwrap().cut();
            let booted = Instant::now();
            self.boot();
            let after = self.follow(
                &id,
                Duration::from_secs(4 * CONFIRM_S + 300),
                Duration::from_secs(3),
            );
            let mut states = before.states.clone();
            states.extend(after.states.iter().cloned());
            let outcome = Outcome {
                states,
                took: booted.elapsed(),
            };
            let now = self.installed_version();
            let (audit, online) = self.clean_and_online(&now);
            let terminals = outcome.terminals();
            let last = outcome.last().clone();
            let reason = last["reason"].as_str().unwrap_or_default();
            let consistent = match last["state"].as_str() {
                Some("successful") => now == deb_version(target),
                // Undone, cut short before anything changed, or refused before anything
                // changed (a download that failed): on the version it was on.
                Some("failed") => {
                    now == from
                        && (reason.starts_with("rolled back:")
                            || reason.starts_with("interrupted:")
                            || reason.contains("nothing was changed"))
                }
                _ => false,
            };
            let ok = terminals.len() == 1 && consistent && audit.is_empty() && online;
            if ok {
                good += 1;
            } else {
                // What the guest says of it, for the log of the run.
                let (_, said, _) = self.guest().sh(
                    "dpkg --audit; dpkg -l fieldagent | tail -1; cat /var/lib/fieldagent-helper/update.json; echo; ls -l /var/lib/fieldagent-helper/*/; journalctl -b --no-pager -u fieldagent-helper-recover -u fieldagent-helper | tail -40",
                    Duration::from_secs(60),
                );
                println!(
                    "cycle {} ({terminals:?}, consistent {consistent}, online {online}):\n{said}",
                    cycle + 1
                );
            }
            let said = match last["state"].as_str() {
                Some("failed")
                    if reason.contains("nothing was changed")
                        && !reason.starts_with("interrupted") =>
                {
                    format!(
                        "not changed ({})",
                        reason.split(" (").next().unwrap_or_default()
                    )
                }
                Some("failed") => reason.split(':').next().unwrap_or_default().to_owned(),
                Some(state) => state.to_owned(),
                None => "no state".to_owned(),
            };
            println!(
                "update power cut {}/{cuts}: {from} -> {} cut at {:.1} s ({}): {said}, on {now}{}",
                cycle + 1,
                deb_version(target),
                cut_at.as_secs_f64(),
                before.steps(),
                if ok { "" } else { " FAILED" }
            );
            rows.push(format!(
                "| {} | {from} -> {} | {:.1} s | {} | {said} | {now} | {} | {:.0} s | {} |",
                cycle + 1,
                deb_version(target),
                cut_at.as_secs_f64(),
                if before.states.is_empty() {
                    "(none yet)".to_owned()
                } else {
                    before.steps()
                },
                terminals.len(),
                outcome.took.as_secs_f64(),
                if audit.is_empty() && online {
                    "yes"
                } else {
                    "NO"
                }
            ));
        }
        report.table(
            "Updates cut by a power cut (qemu killed): every third cycle the moment the new version is being confirmed, the others at a random instant within one update's duration",
            "| cycle | update | cut at | states seen before the cut | outcome | installed after | terminal states | boot to terminal state | dpkg clean, online |\n|---|---|---|---|---|---|---|---|---|",
            rows,
        );
        report.verdict(
            "update power cuts",
            good == cuts,
            format!("{good} of {cuts} ended on one of the two versions, cleanly installed, online, with exactly one terminal state that says which"),
        );
    }

    /// Restart of the agent and of the device, proven by the new start time and boot id; a log
    /// upload in chunks.
    pub(super) fn operations(&mut self, report: &mut Report) {
        let started_before = self
            .guest()
            .ok("systemctl show -p ExecMainStartTimestampMonotonic --value fieldagent");
        self.request(
            "restart",
            json!({ "id": "restart-agent", "target": "agent" }),
        );
        let agent = self.follow(
            "restart-agent",
            Duration::from_secs(120),
            Duration::from_secs(1),
        );
        let started_after = self
            .guest()
            .ok("systemctl show -p ExecMainStartTimestampMonotonic --value fieldagent");
        let last = agent.last().clone();
        report.figure(
            "restart of the agent: request to `successful` (online again)",
            format!("{:.1} s", agent.took.as_secs_f64()),
        );
        report.verdict(
            "restart agent",
            last["state"] == "successful"
                && last["result"]["started_ts"].is_u64()
                && started_before != started_after,
            format!(
                "{}; systemd's start {} -> {}",
                last,
                started_before.trim(),
                started_after.trim()
            ),
        );

        let boot_before = self
            .guest()
            .ok("cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_owned();
        self.request(
            "restart",
            json!({ "id": "restart-device", "target": "device" }),
        );
        let device = self.follow(
            "restart-device",
            Duration::from_secs(300),
            Duration::from_secs(1),
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.guest().sync() {
            assert!(Instant::now() < deadline, "the guest did not come back");
        }
        let boot_after = self
            .guest()
            .ok("cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_owned();
        let last = device.last().clone();
        report.figure(
            "restart of the device: request to `successful` (rebooted, online again)",
            format!("{:.1} s", device.took.as_secs_f64()),
        );
        report.verdict(
            "restart device",
            last["state"] == "successful"
                && last["result"]["boot_id"] == boot_after.as_str()
                && boot_after != boot_before,
            format!("{last}; boot id {boot_before} -> {boot_after}"),
        );

        self.request("log_upload", json!({ "id": "logs-1", "lines": 200 }));
        let started = Instant::now();
        let chunks = RefCell::new(Vec::new());
        let upload = self
            .op_states
            .wait_for(Duration::from_secs(120), |message| {
                if message.topic == format!("devices/{ID}/operations/log/logs-1") {
                    chunks.borrow_mut().push(
                        serde_json::from_str::<Value>(&message.payload).unwrap_or(Value::Null),
                    );
                    return false;
                }
                message.topic.ends_with("/operations/status")
                    && message.payload.contains("\"logs-1\"")
                    && (message.payload.contains("\"successful\"")
                        || message.payload.contains("\"failed\""))
            });
        let chunks = chunks.into_inner();
        let status: Value = upload
            .map(|m| serde_json::from_str(&m.payload).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let lines: usize = chunks
            .iter()
            .map(|chunk| chunk["lines"].as_array().map_or(0, Vec::len))
            .sum();
        let restarted = chunks.iter().any(|chunk| {
            chunk["lines"].as_array().is_some_and(|lines| {
                lines.iter().any(|line| {
                    line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("Connected"))
                })
            })
        });
        report.figure(
            "log upload of 200 lines: request to `successful`",
            format!(
                "{:.1} s, {} chunk(s), {lines} lines",
                started.elapsed().as_secs_f64(),
                chunks.len()
            ),
        );
        report.verdict(
            "log upload",
            status["state"] == "successful"
                && status["result"]["lines"] == lines
                && lines > 0
                && chunks.last().is_some_and(|c| c["last"] == true)
                && restarted,
            format!("{status}; the agent's own lines, with its connects: {restarted}"),
        );
    }
}
