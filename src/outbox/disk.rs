//! The outbox file itself: adopting it as it is, rewriting it with only the live messages
//! (compaction, and a disk that takes writes again), and reading a payload back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use super::record::{self, Record, HEADER};
use super::{Body, Entry, Outbox};

impl Outbox {
    /// Uses the file as it is: it holds exactly the live messages, whose places are known.
    pub(super) fn adopt(&mut self, len: u64) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.file = Some(file);
        self.writable = true;
        self.file_len = len;
        self.live_bytes = len - HEADER.len() as u64;
        Ok(())
    }

    /// Writes the live messages (queued and in flight) to a new file, fsyncs it and renames it
    /// over the old one; payloads move back to memory only while this runs.
    pub(super) fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut entries: Vec<&mut Entry> = self
            .queues
            .iter_mut()
            .flatten()
            .chain(self.inflight.iter_mut())
            .collect();
        entries.sort_by_key(|e| e.id);
        let mut out = std::io::BufWriter::new(crate::state::create_private(&tmp)?);
        out.write_all(HEADER)?;
        let mut offset = HEADER.len() as u64;
        let mut placed = Vec::with_capacity(entries.len());
        let mut buf = Vec::new();
        for entry in &entries {
            let payload = read_body(self.file.as_ref(), &entry.body)?;
            buf.clear();
            record::encode(
                &Record::Message {
                    id: entry.id,
                    kind: entry.kind,
                    qos: entry.qos,
                    topic: &entry.topic,
                    payload: &payload,
                },
                &mut buf,
            );
            out.write_all(&buf)?;
            let start = offset + record::payload_offset(&entry.topic) as u64;
            placed.push(Body::Disk {
                offset: start,
                len: payload.len() as u32,
            });
            offset += buf.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        for (entry, body) in entries.into_iter().zip(placed) {
            entry.body = body;
        }
        self.file = Some(file);
        self.writable = true;
        self.unsynced = false;
        self.file_len = offset;
        self.live_bytes = offset - HEADER.len() as u64;
        Ok(())
    }
}

/// A message's payload, from memory or read back from the file.
pub(super) fn read_body(file: Option<&File>, body: &Body) -> std::io::Result<Vec<u8>> {
    match body {
        Body::Memory(bytes) => Ok(bytes.to_vec()),
        Body::Disk { offset, len } => {
            let mut bytes = vec![0u8; *len as usize];
            file.ok_or_else(|| std::io::Error::other("the outbox file is not open"))?
                .read_exact_at(&mut bytes, *offset)?;
            Ok(bytes)
        }
    }
}
