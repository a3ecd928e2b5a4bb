//! Any bytes as the outbox file: the decoder finds records or damage; opening a store made of
//! them recovers what it can, delivers it, and reopens cleanly. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use fieldagent::outbox::{record, Outbox};

fuzz_target!(|data: &[u8]| {
    let decoded = record::decode_all(data);
    for (_, r) in &decoded.records {
        let mut again = Vec::new();
        record::encode(r, &mut again);
        let (decoded, used) = record::decode(&again).expect("a record re-encodes");
        assert_eq!(&decoded, r);
        assert_eq!(used, again.len());
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::write(dir.path().join(fieldagent::outbox::FILE), data).unwrap();
    let (mut outbox, recovery) = Outbox::open(dir.path(), 64);
    assert!(outbox.len() <= 64);
    assert!(recovery.recovered >= outbox.len());
    while let Some(next) = outbox.take_next() {
        if let Ok(message) = next {
            outbox.delivered(message.id);
        }
    }
    drop(outbox);
    let (outbox, recovery) = Outbox::open(dir.path(), 64);
    assert_eq!(recovery.damaged, None);
    assert!(outbox.is_empty());
});
