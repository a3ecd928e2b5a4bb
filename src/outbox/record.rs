//! The outbox file format: an 8-byte header, then records, each `len: u32 LE`, `crc32: u32 LE`
//! of the body, and the body. Bodies are a message (tag 1: id, kind, qos, topic, payload) or the
//! end of one (tag 2: delivered, tag 3: dropped by the bound). A record is written with one
//! `write` call, so a crash leaves at most one torn record, at the end.

use thiserror::Error;

pub const HEADER: &[u8; 8] = b"FAOUTBX1";
/// The largest record the outbox writes (`Outbox::push` refuses a larger message). Reading
/// takes larger ones whose checksum holds (an older version wrote them): a length is damage
/// only when the file does not hold it or the checksum fails.
pub const MAX_BODY: u32 = 1 << 20;
const TAG_MESSAGE: u8 = 1;
const TAG_DELIVERED: u8 = 2;
const TAG_DROPPED: u8 = 3;

/// What a message is, which is also the order a backlog drains in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Alert = 0,
    Response = 1,
    Telemetry = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Alert, Kind::Response, Kind::Telemetry];

    fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Response => "response",
            Kind::Telemetry => "telemetry",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Message {
        id: u64,
        kind: Kind,
        qos: u8,
        topic: &'a str,
        payload: &'a [u8],
    },
    Delivered(u64),
    Dropped(u64),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not an outbox file (no FAOUTBX1 header)")]
    Header,
    #[error("record cut short (the write was interrupted)")]
    Truncated,
    #[error("record length {0} is out of range")]
    Length(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Appends the encoded record (length, checksum, body) to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match record {
        Record::Message {
            id,
            kind,
            qos,
            topic,
            payload,
        } => {
            out.push(TAG_MESSAGE);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(*kind as u8);
            out.push(*qos);
            let topic_len = u16::try_from(topic.len()).expect("MQTT topics fit in 65535 bytes");
            out.extend_from_slice(&topic_len.to_le_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(payload);
        }
        Record::Delivered(id) => {
            out.push(TAG_DELIVERED);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Record::Dropped(id) => {
            out.push(TAG_DROPPED);
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let body = &out[start + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a message body: tag, id, kind, QoS, topic length.
pub const MESSAGE_FIXED: usize = 1 + 8 + 1 + 1 + 2;

/// Where a message's payload starts, counted from the start of its record.
pub fn payload_offset(topic: &str) -> usize {
    8 + MESSAGE_FIXED + topic.len()
}

/// Decodes the record at the start of `bytes`: the record and its encoded length.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if bytes.len() < 8 {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if len == 0 {
        return Err(DecodeError::Length(len));
    }
    let end = 8 + len as usize;
    let Some(body) = bytes.get(8..end) else {
        return Err(DecodeError::Truncated);
    };
    if crc32fast::hash(body) != crc {
        return Err(DecodeError::Checksum);
    }
    let id = |body: &[u8]| -> Result<u64, DecodeError> {
        body.get(1..9)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or(DecodeError::Malformed("short id"))
    };
    let record = match body[0] {
        TAG_MESSAGE => {
            if body.len() < MESSAGE_FIXED {
                return Err(DecodeError::Malformed("short message header"));
            }
            let kind = Kind::from_byte(body[9]).ok_or(DecodeError::Malformed("unknown kind"))?;
            let qos = body[10];
            if qos > 2 {
                return Err(DecodeError::Malformed("qos above 2"));
            }
            let topic_len = u16::from_le_bytes([body[11], body[12]]) as usize;
            let topic = body
                .get(MESSAGE_FIXED..MESSAGE_FIXED + topic_len)
                .ok_or(DecodeError::Malformed("topic longer than the record"))?;
            let topic = std::str::from_utf8(topic)
                .map_err(|_| DecodeError::Malformed("topic not UTF-8"))?;
            Record::Message {
                id: id(body)?,
                kind,
                qos,
                topic,
                payload: &body[MESSAGE_FIXED + topic_len..],
            }
        }
        TAG_DELIVERED if body.len() == 9 => Record::Delivered(id(body)?),
        TAG_DROPPED if body.len() == 9 => Record::Dropped(id(body)?),
        _ => return Err(DecodeError::Malformed("unknown tag")),
    };
    Ok((record, end))
}

/// A whole file decoded: every good record with its offset, and where decoding stopped with
/// the error, if it did (the records before a damaged one are still good).
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    pub records: Vec<(usize, Record<'a>)>,
    pub damage: Option<(usize, DecodeError)>,
}

pub fn decode_all(file: &[u8]) -> Decoded<'_> {
    let mut decoded = Decoded::default();
    if file.is_empty() {
        return decoded;
    }
    if file.len() < HEADER.len() || &file[..HEADER.len()] != HEADER {
        decoded.damage = Some((0, DecodeError::Header));
        return decoded;
    }
    let mut at = HEADER.len();
    while at < file.len() {
        match decode(&file[at..]) {
            Ok((record, used)) => {
                decoded.records.push((at, record));
                at += used;
            }
            Err(err) => {
                decoded.damage = Some((at, err));
                break;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Message {
                id: 7,
                kind: Kind::Alert,
                qos: 1,
                topic: "devices/a/alerts",
                payload: b"{\"id\":\"a:overtemp:1\"}",
            },
            Record::Message {
                id: u64::MAX,
                kind: Kind::Telemetry,
                qos: 0,
                topic: "",
                payload: b"",
            },
            Record::Delivered(7),
            Record::Dropped(8),
        ];
        let mut file = HEADER.to_vec();
        for record in &records {
            encode(record, &mut file);
        }
        let decoded = decode_all(&file);
        assert_eq!(decoded.damage, None);
        let decoded: Vec<Record> = decoded.records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(decoded, records);
    }

    /// Issue 31: an older version wrote a record larger than `MAX_BODY` (20 000 file sensors
    /// at QoS 1); reading it as damage set aside every message behind it. A record whose
    /// checksum holds is read whatever its size, and the ones behind it too.
    #[test]
    fn a_record_larger_than_the_outbox_writes_does_not_take_the_ones_behind_it() {
        let payload = vec![b'7'; MAX_BODY as usize + 300_000];
        let mut file = HEADER.to_vec();
        encode(
            &Record::Message {
                id: 1,
                kind: Kind::Telemetry,
                qos: 1,
                topic: "t",
                payload: &payload,
            },
            &mut file,
        );
        encode(
            &Record::Message {
                id: 2,
                kind: Kind::Alert,
                qos: 1,
                topic: "a",
                payload: b"{}",
            },
            &mut file,
        );
        let decoded = decode_all(&file);
        assert_eq!(decoded.damage, None);
        assert_eq!(decoded.records.len(), 2);
    }

    #[test]
    fn damage_is_found_where_it_is() {
        let mut file = HEADER.to_vec();
        encode(&Record::Delivered(1), &mut file);
        let second = file.len();
        encode(&Record::Delivered(2), &mut file);

        let cut = decode_all(&file[..file.len() - 1]);
        assert_eq!(cut.records.len(), 1);
        assert_eq!(cut.damage, Some((second, DecodeError::Truncated)));

        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        assert_eq!(
            decode_all(&flipped).damage,
            Some((second, DecodeError::Checksum))
        );

        // A length the file does not hold is damage; a zero length too.
        let mut huge = file.clone();
        huge[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_all(&huge).damage,
            Some((second, DecodeError::Truncated))
        );
        let mut zero = file.clone();
        zero[second..second + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_all(&zero).damage,
            Some((second, DecodeError::Length(0)))
        );

        assert_eq!(
            decode_all(b"garbage!").damage,
            Some((0, DecodeError::Header))
        );
    }
}
