//! One thread per Modbus connection (a TCP device, or a serial line with its units), making one
//! transaction at a time.
//!
//! Readers and writers queue [`Job`]s and wait on each job's [`Slot`] with their own deadline;
//! the thread never waits for them. Each transaction has the job's timeout. A connection that
//! fails is opened again for the next job; the jobs queued before the failure fail at once with
//! the same reason (they would only wait their turn to time out), and so do the jobs for a unit
//! that just timed out: a dead device costs its line one timeout per pass, not one per request.
//! On a serial line the thread keeps the 3.5-character silence between frames, and after a
//! timeout or a garbled answer it reopens the port, so a late or broken frame never shifts into
//! the next answer.
//!
//! Lines are shared by name: every sensor set, the `read` command and the actuators of one
//! connection use the same thread, so a serial line only ever has one master talking. The thread
//! ends when the last user lets go.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::{Reader, SlaveContext, Writer};
use tokio_modbus::Slave;

use super::{Failure, Table, Transport};
use crate::sync::Lock;

/// What a job asks of the device.
#[derive(Debug, Clone)]
pub enum Work {
    /// Read `count` registers or bits from `start`; the answer is cut into `parts`
    /// ((address, count) each). When the device refuses the whole span with an exception, each
    /// part is read on its own, so one wrong address fails only its own sensor.
    Read {
        table: Table,
        start: u16,
        count: u16,
        parts: Arc<[(u16, u16)]>,
    },
    /// Write one coil (`words[0]` 0 or 1) or one or two holding registers.
    Write {
        table: Table,
        address: u16,
        words: Vec<u16>,
    },
}

/// The result of a job: the parts of a read (none for a write), or one failure for all.
pub type Outcome = Result<Answer, Failure>;

/// What a read brought back: the words of every part in one buffer, and where each part's are
/// (or why that part failed, when the parts were read one by one). Two allocations a request,
/// however many points it carries; each reader borrows its own part.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    words: Vec<u16>,
    parts: Vec<Result<(usize, usize), Failure>>,
    /// Whether a part found the device not answering (worked out once, not once a reader).
    lost: Option<String>,
}

impl Answer {
    fn new(words: Vec<u16>, parts: Vec<Result<(usize, usize), Failure>>) -> Answer {
        let lost = parts.iter().find_map(|part| match part {
            Err(Failure::NoAnswer(why)) => Some(why.clone()),
            _ => None,
        });
        Answer { words, parts, lost }
    }

    /// The words of part `index`, or why it could not be read.
    pub fn part(&self, index: usize) -> Result<&[u16], Failure> {
        match self.parts.get(index) {
            Some(Ok((from, to))) => Ok(&self.words[*from..*to]),
            Some(Err(failure)) => Err(failure.clone()),
            None => Err(Failure::NoAnswer("no such part".to_owned())),
        }
    }
}

/// Where a job's outcome appears.
#[derive(Default)]
pub struct Slot {
    outcome: Mutex<Option<Arc<Outcome>>>,
    ready: Condvar,
}

impl Slot {
    fn put(&self, outcome: Outcome) {
        *self.lock() = Some(Arc::new(outcome));
        self.ready.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Outcome>>> {
        self.outcome.locked()
    }

    /// The outcome, waiting for it until `deadline` at most (shared, never copied).
    pub fn wait_until(&self, deadline: Instant) -> Option<Arc<Outcome>> {
        let mut outcome = self.lock();
        loop {
            if let Some(done) = outcome.as_ref() {
                return Some(Arc::clone(done));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            outcome = self
                .ready
                .wait_timeout(outcome, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

struct Job {
    unit: u8,
    work: Work,
    timeout: Duration,
    queued: Instant,
    slot: Arc<Slot>,
}

/// A connection's thread.
pub struct Line {
    transport: Transport,
    jobs: Mutex<std_mpsc::Sender<Job>>,
}

type Registry = Mutex<HashMap<Transport, Weak<Line>>>;

fn registry() -> &'static Registry {
    static LINES: OnceLock<Registry> = OnceLock::new();
    LINES.get_or_init(Registry::default)
}

/// The line of `transport`, shared with everyone else who uses it; started if nobody does.
pub fn open(transport: &Transport) -> Arc<Line> {
    let mut lines = registry().locked();
    lines.retain(|_, line| line.strong_count() > 0);
    if let Some(line) = lines.get(transport).and_then(Weak::upgrade) {
        return line;
    }
    let (jobs, queue) = std_mpsc::channel();
    let thread_transport = transport.clone();
    let name = match transport {
        Transport::Tcp { .. } => "modbus-tcp",
        Transport::Rtu(_) => "modbus-rtu",
        Transport::RtuOverTcp { .. } => "modbus-rtutcp",
    };
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(thread_transport, queue));
    if let Err(err) = spawned {
        // Jobs then fail at once: the sender's receiver is gone.
        tracing::error!(line = %transport, error = %err, "Cannot start a Modbus line thread.");
    }
    let line = Arc::new(Line {
        transport: transport.clone(),
        jobs: Mutex::new(jobs),
    });
    lines.insert(transport.clone(), Arc::downgrade(&line));
    line
}

impl Line {
    /// Queues `work` for `unit`; the outcome appears in the returned slot.
    pub fn submit(&self, unit: u8, work: Work, timeout: Duration) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let job = Job {
            unit,
            work,
            timeout,
            queued: Instant::now(),
            slot: Arc::clone(&slot),
        };
        let sent = self.jobs.locked().send(job);
        if sent.is_err() {
            slot.put(Err(Failure::NoAnswer(format!(
                "the thread of {} is not running",
                self.transport
            ))));
        }
        slot
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

/// The bytes a serial port delivered since the last request, for telling a garbled answer from
/// none.
type Seen = Arc<Mutex<Vec<u8>>>;

/// A serial port that keeps a copy of what it reads.
struct Tap<T> {
    inner: T,
    seen: Seen,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let mut seen = self.seen.locked();
            if seen.len() < 512 {
                seen.extend_from_slice(&buf.filled()[before..]);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An open connection.
struct Conn {
    context: Context,
    /// Serial lines only.
    seen: Option<Seen>,
}

/// The body of a line's thread: jobs in order until every user has let go.
fn run(transport: Transport, queue: std_mpsc::Receiver<Job>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let why = format!("cannot start the I/O of {transport}: {err}");
            for job in queue {
                job.slot.put(Err(Failure::NoAnswer(why.clone())));
            }
            return;
        }
    };
    let gap = match &transport {
        Transport::Rtu(serial) => serial.frame_gap(),
        // Over TCP the gateway keeps the serial line's silences itself.
        Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => Duration::ZERO,
    };
    let mut conn: Option<Conn> = None;
    // When the connection last failed, and why: jobs queued before then fail at once.
    let mut line_down: Option<(Instant, String)> = None;
    let mut unit_down: HashMap<u8, (Instant, String)> = HashMap::new();
    let mut quiet_since = Instant::now();
    for job in queue {
        if let Some((at, why)) = &line_down {
            if job.queued < *at {
                job.slot.put(Err(Failure::NoAnswer(why.clone())));
                continue;
            }
        }
        if let Some((at, why)) = unit_down.get(&job.unit) {
            if job.queued < *at {
                job.slot.put(Err(Failure::NoAnswer(why.clone())));
                continue;
            }
        }
        if conn.is_none() {
            let opened = runtime.block_on(async {
                match tokio::time::timeout(job.timeout, connect(&transport)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "cannot connect to {transport}: no answer within {} s",
                        job.timeout.as_secs_f64()
                    )),
                }
            });
            match opened {
                Ok(opened) => {
                    if line_down.take().is_some() {
                        tracing::info!(line = %transport, "Modbus connection open again.");
                    }
                    conn = Some(opened);
                    quiet_since = Instant::now();
                }
                Err(why) => {
                    line_down = Some((Instant::now(), why.clone()));
                    job.slot.put(Err(Failure::NoAnswer(why)));
                    continue;
                }
            }
        }
        let Some(open) = conn.as_mut() else {
            continue;
        };
        let outcome = runtime.block_on(execute(open, &job, gap, &mut quiet_since));
        match lost(&outcome) {
            Some(why) => {
                unit_down.insert(job.unit, (Instant::now(), why));
                // A late answer must not be read as the next one's: start clean.
                conn = None;
            }
            None => {
                unit_down.remove(&job.unit);
            }
        }
        job.slot.put(outcome);
    }
}

/// Why the device did not answer, if it did not (an exception is an answer).
pub fn lost(outcome: &Outcome) -> Option<String> {
    match outcome {
        Err(Failure::NoAnswer(why)) => Some(why.clone()),
        Ok(answer) => answer.lost.clone(),
        Err(Failure::Exception(_)) => None,
    }
}

/// A TCP connection to a device or a serial gateway, each request sent at once.
async fn tcp(
    transport: &Transport,
    host: &str,
    port: u16,
) -> Result<tokio::net::TcpStream, String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|err| format!("cannot connect to {transport}: {err}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(transport: &Transport) -> Result<Conn, String> {
    match transport {
        Transport::Tcp { host, port } => Ok(Conn {
            context: tokio_modbus::client::tcp::attach(tcp(transport, host, *port).await?),
            seen: None,
        }),
        // RTU frames (with their CRC) over the connection: the gateway puts them on its line.
        Transport::RtuOverTcp { host, port } => Ok(Conn {
            context: tokio_modbus::client::rtu::attach(tcp(transport, host, *port).await?),
            seen: None,
        }),
        Transport::Rtu(serial) => {
            use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, StopBits};
            let port = tokio_serial::new(serial.path.to_string_lossy(), serial.baud)
                .data_bits(if serial.data_bits == 7 {
                    DataBits::Seven
                } else {
                    DataBits::Eight
                })
                .parity(match serial.parity {
                    super::Parity::None => Parity::None,
                    super::Parity::Even => Parity::Even,
                    super::Parity::Odd => Parity::Odd,
                })
                .stop_bits(if serial.stop_bits == 2 {
                    StopBits::Two
                } else {
                    StopBits::One
                })
                .open_native_async()
                .map_err(|err| format!("cannot open {}: {err}", serial.path.display()))?;
            let seen = Seen::default();
            let tap = Tap {
                inner: port,
                seen: Arc::clone(&seen),
            };
            Ok(Conn {
                context: tokio_modbus::client::rtu::attach(tap),
                seen: Some(seen),
            })
        }
    }
}

/// Runs one job on an open connection.
async fn execute(conn: &mut Conn, job: &Job, gap: Duration, quiet_since: &mut Instant) -> Outcome {
    match &job.work {
        Work::Read {
            table,
            start,
            count,
            parts,
        } => {
            let whole = transact(conn, job, gap, quiet_since, *table, *start, *count, None).await;
            match whole {
                Ok(words) => Ok(Answer::new(
                    words,
                    parts
                        .iter()
                        .map(|&(address, n)| {
                            let from = usize::from(address - start);
                            Ok((from, from + usize::from(n)))
                        })
                        .collect(),
                )),
                Err(Failure::Exception(code)) if parts.len() > 1 => {
                    tracing::debug!(
                        code,
                        start,
                        count,
                        "A coalesced Modbus read was refused; reading its parts one by one."
                    );
                    let mut words: Vec<u16> = Vec::new();
                    let mut each = Vec::with_capacity(parts.len());
                    for &(address, n) in parts.iter() {
                        let part =
                            transact(conn, job, gap, quiet_since, *table, address, n, None).await;
                        let lost = matches!(part, Err(Failure::NoAnswer(_)));
                        each.push(part.map(|part| {
                            let from = words.len();
                            words.extend_from_slice(&part);
                            (from, words.len())
                        }));
                        if lost {
                            // The device stopped answering: the rest would only time out too.
                            while each.len() < parts.len() {
                                each.push(each[each.len() - 1].clone());
                            }
                            break;
                        }
                    }
                    Ok(Answer::new(words, each))
                }
                Err(failure) => Err(failure),
            }
        }
        Work::Write {
            table,
            address,
            words,
        } => transact(
            conn,
            job,
            gap,
            quiet_since,
            *table,
            *address,
            words.len() as u16,
            Some(words),
        )
        .await
        .map(|_| Answer::default()),
    }
}

/// One request and its answer, within the job's timeout.
#[allow(clippy::too_many_arguments)]
async fn transact(
    conn: &mut Conn,
    job: &Job,
    gap: Duration,
    quiet_since: &mut Instant,
    table: Table,
    address: u16,
    count: u16,
    write: Option<&[u16]>,
) -> Result<Vec<u16>, Failure> {
    if !gap.is_zero() {
        let quiet_until = *quiet_since + gap;
        tokio::time::sleep_until(quiet_until.into()).await;
    }
    if let Some(seen) = &conn.seen {
        seen.locked().clear();
    }
    let context = &mut conn.context;
    context.set_slave(Slave(job.unit));
    let request = async {
        let bits = |result: tokio_modbus::Result<Vec<bool>>| {
            result.map(|answer| {
                answer.map(|bits| {
                    bits.into_iter()
                        .take(usize::from(count))
                        .map(u16::from)
                        .collect::<Vec<u16>>()
                })
            })
        };
        match (table, write) {
            (Table::Holding, None) => context.read_holding_registers(address, count).await,
            (Table::Input, None) => context.read_input_registers(address, count).await,
            (Table::Coil, None) => bits(context.read_coils(address, count).await),
            (Table::Discrete, None) => bits(context.read_discrete_inputs(address, count).await),
            (Table::Coil, Some(words)) => context
                .write_single_coil(address, words[0] != 0)
                .await
                .map(|answer| answer.map(|()| Vec::new())),
            (Table::Holding, Some([word])) => context
                .write_single_register(address, *word)
                .await
                .map(|answer| answer.map(|()| Vec::new())),
            (Table::Holding, Some(words)) => context
                .write_multiple_registers(address, words)
                .await
                .map(|answer| answer.map(|()| Vec::new())),
            (_, Some(_)) => Ok(Err(tokio_modbus::ExceptionCode::IllegalFunction)),
        }
    };
    let answer = tokio::time::timeout(job.timeout, request).await;
    *quiet_since = Instant::now();
    let what = || format!("unit {}", job.unit);
    match answer {
        Ok(Ok(Ok(words))) if write.is_some() || words.len() == usize::from(count) => Ok(words),
        Ok(Ok(Ok(words))) => Err(Failure::NoAnswer(format!(
            "{}: answered {} values for {count} asked",
            what(),
            words.len()
        ))),
        Ok(Ok(Err(code))) => Err(Failure::Exception(u8::from(code))),
        Ok(Err(err)) => Err(Failure::NoAnswer(format!("{}: {}", what(), protocol(&err)))),
        Err(_) => Err(Failure::NoAnswer(no_answer(
            &what(),
            job.timeout,
            conn.seen.as_ref(),
        ))),
    }
}

/// Why a request timed out: nothing came back, or something that was not a valid frame.
fn no_answer(what: &str, timeout: Duration, seen: Option<&Seen>) -> String {
    let bytes = seen.map(|seen| seen.locked().clone()).unwrap_or_default();
    let secs = timeout.as_secs_f64();
    if bytes.is_empty() {
        return format!("{what}: no answer within {secs} s");
    }
    let hex: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let shown = if bytes.len() > 16 {
        format!("{} …", hex.join(" "))
    } else {
        hex.join(" ")
    };
    if bytes.len() >= 4 && !crc_matches(&bytes) {
        format!(
            "{what}: answer with a bad CRC within {secs} s ({} bytes: {shown})",
            bytes.len()
        )
    } else {
        format!(
            "{what}: no valid answer within {secs} s ({} bytes: {shown})",
            bytes.len()
        )
    }
}

/// Whether the last two bytes are the CRC-16/MODBUS of the rest (low byte first).
fn crc_matches(frame: &[u8]) -> bool {
    let (body, crc) = frame.split_at(frame.len() - 2);
    crc16(body) == u16::from_le_bytes([crc[0], crc[1]])
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for byte in bytes {
        crc ^= u16::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// A tokio-modbus error in words: its protocol errors print the device's answer as Rust Debug
/// text, which is no reading for an operator (nor for telemetry's `errors`).
fn protocol(err: &tokio_modbus::Error) -> String {
    use tokio_modbus::ProtocolError;
    match err {
        tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch { message, .. }) => format!(
            "the answer does not match the request ({})",
            message.trim_end_matches('.').to_lowercase()
        ),
        tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch { request, .. }) => {
            format!(
                "the answer is for another function than the one asked ({:#04x})",
                request.value()
            )
        }
        tokio_modbus::Error::Transport(err) => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the serial line specification 1.02, 6.2.2 (read 1 holding register of
    /// unit 2... ): 02 07 gives CRC 0x1241, sent 41 12.
    #[test]
    fn crc_of_the_specification_example() {
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        assert!(crc_matches(&[0x02, 0x07, 0x41, 0x12]));
        assert!(!crc_matches(&[0x02, 0x07, 0x41, 0x13]));
    }

    #[test]
    fn no_answer_tells_silence_from_garbage() {
        let seen: Seen = Arc::default();
        assert_eq!(
            no_answer("unit 3", Duration::from_millis(500), Some(&seen)),
            "unit 3: no answer within 0.5 s"
        );
        seen.lock()
            .unwrap()
            .extend([0x03, 0x04, 0x02, 0x00, 0x2a, 0x00, 0x00]);
        let why = no_answer("unit 3", Duration::from_millis(500), Some(&seen));
        assert!(
            why.contains("bad CRC") && why.contains("03 04 02 00 2a 00 00"),
            "{why}"
        );
    }
}
