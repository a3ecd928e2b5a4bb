//! GPIO at the backend seam with a simulated chip (no kernel we can boot here has gpio-sim:
//! Debian 12's 6.1 and bookworm-backports' 6.12 both build without CONFIG_GPIO_SIM).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sim::install;
use super::*;
use crate::actuators::Target;

fn input(chip: &str, line: LineRef) -> InputSpec {
    InputSpec {
        chip: chip.to_owned(),
        line,
        bias: Bias::AsIs,
        active_low: false,
        edges: false,
        debounce: DEFAULT_DEBOUNCE,
    }
}

#[test]
fn inputs_by_label_and_line_name_with_bias_and_active_low() {
    let (_guard, sim) = install(&["GPIO16", "GPIO17", "GPIO22"]);
    let mut door = input("gpio-sim.0-node0", LineRef::Name("GPIO17".to_owned()));
    door.bias = Bias::PullUp;
    door.active_low = true;
    let (found, line) = super::input(&door).unwrap();
    assert_eq!(found.offset, 1);
    // Open contact: the pull-up holds the line high, which active-low reads as 0.
    assert!(!line.value().unwrap());
    assert!(sim.level(1));
    // The contact closes to ground.
    sim.drive(1, Some(false));
    assert!(line.value().unwrap());
    // The same line asked for again is the same request, not a second one (which the kernel
    // would refuse as busy).
    let (_, again) = super::input(&door).unwrap();
    assert!(Arc::ptr_eq(&line, &again));
    // Other settings while it is held: refused, saying why.
    let mut other = door.clone();
    other.bias = Bias::PullDown;
    let err = super::input(&other).err().unwrap();
    assert!(
        err.contains("held by this agent with other settings"),
        "{err}"
    );
    drop((line, again));
    assert!(!sim.is_requested(1), "released when the last user lets go");

    let err = super::input(&input("pinctrl-bcm2711", LineRef::Offset(0)))
        .err()
        .unwrap();
    assert!(
        err.contains("no GPIO chip named or labelled \"pinctrl-bcm2711\"; found gpiochip0 \"gpio-sim.0-node0\""),
        "{err}"
    );
    let err = super::input(&input("gpiochip0", LineRef::Offset(9)))
        .err()
        .unwrap();
    assert!(err.contains("has lines 0..3, not 9"), "{err}");
    let err = super::input(&input("gpiochip0", LineRef::Name("GPIO4".into())))
        .err()
        .unwrap();
    assert!(err.contains("no line named \"GPIO4\""), "{err}");
}

/// A contact that bounces: one wake per settled change, none for a bounce that ends where it
/// began.
#[test]
fn edges_wake_once_per_settled_change() {
    let (_guard, sim) = install(&["DOOR"]);
    let mut door = input("gpiochip0", LineRef::Offset(0));
    door.edges = true;
    door.debounce = Duration::from_millis(30);
    let (_, line) = super::input(&door).unwrap();
    let wakes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&wakes);
    let watch = EdgeWatch::start(
        Arc::clone(&line),
        door.debounce,
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    // Bounces, then high for good.
    for level in [true, false, true, false, true] {
        sim.drive(0, Some(level));
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "one settled change");
    // A glitch that returns to high within the debounce time: no change, no wake.
    sim.drive(0, Some(false));
    sim.drive(0, Some(true));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(wakes.load(Ordering::SeqCst), 1, "a glitch is not a change");
    sim.drive(0, Some(false));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(wakes.load(Ordering::SeqCst), 2);
    // Dropping the watch stops its thread at once (no poll timeout to wait out).
    let started = std::time::Instant::now();
    drop(watch);
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// An output is requested without changing its level, driven from the first command on, and
/// read back; active-low inverts.
#[test]
fn outputs_keep_their_level_until_the_first_command() {
    let (_guard, sim) = install(&["RELAY", "LAMP"]);
    // Something outside left the relay line high before the agent started.
    sim.drive(0, Some(true));
    let relay = OutputSpec {
        chip: "gpiochip0".into(),
        line: LineRef::Name("RELAY".into()),
        active_low: false,
    };
    let lamp = OutputSpec {
        chip: "gpiochip0".into(),
        line: LineRef::Offset(1),
        active_low: true,
    };
    let spec = |target: Target, name: &str| crate::config::ActuatorSpec {
        key: "actuators[0]".into(),
        name: name.into(),
        target,
        values: vec!["0".into(), "1".into()],
    };
    let held = crate::actuators::hold(&[
        spec(Target::Gpio(relay.clone()), "relay"),
        spec(Target::Gpio(lamp.clone()), "lamp"),
    ]);
    assert_eq!(held.len(), 2);
    assert!(sim.is_requested(0) && sim.is_requested(1));
    assert!(sim.level(0), "holding the line did not change it");
    assert_eq!(
        crate::actuators::current(&Target::Gpio(relay.clone())).as_deref(),
        Some("1")
    );
    sim.drive(0, None);
    assert_eq!(
        crate::actuators::set(&Target::Gpio(relay.clone()), "0").unwrap(),
        Some("line reads 0".to_owned())
    );
    assert!(!sim.level(0));
    crate::actuators::set(&Target::Gpio(lamp.clone()), "1").unwrap();
    assert!(!sim.level(1), "active-low: 1 drives the line low");
    crate::actuators::set(&Target::Gpio(lamp), "0").unwrap();
    assert!(sim.level(1));
    let err = crate::actuators::set(&Target::Gpio(relay), "2").unwrap_err();
    assert!(err.contains("for a GPIO line"), "{err}");
    drop(held);
    assert!(!sim.is_requested(0), "released with the agent");
}

/// Two watches on one shared line (a sampler that replaced a stuck one has its own): dropping
/// either ends its own thread, and the other keeps waking on edges.
#[test]
fn two_watches_on_one_line_each_stop_alone() {
    let (_guard, sim) = install(&["DOOR"]);
    let mut door = input("gpiochip0", LineRef::Offset(0));
    door.edges = true;
    door.debounce = Duration::from_millis(1);
    let (_, line) = super::input(&door).unwrap();
    let wakes = Arc::new(AtomicUsize::new(0));
    let watch = |wakes: &Arc<AtomicUsize>| {
        let counted = Arc::clone(wakes);
        EdgeWatch::start(
            Arc::clone(&line),
            door.debounce,
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap()
    };
    let old = watch(&Arc::new(AtomicUsize::new(0)));
    let new = watch(&wakes);
    std::thread::sleep(Duration::from_millis(20));
    let started = std::time::Instant::now();
    drop(old);
    assert!(started.elapsed() < Duration::from_millis(500));
    sim.drive(0, Some(true));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        wakes.load(Ordering::SeqCst),
        1,
        "the remaining watch still wakes"
    );
    drop(new);
}

/// The kernel's backend, asked for a chip this machine does not have: a clear error naming the
/// chip (and, where there are chips, the ones there are), not a panic or a hang.
#[test]
fn the_kernel_backend_names_a_missing_chip() {
    let err = linux::Linux
        .find("no-such-chip", &LineRef::Offset(17))
        .unwrap_err();
    assert!(
        err.starts_with("no GPIO chip named or labelled \"no-such-chip\""),
        "{err}"
    );
}
