//! Nothing lost, under faults: the agent's outbox against a real mosquitto, with links cut by a
//! test proxy, brokers and agents killed with SIGKILL, and the store damaged between runs.
//!
//! Alerts come from rules on a file sensor the test writes: `n` rules `above: 1..=n` on one
//! value give `n` raises when it goes to 100 and `n` clears when it goes back to 0. Each event's
//! id ends in a counter that rises by one per event, so loss, duplicates and order can be read
//! off the ids that arrive.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::broker::{Broker, BrokerOptions, BrokerPki, Received, Subscriber};
use crate::daemon::{Agent, Setup};
use crate::proxy::{Mode, Proxy};
use crate::util::TestDir;

/// A setup whose agent reaches the broker through `proxy`, with `rules` alert rules on the
/// file sensor `level` (starting at 0), reconnecting every second.
fn setup(dir: &TestDir, id: &str, broker: &Broker, proxy: &Proxy, rules: usize) -> Setup {
    let level = dir.write("level", "0\n");
    let mut setup = Setup::new(id, broker);
    setup.urls = vec![proxy.url()];
    setup.sensors_extra = format!("  - {{ name: level, file: {} }}\n", level.display());
    let mut alerts = String::from("alerts:\n");
    for i in 1..=rules {
        alerts.push_str(&format!(
            "  - {{ name: r{i}, sensor: level, above: {i} }}\n"
        ));
    }
    setup.top_extra = alerts;
    setup.telemetry = "{ interval_s: 0.1 }".to_owned();
    setup.reconnect = "{ initial_s: 0.5, max_s: 1, jitter: 0 }".to_owned();
    setup
}

/// Writes the file sensor `level` the way a bridge would: a new file renamed over the old.
pub(crate) fn set_level(dir: &TestDir, value: u32) {
    dir.write("level.tmp", format!("{value}\n"));
    std::fs::rename(dir.path().join("level.tmp"), dir.path().join("level")).unwrap();
}

/// The counters of the rule alerts (`r…`) among `messages`, in arrival order.
fn counters(messages: &[Received]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/alerts"))
        .filter_map(|m| {
            let json: serde_json::Value = serde_json::from_str(&m.payload).ok()?;
            let alert = json["alert"].as_str()?;
            if !alert.starts_with('r') {
                return None;
            }
            json["id"].as_str()?.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// Arrival order with repeats removed (first arrival kept): redeliveries are allowed, loss and
/// reordering are not.
fn first_arrivals(counters: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    counters
        .iter()
        .copied()
        .filter(|c| seen.insert(*c))
        .collect()
}

/// How many "Alert. alert=r…" lines the agent has logged.
fn logged_alerts(agent: &Agent) -> usize {
    agent.log().matches("Alert. alert=r").count()
}

fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// With the agent offline (its connect refused), raises all `rules` alerts, then clears them
/// when `clear`: `rules` or `2 * rules` events, each seen in the agent's log.
fn make_alerts_offline(dir: &TestDir, agent: &Agent, rules: usize, clear: bool) {
    agent.expect_log("Cannot connect.", Duration::from_secs(10));
    set_level(dir, 100);
    assert!(
        wait_until(Duration::from_secs(10), || logged_alerts(agent) == rules),
        "{}",
        agent.log()
    );
    if clear {
        set_level(dir, 0);
        assert!(
            wait_until(Duration::from_secs(10), || logged_alerts(agent)
                == 2 * rules),
            "{}",
            agent.log()
        );
    }
}

/// Collects from `subscriber` until `want` rule alerts arrived or `within` passed.
fn receive(subscriber: &Subscriber, want: usize, within: Duration) -> Vec<Received> {
    let mut all = Vec::new();
    let deadline = Instant::now() + within;
    while first_arrivals(&counters(&all)).len() < want && Instant::now() < deadline {
        all.extend(subscriber.collect(Duration::from_millis(200)));
    }
    all
}

#[test]
fn alerts_made_before_the_broker_exists_arrive_when_it_does() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    // Nothing answers behind the proxy yet, as when the broker is not up.
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o1", &broker, &proxy, 2));
    make_alerts_offline(&dir, &agent, 2, true);

    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o1/alerts");
    proxy.set(Mode::Forward);
    let got = receive(&subscriber, 4, Duration::from_secs(15));
    let arrived = first_arrivals(&counters(&got));
    assert_eq!(arrived.len(), 4, "{got:?}\n{}", agent.log());
    assert!(arrived.windows(2).all(|w| w[1] == w[0] + 1), "{arrived:?}");
}

#[test]
fn three_broker_kills_mid_stream_lose_no_alert_and_keep_the_order() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let mut broker = Broker::start(&pki);
    let port = broker.port;
    let proxy = Proxy::start(port, Mode::Forward);
    let mut subscriber = Subscriber::start(&broker, &pki, "devices/node-o2/alerts");
    let agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o2", &broker, &proxy, 1));
    agent.expect_log("Connected.", Duration::from_secs(10));

    // The value flips every 150 ms on a thread: one raise or clear per flip, all through the test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = std::sync::Arc::clone(&stop);
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut high = false;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                high = !high;
                let tmp = path.join("level.flip");
                std::fs::write(&tmp, if high { "100\n" } else { "0\n" }).unwrap();
                std::fs::rename(&tmp, path.join("level")).unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut received = Vec::new();
    for kill in 1..=3 {
        // Mid-stream: connected, with alerts flowing for a while.
        assert!(
            wait_until(Duration::from_secs(15), || agent
                .log()
                .matches("Connected.")
                .count()
                == kill),
            "{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(700));
        // SIGKILL mid-stream; new connections wait until the new broker has its subscriber.
        proxy.set(Mode::Refuse);
        drop(broker);
        received.extend(subscriber.collect(Duration::from_millis(300)));
        drop(subscriber);
        std::thread::sleep(Duration::from_millis(500));
        broker = Broker::start_with(
            &pki,
            BrokerOptions {
                port: Some(port),
                ..BrokerOptions::default()
            },
        );
        subscriber = Subscriber::start(&broker, &pki, "devices/node-o2/alerts");
        proxy.set(Mode::Forward);
    }
    assert!(
        wait_until(Duration::from_secs(15), || agent
            .log()
            .matches("Connected.")
            .count()
            == 4),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    flipper.join().unwrap();
    // Every event the agent logged must arrive.
    std::thread::sleep(Duration::from_millis(300));
    let made = logged_alerts(&agent);
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_arrivals(&counters(&received)).len() < made && Instant::now() < deadline {
        received.extend(subscriber.collect(Duration::from_millis(200)));
    }
    let arrived = first_arrivals(&counters(&received));
    assert!(made >= 20, "only {made} alerts made:\n{}", agent.log());
    assert_eq!(
        arrived.len(),
        made,
        "lost some: {arrived:?}\n{}",
        agent.log()
    );
    assert!(
        arrived.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order: {arrived:?}"
    );
    assert_eq!(
        agent.log().matches("Connected.").count(),
        4,
        "{}",
        agent.log()
    );
}

#[test]
fn a_hundred_alerts_queued_offline_survive_kill_9_of_the_agent() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let config = setup(&dir, "node-o3", &broker, &proxy, 50);
    let agent = Agent::start_with(&dir, &pki, config);
    make_alerts_offline(&dir, &agent, 50, true);
    // The loop writes each to the outbox right after the sampler logs it.
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(Signal::SIGKILL);
    drop(agent);

    let agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o3", &broker, &proxy, 50));
    agent.expect_log(
        "messages from an earlier run will be delivered",
        Duration::from_secs(10),
    );
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o3/alerts");
    proxy.set(Mode::Forward);
    let got = receive(&subscriber, 100, Duration::from_secs(20));
    let arrived = first_arrivals(&counters(&got));
    assert_eq!(arrived.len(), 100, "{arrived:?}\n{}", agent.log());
    assert!(arrived.windows(2).all(|w| w[1] == w[0] + 1), "{arrived:?}");
    // No alert was raised twice: the restart knew their state.
    assert_eq!(logged_alerts(&agent), 0, "{}", agent.log());
}

#[test]
fn a_blackholed_link_is_noticed_within_one_and_a_half_keepalives() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Forward);
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o4/alerts");
    // Setup's keepalive is 2 s.
    let agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o4", &broker, &proxy, 1));
    agent.expect_log("Connected.", Duration::from_secs(10));
    set_level(&dir, 100);
    let got = receive(&subscriber, 1, Duration::from_secs(10));
    assert_eq!(first_arrivals(&counters(&got)).len(), 1, "{}", agent.log());

    let cut = Instant::now();
    proxy.set(Mode::Blackhole);
    set_level(&dir, 0);
    agent.expect_log("Connection lost.", Duration::from_secs(10));
    let noticed = cut.elapsed();
    assert!(
        noticed <= Duration::from_millis(3000),
        "noticed after {noticed:?}, more than 1.5 x keepalive_s (3 s)"
    );
    proxy.set(Mode::Forward);
    let got = receive(&subscriber, 1, Duration::from_secs(15));
    let arrived = first_arrivals(&counters(&got));
    assert_eq!(
        arrived.len(),
        1,
        "the clear made while cut off: {got:?}\n{}",
        agent.log()
    );
}

#[test]
fn a_damaged_store_is_moved_aside_and_the_agent_goes_on() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let mut agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o5", &broker, &proxy, 5));
    make_alerts_offline(&dir, &agent, 5, false);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    drop(agent);

    // Garble a byte in the middle of the store.
    let state = dir.path().join("state-node-o5");
    let store = state.join("outbox.log");
    let mut bytes = std::fs::read(&store).unwrap();
    assert!(bytes.len() > 200, "{} bytes", bytes.len());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&store, &bytes).unwrap();

    let agent = Agent::start_with(&dir, &pki, setup(&dir, "node-o5", &broker, &proxy, 5));
    agent.expect_log("Outbox damaged", Duration::from_secs(10));
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.log.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    // It keeps working: what was before the damage and a new alert arrive.
    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o5/alerts");
    proxy.set(Mode::Forward);
    agent.expect_log("Connected.", Duration::from_secs(10));
    set_level(&dir, 0);
    let got = receive(&subscriber, 5, Duration::from_secs(10));
    let arrived = first_arrivals(&counters(&got));
    assert!(arrived.len() >= 5, "{arrived:?}\n{}", agent.log());
    // The newest five (the clears) are all there.
    let clears = got
        .iter()
        .filter(|m| m.payload.contains(r#""state":"cleared""#))
        .count();
    assert!(clears >= 5, "{got:?}");
}

#[test]
fn the_bound_keeps_exactly_max_queued_messages_and_counts_the_rest() {
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let mut config = setup(&dir, "node-o6", &broker, &proxy, 30);
    config.broker_extra = "  max_queued_messages: 20\n".to_owned();
    let agent = Agent::start_with(&dir, &pki, config);
    // 3 x 20 rule alerts (plus the sensor_fault of the missing chip), offline.
    make_alerts_offline(&dir, &agent, 30, true);
    std::thread::sleep(Duration::from_millis(500));

    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o6/#");
    proxy.set(Mode::Forward);
    let mut got = receive(&subscriber, 20, Duration::from_secs(15));
    got.extend(subscriber.collect(Duration::from_secs(2)));
    let arrived = first_arrivals(&counters(&got));
    // The newest 20 of the 60: the clears r11..r30.
    assert_eq!(arrived.len(), 20, "{arrived:?}\n{}", agent.log());
    assert!(arrived.windows(2).all(|w| w[1] == w[0] + 1), "{arrived:?}");
    // Every drop was said: 41 alerts (40 rules and the sensor fault) in the log and the health.
    assert_eq!(
        agent.log().matches("Outbox full").count(),
        41,
        "{}",
        agent.log()
    );
    let health = got
        .iter()
        .find(|m| m.topic.ends_with("/health"))
        .map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).unwrap())
        .expect("a health message on connect");
    assert!(
        health["messages"]["dropped"].as_u64().unwrap() >= 41,
        "{health}"
    );
}

/// A state_dir that fills up: the agent says so once, keeps the messages in memory, and
/// delivers them; it does not die.
#[test]
fn a_full_disk_is_reported_and_the_agent_goes_on_in_memory() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a small tmpfs as state_dir needs root");
        return;
    }
    let dir = TestDir::new();
    let pki = BrokerPki::new(&dir);
    let broker = Broker::start(&pki);
    let proxy = Proxy::start(broker.port, Mode::Refuse);
    let mut config = setup(&dir, "node-o7", &broker, &proxy, 40);
    // Room for the alert state and a few dozen outbox records, not for 80 alerts.
    config.state_tmpfs_kib = Some(32);
    let agent = Agent::start_with(&dir, &pki, config);
    make_alerts_offline(&dir, &agent, 40, true);
    agent.expect_log("Outbox: cannot write to state_dir", Duration::from_secs(5));
    let said = agent
        .log()
        .lines()
        .filter(|l| l.contains("Outbox") && l.contains("state_dir"))
        .count();
    assert_eq!(said, 1, "said once:\n{}", agent.log());

    let subscriber = Subscriber::start(&broker, &pki, "devices/node-o7/alerts");
    proxy.set(Mode::Forward);
    let got = receive(&subscriber, 80, Duration::from_secs(20));
    let arrived = first_arrivals(&counters(&got));
    assert_eq!(arrived.len(), 80, "{arrived:?}\n{}", agent.log());
    assert!(arrived.windows(2).all(|w| w[1] == w[0] + 1), "{arrived:?}");
}
