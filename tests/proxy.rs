//! A TCP proxy between the agent and mosquitto that a test can switch: forward, refuse new
//! connections, or blackhole (sockets stay open, nothing gets through), to cut links the way
//! networks do. Threads and sockets end when it is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Forward = 0,
    /// New connections are accepted and closed at once, as a host with nothing listening.
    Refuse = 1,
    /// Bytes are read and thrown away in both directions; nothing is closed.
    Blackhole = 2,
    /// The next bytes the client sends reset its connection (a TCP RST, as from a broker killed
    /// with data waiting unread); then back to Forward.
    Reset = 3,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (mode, stop, sockets) =
                (Arc::clone(&mode), Arc::clone(&stop), Arc::clone(&sockets));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if mode.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let mut kept = sockets.lock().unwrap();
                    kept.push(client.try_clone().unwrap());
                    kept.push(server.try_clone().unwrap());
                    drop(kept);
                    pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        &mode,
                        true,
                    );
                    pump(server, client, &mode, false);
                }
            })
        };
        Proxy {
            port,
            mode,
            stop,
            sockets,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread while the mode is Forward; drops bytes while blackholed;
/// resets `from` when it is the client (`from_client`) and the mode is Reset.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: &Arc<AtomicU8>, from_client: bool) {
    let mode = Arc::clone(mode);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if from_client
                        && mode
                            .compare_exchange(
                                Mode::Reset as u8,
                                Mode::Forward as u8,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                    {
                        reset(&from);
                        break;
                    }
                    if mode.load(Ordering::SeqCst) == Mode::Blackhole as u8 {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Ends `stream`'s connection with a TCP RST whatever other handles to the socket exist: a
/// connect to an AF_UNSPEC address disconnects a TCP socket, and Linux resets an established one
/// (tcp_disconnect), where shutdown would send a FIN.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let address = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid socket descriptor and a sockaddr of the size given.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &address,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}
