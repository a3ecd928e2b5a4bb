//! Any bytes as a `file:` sensor's file (whole, by key, by column) or a 1-Wire device's
//! `w1_slave` or `temperature`: a value or an error, never a panic, never a value out of range.
#![no_main]

use fieldagent::config::FileField;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, bytes) = match data.split_first() {
        Some((&selector, rest)) => (selector, rest),
        None => (0, data),
    };
    let field = match selector % 3 {
        0 => FileField::Whole,
        1 => FileField::Key("level".to_owned()),
        _ => FileField::Column(usize::from(selector / 3 % 5)),
    };
    if let Ok(value) = fieldagent::sensors::file::parse(bytes, &field) {
        assert!(value.is_finite());
    }
    for parsed in [
        fieldagent::sensors::w1::parse_w1_slave(bytes),
        fieldagent::sensors::w1::parse_temperature(bytes),
    ] {
        if let Ok(value) = parsed {
            assert!((-55.0..=125.0).contains(&value), "{value}");
        }
    }
});
