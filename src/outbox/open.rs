//! Opening the outbox: the file read once, what it holds recovered, damage set aside.

use std::path::Path;

use super::*;

impl Outbox {
    /// Opens (or creates) `dir/outbox.log` holding at most `bound` messages.
    pub fn open(dir: &Path, bound: usize) -> (Outbox, Recovery) {
        Outbox::open_seeing(dir, bound, &mut |_, _| {})
    }

    /// [`Outbox::open`], showing `seen` the kind and payload of every message the file holds,
    /// delivered or not, in the order they were queued (what the alert state catches up from).
    pub fn open_seeing(
        dir: &Path,
        bound: usize,
        seen: &mut dyn FnMut(Kind, &[u8]),
    ) -> (Outbox, Recovery) {
        let path = dir.join(FILE);
        let mut outbox = Outbox {
            path,
            file: None,
            writable: false,
            file_len: 0,
            live_bytes: 0,
            queues: Default::default(),
            inflight: Vec::new(),
            next_id: 1,
            bound: bound.max(1),
            topics: Vec::new(),
            scratch: Vec::new(),
            unsynced: false,
            failed_at: None,
        };
        let mut recovery = Recovery::default();
        let bytes = match std::fs::read(&outbox.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                recovery.unusable = Some(format!("cannot read {}: {err}", outbox.path.display()));
                outbox.failed_at = Some(std::time::Instant::now());
                return (outbox, recovery);
            }
        };
        let record::Decoded { records, damage } = record::decode_all(&bytes);
        // Live messages in id order, with where their payload lies in `bytes`.
        let mut live: Vec<(u64, Kind, u8, &str, usize, usize)> = Vec::new();
        let mut ended = std::collections::HashSet::new();
        for (at, record) in &records {
            match record {
                Record::Message {
                    id,
                    kind,
                    qos,
                    topic,
                    payload,
                } => {
                    seen(*kind, payload);
                    let start = at + record::payload_offset(topic);
                    live.push((*id, *kind, *qos, topic, start, payload.len()));
                    outbox.next_id = outbox.next_id.max(id + 1);
                }
                Record::Delivered(id) | Record::Dropped(id) => {
                    ended.insert(*id);
                }
            }
        }
        let dead = !ended.is_empty();
        live.retain(|m| !ended.contains(&m.0));
        // Ids rise through a file this agent wrote; anything else is rewritten in order.
        let ordered = live.windows(2).all(|w| w[0].0 < w[1].0);
        if let Some((at, err)) = &damage {
            let aside = outbox
                .path
                .with_extension(format!("log.damaged-{}", crate::model::now_ms()));
            let reason = format!("byte {at}: {err}");
            match std::fs::rename(&outbox.path, &aside) {
                Ok(()) => recovery.damaged = Some((reason, aside)),
                Err(err) => {
                    recovery.unusable = Some(format!(
                        "{} is damaged at {reason} and cannot be moved aside: {err}",
                        outbox.path.display()
                    ));
                    outbox.failed_at = Some(std::time::Instant::now());
                    return (outbox, recovery);
                }
            }
        }
        recovery.recovered = live.len();
        // The file is used as it is when it holds exactly the live messages, in order, within
        // the bound; otherwise it is written anew from what was read.
        let rewrite =
            damage.is_some() || dead || !ordered || live.len() > outbox.bound || bytes.is_empty();
        live.sort_by_key(|m| m.0);
        for (id, kind, qos, topic, start, len) in live {
            let topic = outbox.intern(topic);
            let body = if rewrite {
                Body::Memory(bytes[start..start + len].into())
            } else {
                Body::Disk {
                    offset: start as u64,
                    len: len as u32,
                }
            };
            outbox.queues[kind as usize].push_back(Entry {
                id,
                kind,
                qos,
                topic,
                body,
            });
        }
        // Lowered bound: the oldest go, telemetry first (nothing is written yet).
        while outbox.len() > outbox.bound {
            if let Some(dropped) = outbox.drop_one() {
                recovery.dropped.push(dropped);
            }
        }
        let result = if rewrite {
            outbox.rewrite()
        } else {
            outbox.adopt(bytes.len() as u64)
        };
        if let Err(err) = result {
            recovery.unusable = Some(format!("cannot write {}: {err}", outbox.path.display()));
            outbox.failed_at = Some(std::time::Instant::now());
        }
        (outbox, recovery)
    }
}
