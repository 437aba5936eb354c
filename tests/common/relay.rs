//! A fault-injecting relay: a small TCP proxy between two nodes (or a client and a
//! node) that passes bytes both ways until told to drop the replies, stall, or reset
//! every link. Nodes are pointed at it through their cluster file, so a fault between
//! two real `kv` processes happens exactly when the test says.
//!
//! Every pump thread reads with a short timeout and checks the relay's orders between
//! reads, so an order takes effect within [`TICK`]; a reset returns once every link is
//! gone. Forcing a reset (an RST, not a FIN) needs `SO_LINGER` 0, which std does not
//! offer on stable, so this file calls libc and is exempt from the crate's
//! `unsafe_code` lint, as `src/sys.rs` is.
#![allow(unsafe_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::DEADLINE;

/// How often a pump looks at the relay's orders.
const TICK: Duration = Duration::from_millis(10);

/// What the relay does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Both ways, as they come.
    Pass = 0,
    /// Requests pass; replies are read and thrown away.
    DropReplies = 1,
    /// Nothing is read either way: the other side looks frozen (a SIGSTOPped node).
    Stall = 2,
    /// Replies pass; requests are read [`TRICKLE_BYTES`] per [`TICK`]: a peer that
    /// reads slowly (a slow link, an owner busy elsewhere) but keeps reading.
    Trickle = 3,
}

/// Request bytes passed per [`TICK`] in [`Mode::Trickle`]: about 100 KiB a second.
const TRICKLE_BYTES: usize = 1024;

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    /// Set to make every link reset; cleared once they are gone.
    resetting: AtomicBool,
    stopping: AtomicBool,
    /// Reply bytes thrown away in [`Mode::DropReplies`].
    dropped: AtomicU64,
    /// Links accepted so far.
    accepted: AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// A running relay; stopped (every link closed) when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay on 127.0.0.1 and a free port to `target`, in [`Mode::Pass`].
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(&listener, target, &accepting));
        Relay { addr, shared, acceptor: Some(acceptor) }
    }

    /// Where the relay listens: the address to give the node behind it in the other
    /// node's cluster file.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, carry bytes as `mode` says, on every link, old and new.
    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Reply bytes thrown away so far.
    pub fn dropped_reply_bytes(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Links accepted so far.
    pub fn links(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Resets every link, both sides (an RST, as a crashed middlebox or a lost
    /// connection gives), and returns once they are all gone. New links are accepted
    /// afterwards as usual.
    pub fn reset_all(&self) {
        self.shared.resetting.store(true, Ordering::SeqCst);
        let pumps = std::mem::take(&mut *self.shared.pumps.lock().unwrap());
        for pump in pumps {
            pump.join().expect("a relay pump panicked");
        }
        self.shared.resetting.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for pump in std::mem::take(&mut *self.shared.pumps.lock().unwrap()) {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((from, _)) => {
                from.set_nonblocking(false).unwrap();
                let Ok(to) = TcpStream::connect_timeout(&target, DEADLINE) else {
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let forward = pump(from.try_clone().unwrap(), to.try_clone().unwrap(), false, shared);
                let back = pump(to, from, true, shared);
                shared.pumps.lock().unwrap().extend([forward, back]);
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// Copies `from` to `to` as the relay's mode says, until either side closes, a reset
/// is ordered, or the relay stops. `replies`: this pump carries the replies.
fn pump(from: TcpStream, mut to: TcpStream, replies: bool, shared: &Arc<Shared>) -> JoinHandle<()> {
    let shared = shared.clone();
    thread::spawn(move || {
        from.set_read_timeout(Some(TICK)).unwrap();
        let mut buffer = [0u8; 64 * 1024];
        let ordered = |shared: &Shared| {
            shared.resetting.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst)
        };
        loop {
            if ordered(&shared) {
                break reset_both(&from, &to);
            }
            if shared.mode.load(Ordering::SeqCst) == Mode::Stall as u8 {
                thread::sleep(TICK);
                continue;
            }
            let trickle = !replies && shared.mode.load(Ordering::SeqCst) == Mode::Trickle as u8;
            let want = if trickle { TRICKLE_BYTES } else { buffer.len() };
            let n = match (&from).read(&mut buffer[..want]) {
                Ok(0) => break to.shutdown(Shutdown::Write).unwrap_or(()),
                Ok(n) => n,
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break to.shutdown(Shutdown::Write).unwrap_or(()),
            };
            // The mode now, not when the read began: bytes that arrive after an order
            // obey it. Stalled, they are held until the stall ends.
            while shared.mode.load(Ordering::SeqCst) == Mode::Stall as u8 && !ordered(&shared) {
                thread::sleep(TICK);
            }
            if ordered(&shared) {
                break reset_both(&from, &to);
            }
            if replies && shared.mode.load(Ordering::SeqCst) == Mode::DropReplies as u8 {
                shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            if to.write_all(&buffer[..n]).is_err() {
                break to.shutdown(Shutdown::Write).unwrap_or(());
            }
            if trickle {
                thread::sleep(TICK);
            }
        }
    })
}

fn reset_both(a: &TcpStream, b: &TcpStream) {
    reset(a);
    reset(b);
}
/// Closes `stream` with a reset rather than a FIN: what a client that crashed with
/// unread input, or a dropped link, looks like to the server.
pub fn close_with_reset(stream: TcpStream) {
    reset(&stream);
    drop(stream);
}

/// Makes the socket's close an RST, and shuts it down, so the other end sees a reset
/// as soon as the last descriptor on it is closed.
fn reset(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor belongs to `stream`; the option value is a valid linger
    // struct of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
