//! The durable outbox: every QoS >= 1 message (alerts, command responses, telemetry at QoS 1 or
//! 2, telemetry buffered while offline) is appended to `state_dir/outbox.log` and fsynced before
//! it counts as published; delivery (PUBACK/PUBCOMP) appends a small "delivered" record, without
//! fsync (losing one only means a redelivery, with the same payload and so the same `id`).
//! ARCHITECTURE.md says why this and not Paho's own persistence.
//!
//! In memory only an index is kept (id, kind, QoS, topic, where the payload lies in the file):
//! about 50 bytes per queued message, so 10 000 queued cost about half a megabyte, not the
//! payloads. The file is compacted (live messages rewritten, then renamed over) when the dead
//! records outweigh the live ones. A file that is damaged is moved aside, with what could be read
//! from it kept; a state_dir that cannot be written turns the outbox into a memory-only one,
//! reported once, and the agent goes on.

mod disk;
mod open;
pub mod record;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use record::Kind;
use record::Record;

/// The file's name in `state_dir`.
pub const FILE: &str = "outbox.log";
/// The largest payload a record always holds, whatever its topic (up to 64 KiB) and header.
pub const MAX_PAYLOAD: u32 = record::MAX_BODY - (1 << 16) - 64;
/// Below this many bytes of dead records the file is not compacted.
const COMPACT_MIN_DEAD: u64 = 64 * 1024;
/// After a failed write the disk is tried again at the next push this long after the failure
/// (and by the store's timer): a disk that was full for a moment takes messages again.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// A message taken for sending (`take_next`); `Outbox::delivered(id)` ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: u64,
    pub kind: Kind,
    pub qos: u8,
    pub topic: Arc<str>,
    pub payload: Vec<u8>,
}

/// What `push` did: the new message's id, and what the bound pushed out to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub id: u64,
    pub dropped: Vec<Dropped>,
    /// The message was larger than a record may be ([`record::MAX_BODY`]): it was not stored
    /// (nor queued), and the outbox logged it. A record the outbox could not read back would
    /// otherwise have ended the readable part of the file, and every message behind it.
    pub refused: bool,
}

/// A message the bound pushed out: counted and logged by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub id: u64,
    pub kind: Kind,
}

#[derive(Debug)]
enum Body {
    /// Where the payload lies in the file.
    Disk { offset: u64, len: u32 },
    /// Kept in memory: the file could not be written.
    Memory(Box<[u8]>),
}

#[derive(Debug)]
struct Entry {
    id: u64,
    kind: Kind,
    qos: u8,
    topic: Arc<str>,
    body: Body,
}

impl Entry {
    /// Bytes of its record in the file (0 for one in memory).
    fn disk_bytes(&self) -> u64 {
        match self.body {
            Body::Disk { len, .. } => record::payload_offset(&self.topic) as u64 + len as u64,
            Body::Memory(_) => 0,
        }
    }
}

/// What opening found, for the log line the caller writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Messages still to be delivered from an earlier run.
    pub recovered: usize,
    /// The file was damaged: the reason, and where it was moved.
    pub damaged: Option<(String, PathBuf)>,
    /// The file cannot be used at all: the outbox lives in memory only.
    pub unusable: Option<String>,
    /// Messages over a lowered bound, dropped at once.
    pub dropped: Vec<Dropped>,
}

pub struct Outbox {
    path: PathBuf,
    /// Open for reading and appending; `None` when it could not even be opened.
    file: Option<File>,
    /// False once a write failed: new messages stay in memory.
    writable: bool,
    /// The file's length as written by us.
    file_len: u64,
    /// Bytes of records for messages still live.
    live_bytes: u64,
    /// One queue per kind, each in id order.
    queues: [VecDeque<Entry>; 3],
    /// Taken for sending, not yet delivered.
    inflight: Vec<Entry>,
    next_id: u64,
    bound: usize,
    /// Interned topics: a handful of distinct ones for thousands of messages.
    topics: Vec<Arc<str>>,
    scratch: Vec<u8>,
    /// Records were written since the last `fdatasync` (`push_deferred`).
    unsynced: bool,
    /// When the disk last refused a write, while memory-only: the next retry is `RETRY` later.
    failed_at: Option<std::time::Instant>,
}

impl Outbox {
    /// Queued and in flight.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum::<usize>() + self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queued (not in flight) of one kind.
    pub fn queued(&self, kind: Kind) -> usize {
        self.queues[kind as usize].len()
    }

    /// Queued and in flight of one kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.queues[kind as usize].len() + self.inflight.iter().filter(|e| e.kind == kind).count()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether messages reach the disk (false after a failed write: memory only).
    pub fn durable(&self) -> bool {
        self.writable
    }

    /// The file's size, for the figures.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    pub fn set_bound(&mut self, bound: usize) {
        self.bound = bound.max(1);
    }

    /// Appends a message (fsynced before this returns, when the disk takes it). When the outbox
    /// is full the oldest queued message goes first: telemetry, then responses, then alerts;
    /// `limit` caps the queued messages of this kind (the telemetry buffer). What went is returned.
    pub fn push(
        &mut self,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        limit: Option<usize>,
    ) -> Pushed {
        self.push_with(kind, qos, topic, payload, limit, true)
    }

    /// As [`Outbox::push`], without the `fdatasync`: the caller calls [`Outbox::sync`] once for
    /// a group of messages (group commit) before any of them counts as stored.
    pub fn push_deferred(
        &mut self,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        limit: Option<usize>,
    ) -> Pushed {
        self.push_with(kind, qos, topic, payload, limit, false)
    }

    /// Makes every record written so far durable (one `fdatasync`). A failure turns the outbox
    /// memory-only, as a failed write does.
    pub fn sync(&mut self) {
        if !std::mem::take(&mut self.unsynced) || !self.writable {
            return;
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        if let Err(err) = file.sync_data() {
            self.fail(&err);
        }
    }

    /// While memory-only: tries the disk again when `RETRY` has passed since the last failure,
    /// writing every queued message to a new file. True when the outbox is durable afterwards.
    pub fn retry_disk(&mut self) -> bool {
        if self.writable {
            return true;
        }
        if self.failed_at.is_some_and(|at| at.elapsed() < RETRY) {
            return false;
        }
        match self.rewrite() {
            Ok(()) => {
                self.failed_at = None;
                tracing::info!(path = %self.path.display(), queued = self.len(), "Outbox: state_dir takes writes again; queued messages are on disk.");
                true
            }
            Err(err) => {
                tracing::debug!(path = %self.path.display(), error = %err, "Outbox: state_dir still refuses writes.");
                self.failed_at = Some(std::time::Instant::now());
                false
            }
        }
    }

    fn push_with(
        &mut self,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        limit: Option<usize>,
        sync: bool,
    ) -> Pushed {
        let id = self.next_id;
        self.next_id += 1;
        let size = record::MESSAGE_FIXED + topic.len() + payload.len();
        if size > record::MAX_BODY as usize || topic.len() > usize::from(u16::MAX) {
            tracing::error!(
                kind = kind.name(),
                topic = %topic,
                bytes = size,
                max_bytes = record::MAX_BODY,
                "Outbox: a message larger than a record may be is refused; it is dropped."
            );
            return Pushed {
                id,
                dropped: Vec::new(),
                refused: true,
            };
        }
        self.retry_disk();
        let mut dropped = Vec::new();
        if let Some(limit) = limit {
            while self.queued(kind) >= limit.max(1) {
                match self.drop_front(kind) {
                    Some(d) => dropped.push(d),
                    None => break,
                }
            }
        }
        while self.len() >= self.bound {
            match self.drop_one() {
                Some(d) => dropped.push(d),
                None => break,
            }
        }
        let topic = self.intern(topic);
        let body = self.append_message(id, kind, qos, &topic, payload, sync);
        let entry = Entry {
            id,
            kind,
            qos,
            topic,
            body,
        };
        self.live_bytes += entry.disk_bytes();
        self.queues[kind as usize].push_back(entry);
        Pushed {
            id,
            dropped,
            refused: false,
        }
    }

    /// Takes the next message to send: alerts first, then responses, then telemetry, each in
    /// order. A payload that cannot be read back is lost: it is returned as dropped.
    pub fn take_next(&mut self) -> Option<Result<Outgoing, Dropped>> {
        let kind = Kind::ALL
            .into_iter()
            .find(|k| !self.queues[*k as usize].is_empty())?;
        let entry = self.queues[kind as usize].pop_front()?;
        match read_body(self.file.as_ref(), &entry.body) {
            Ok(payload) => {
                let outgoing = Outgoing {
                    id: entry.id,
                    kind,
                    qos: entry.qos,
                    topic: Arc::clone(&entry.topic),
                    payload,
                };
                self.inflight.push(entry);
                Some(Ok(outgoing))
            }
            Err(err) => {
                tracing::error!(path = %self.path.display(), id = entry.id, error = %err, "Outbox: cannot read a message back; it is lost.");
                let dropped = Dropped { id: entry.id, kind };
                self.finish(entry, Record::Dropped(dropped.id));
                Some(Err(dropped))
            }
        }
    }

    /// The broker has it (or, for QoS 0, it was sent): the message is done. Unknown ids (a
    /// message delivered twice) are ignored.
    pub fn delivered(&mut self, id: u64) {
        let entry = match self.inflight.iter().position(|e| e.id == id) {
            Some(at) => self.inflight.swap_remove(at),
            // Requeued after a reconnect and then confirmed by the earlier attempt.
            None => match self.take_queued(id) {
                Some(entry) => entry,
                None => return,
            },
        };
        self.finish(entry, Record::Delivered(id));
    }

    /// Ends a message in flight as dropped (the broker refused it for good).
    pub fn drop_inflight(&mut self, id: u64) {
        if let Some(at) = self.inflight.iter().position(|e| e.id == id) {
            let entry = self.inflight.swap_remove(at);
            self.finish(entry, Record::Dropped(id));
        }
    }

    /// Puts everything in flight back at the front of its queue, in order: after a reconnect,
    /// nothing sent on the old connection is trusted to arrive.
    pub fn requeue_inflight(&mut self) {
        for entry in std::mem::take(&mut self.inflight) {
            self.put_back(entry);
        }
    }

    /// Puts one message in flight back at the front of its queue (Paho refused it, or its
    /// answer never came).
    pub fn requeue(&mut self, id: u64) {
        if let Some(at) = self.inflight.iter().position(|e| e.id == id) {
            let entry = self.inflight.swap_remove(at);
            self.put_back(entry);
        }
    }

    /// Into its queue at its place by id.
    fn put_back(&mut self, entry: Entry) {
        let queue = &mut self.queues[entry.kind as usize];
        let at = queue.partition_point(|e| e.id < entry.id);
        queue.insert(at, entry);
    }

    fn take_queued(&mut self, id: u64) -> Option<Entry> {
        for queue in &mut self.queues {
            let at = queue.partition_point(|e| e.id < id);
            if queue.get(at).is_some_and(|e| e.id == id) {
                return queue.remove(at);
            }
        }
        None
    }

    /// The oldest queued message of the lowest-priority kind that has one.
    fn drop_one(&mut self) -> Option<Dropped> {
        let kind = Kind::ALL
            .into_iter()
            .rev()
            .find(|k| !self.queues[*k as usize].is_empty())?;
        self.drop_front(kind)
    }

    fn drop_front(&mut self, kind: Kind) -> Option<Dropped> {
        let entry = self.queues[kind as usize].pop_front()?;
        let dropped = Dropped { id: entry.id, kind };
        self.finish(entry, Record::Dropped(dropped.id));
        Some(dropped)
    }

    /// Records the end of a message and compacts when dead records outweigh live ones.
    fn finish(&mut self, entry: Entry, record: Record) {
        self.live_bytes -= entry.disk_bytes();
        if matches!(entry.body, Body::Disk { .. }) {
            self.write(&record, false);
        }
        let dead = self.file_len.saturating_sub(self.live_bytes);
        if self.writable && dead >= COMPACT_MIN_DEAD && dead > self.live_bytes {
            if let Err(err) = self.rewrite() {
                self.fail(&err);
            }
        }
    }

    fn intern(&mut self, topic: &str) -> Arc<str> {
        if let Some(known) = self.topics.iter().find(|t| &***t == topic) {
            return Arc::clone(known);
        }
        let topic: Arc<str> = Arc::from(topic);
        self.topics.push(Arc::clone(&topic));
        topic
    }

    /// Appends a message record and fsyncs it; where its payload lies, or the payload itself
    /// when the disk did not take it.
    fn append_message(
        &mut self,
        id: u64,
        kind: Kind,
        qos: u8,
        topic: &str,
        payload: &[u8],
        sync: bool,
    ) -> Body {
        let record = Record::Message {
            id,
            kind,
            qos,
            topic,
            payload,
        };
        let written = self.write(&record, sync);
        if written.is_some() && !sync {
            self.unsynced = true;
        }
        match written {
            Some(start) => Body::Disk {
                offset: start + record::payload_offset(topic) as u64,
                len: payload.len() as u32,
            },
            None => Body::Memory(payload.into()),
        }
    }

    /// Appends one record with one write; where it starts, or `None` when it was not written.
    fn write(&mut self, record: &Record, sync: bool) -> Option<u64> {
        if !self.writable {
            return None;
        }
        let file = self.file.as_mut()?;
        self.scratch.clear();
        record::encode(record, &mut self.scratch);
        let start = self.file_len;
        let result =
            file.write_all(&self.scratch)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.file_len += self.scratch.len() as u64;
                Some(start)
            }
            Err(err) => {
                // A partial record at the end is cut off again, so later appends stay readable.
                let _ = file.set_len(start);
                self.fail(&err);
                None
            }
        }
    }

    /// The disk refused a write: new messages stay in memory from now on, said once.
    fn fail(&mut self, err: &std::io::Error) {
        self.failed_at = Some(std::time::Instant::now());
        if self.writable {
            self.writable = false;
            tracing::error!(
                path = %self.path.display(),
                error = %err,
                retry_s = RETRY.as_secs(),
                "Outbox: cannot write to state_dir; queued messages are kept in memory only (lost on restart) until the disk takes writes again."
            );
        }
    }
}

use disk::read_body;

#[cfg(test)]
mod tests;

/// What `fieldagent status` reads from the outbox file without opening it for writing (the
/// agent may be appending to it): the live messages per kind and the oldest one's `ts`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// Alerts, responses, telemetry.
    pub per_kind: [usize; 3],
    /// The smallest `ts` (Unix ms) among the live messages' payloads: a JSON `ts`, or a
    /// Sparkplug payload's timestamp.
    pub oldest_ts: Option<u64>,
    /// Where decoding stopped early (a record being written, or damage).
    pub damage: Option<String>,
}

/// Reads `dir/outbox.log` as it is; a missing file is an empty outbox.
pub fn inspect(dir: &Path) -> std::io::Result<OnDisk> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(OnDisk::default()),
        Err(err) => return Err(err),
    };
    let record::Decoded { records, damage } = record::decode_all(&bytes);
    let mut ended = std::collections::HashSet::new();
    for (_, record) in &records {
        if let Record::Delivered(id) | Record::Dropped(id) = record {
            ended.insert(*id);
        }
    }
    let mut on_disk = OnDisk {
        damage: damage.map(|(at, err)| format!("byte {at}: {err}")),
        ..OnDisk::default()
    };
    for (_, record) in &records {
        if let Record::Message {
            id, kind, payload, ..
        } = record
        {
            if ended.contains(id) {
                continue;
            }
            on_disk.per_kind[*kind as usize] += 1;
            if let Some(ts) = payload_ts(payload) {
                on_disk.oldest_ts = Some(on_disk.oldest_ts.map_or(ts, |oldest| oldest.min(ts)));
            }
        }
    }
    Ok(on_disk)
}

/// The time a payload was made: the `ts` of a JSON object, or field 1 (timestamp) of a
/// Sparkplug B payload, which prost writes first.
fn payload_ts(payload: &[u8]) -> Option<u64> {
    if payload.first() == Some(&b'{') {
        #[derive(serde::Deserialize)]
        struct Stamped {
            ts: u64,
        }
        return serde_json::from_slice::<Stamped>(payload)
            .ok()
            .map(|s| s.ts);
    }
    let rest = payload.strip_prefix(&[0x08])?;
    let mut value = 0u64;
    for (i, byte) in rest.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
