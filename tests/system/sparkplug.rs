//! Scenario `sparkplug`: store and forward in the guest, through a primary host outage with power
//! cuts during it. The agent runs as a Sparkplug edge node waiting for the host `scada-1`; a
//! counter sensor changes every half second (its value is the guest clock's half-seconds since
//! a fixed instant, so it goes on rising across reboots with nothing kept in between). The host
//! goes offline, the guest loses power a few times, then the host comes back: every value the
//! agent sampled between the cuts arrives once, in order, as historical NDATA after the NBIRTH.
//! The only values that may be missing are the ones of the boots themselves (no agent ran) and
//! the last fraction of a second before each cut; so the values received may have at most one gap
//! per cut, none inside the stretch between two cuts, and the last value before each gap is at
//! most 3 s older than the cut (one pass a second, the guest's clock set from the RTC).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::broker::Subscriber;
use super::{Report, Run, ROOT};

const DROP_IN: &str = "/etc/fieldagent/conf.d/30-sparkplug.yaml";
const STATE: &str = "spBv1.0/STATE/scada-1";

impl Run {
    pub(super) fn sparkplug_outage(&mut self, cuts: usize, report: &mut Report) {
        if self.vm.is_none() {
            self.boot();
        }
        let host = Subscriber::start_hex(&self.broker, &self.pki, "spBv1.0/vm/#");
        self.host_state(true, 1000);
        // Half-seconds since this run's start, from the guest's clock (set from the host's RTC
        // at every boot).
        let t0 = now_ms() / 1000;
        let counter = format!(
            "nohup sh -c 'while :; do echo $(( ($(date +%s%N) / 1000000 - {t0}000) / 500 )) > /run/c && mv /run/c /run/counter; sleep 0.1; done' >/dev/null 2>&1 &"
        );
        let guest = self.guest();
        guest.write_file(
            DROP_IN,
            b"sparkplug:\n  group_id: vm\n  primary_host_id: scada-1\nsensors:\n  - { name: counter, file: /run/counter }\n",
        );
        guest.ok(&counter);
        guest.ok("sync && fieldagent check -q && systemctl restart fieldagent");
        let birth = host.wait_for(Duration::from_secs(60), |m| m.topic.contains("/NBIRTH/"));
        report.verdict(
            "sparkplug: birth with the host online",
            birth.is_some(),
            "NBIRTH within 60 s of the restart in Sparkplug mode",
        );
        if birth.is_none() {
            return self.plain_again();
        }
        // The outage: the host goes offline; the node publishes NDEATH and keeps what it would
        // have sent.
        self.host_state(false, 2000);
        let death = host.wait_for(Duration::from_secs(30), |m| m.topic.contains("/NDEATH/"));
        report.verdict(
            "sparkplug: NDEATH when the host goes offline",
            death.is_some(),
            "",
        );
        let outage = Instant::now();
        // The counter's value at each cut, by the host's clock (the guest's is set from it).
        let mut at_cuts = Vec::new();
        for cut in 0..cuts {
            std::thread::sleep(Duration::from_millis(fastrand::u64(5_000..10_000)));
            at_cuts.push(((now_ms() - t0 * 1000) / 500) as i64);
            self.vm.take().unwrap().cut();
            println!(
                "sparkplug: power cut {}/{cuts} during the host outage",
                cut + 1
            );
            self.boot();
            self.guest().ok(&counter);
        }
        std::thread::sleep(Duration::from_secs(5));
        let outage_s = outage.elapsed().as_secs_f64();
        // Online again: NBIRTH, then the history, oldest first.
        self.host_state(true, 3000);
        let messages = host.collect(Duration::from_secs(8));
        let decoded = decode(&messages);
        let born = decoded
            .iter()
            .position(|(topic, _)| topic.contains("/NBIRTH/"));
        let alias = born.and_then(|at| {
            decoded[at].1["metrics"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "Sensors/counter")
                .map(|m| m["alias"].clone())
        });
        let mut history: Vec<i64> = Vec::new();
        let mut before_birth = 0;
        for (index, (topic, payload)) in decoded.iter().enumerate() {
            if !topic.contains("/NDATA/") {
                continue;
            }
            for metric in payload["metrics"].as_array().into_iter().flatten() {
                if metric["isHistorical"] != true {
                    continue;
                }
                if born.is_none_or(|at| index < at) {
                    before_birth += 1;
                }
                if Some(&metric["alias"]) == alias.as_ref() {
                    if let Some(value) = metric["value"].as_f64() {
                        history.push(value as i64);
                    }
                }
            }
        }
        let in_order = history.windows(2).all(|w| w[0] < w[1]);
        let gaps = history.windows(2).filter(|w| w[1] > w[0] + 1).count();
        // What was sampled just before each cut survived it: a value within 3 s before the cut
        // (a pass a second, the guest clock set from the RTC to the second) is there.
        let before_cuts: Vec<i64> = at_cuts
            .iter()
            .map(|cut| {
                history
                    .iter()
                    .filter(|v| **v <= cut + 2)
                    .max()
                    .map_or(-1, |last| cut - last)
            })
            .collect();
        let cuts_kept = before_cuts.iter().all(|behind| (0..=6).contains(behind));
        report.figure(
            "sparkplug: host outage / power cuts during it",
            format!("{outage_s:.0} s / {cuts}"),
        );
        report.figure(
            "sparkplug: the last value kept before each cut, half-seconds before it",
            format!("{before_cuts:?}"),
        );
        report.figure(
            "sparkplug: counter values received as history / first / last / gaps",
            format!(
                "{} / {} / {} / {gaps}",
                history.len(),
                history.first().copied().unwrap_or(-1),
                history.last().copied().unwrap_or(-1)
            ),
        );
        report.verdict(
            "sparkplug: store and forward through power cuts",
            born.is_some()
                && before_birth == 0
                && !history.is_empty()
                && in_order
                && gaps <= cuts
                && cuts_kept,
            format!(
                "history after the NBIRTH ({before_birth} historical metrics before it), each value once in order ({in_order}), at most one gap per power cut ({gaps} for {cuts}), what was sampled up to 3 s before each cut kept ({cuts_kept})"
            ),
        );
        self.plain_again();
    }

    /// The retained STATE of the primary host `scada-1`.
    fn host_state(&self, online: bool, timestamp: u64) {
        let payload = json!({ "online": online, "timestamp": timestamp }).to_string();
        let status = self
            .pki
            .client("mosquitto_pub", &self.broker, "operator")
            .args(["-t", STATE, "-q", "1", "-r", "-m", &payload])
            .status()
            .expect("mosquitto_pub runs");
        assert!(status.success(), "the host's STATE");
    }

    /// Back to plain mode for the scenarios after this one; the retained STATE cleared.
    fn plain_again(&mut self) {
        let status = self
            .pki
            .client("mosquitto_pub", &self.broker, "operator")
            .args(["-t", STATE, "-q", "1", "-r", "-n"])
            .status()
            .expect("mosquitto_pub runs");
        assert!(status.success());
        self.guest().ok(&format!(
            "rm -f {DROP_IN} && sync && systemctl restart fieldagent"
        ));
        let _ = self.online(Duration::from_secs(60));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Each message (hex payload) as Eclipse Tahu's codec decodes it: (topic, payload).
fn decode(messages: &[super::broker::Received]) -> Vec<(String, Value)> {
    let dir = std::path::Path::new(ROOT).join("tests/sparkplug");
    let mut child = Command::new("node")
        .arg(dir.join("tahu.js"))
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/test installs it and Tahu's codec)");
    let input: String = messages
        .iter()
        .map(|m| format!("{} {}\n", m.topic, m.payload))
        .collect();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|value| {
            (
                value["topic"].as_str().unwrap_or_default().to_owned(),
                value["payload"].clone(),
            )
        })
        .collect()
}
