//! Every call into the C library, and every effect on the whole process, in one file.
//!
//! The rest of the crate is `#![deny(unsafe_code)]` (Cargo.toml's `[lints]`); this file
//! alone is allowed `unsafe`, each block with a SAFETY comment. Nothing here runs on its
//! own: the library only reads process limits, and it is the binary that decides to
//! raise the open-file limit or to take over SIGINT and SIGTERM.
#![allow(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The process's soft open-file limit, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Raises the soft open-file limit towards `wanted`, up to the hard limit (which needs
/// no privilege, as Redis does at start-up). Returns the soft limit now in force.
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raised.rlim_cur)
}

/// Calls `listen` again with `backlog`; Linux updates the queue length of a socket
/// that is already listening (std's `bind` asks for 128).
pub fn set_listen_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    // SAFETY: the descriptor is a valid, listening TCP socket owned by `listener`.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One non-blocking read from `stream` into `buffer`, leaving the socket blocking for
/// everyone else (a per-call flag, not `set_nonblocking`, which costs two syscalls).
/// `Ok(None)`: nothing there yet.
pub fn recv_now(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: the descriptor belongs to `stream` and `buffer` is valid for writes of
    // its length.
    let read = unsafe {
        libc::recv(stream.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT)
    };
    if read >= 0 {
        return Ok(Some(read as usize));
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(error),
    }
}

/// Least time between two trims of the allocator, however many connections shrink.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// A trim was skipped for the interval: [`trim_if_pending`] does it later.
static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

/// Asks glibc's malloc to give free memory back to the system, at most once per
/// `TRIM_INTERVAL` for the whole process. Freeing a large buffer alone often does
/// not: glibc keeps it in the freeing thread's arena. Called after a burst released
/// buffers (a cold path), never per request; a trim skipped here is left pending for
/// [`trim_if_pending`], which the supervisor calls every interval, so memory freed by
/// the last of many connections going idle together comes back too.
pub fn give_freed_memory_back() {
    static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now_ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
    if !claim_interval(&LAST_TRIM_MS, now_ms, TRIM_INTERVAL.as_millis() as u64) {
        TRIM_PENDING.store(true, Ordering::Relaxed);
        return;
    }
    TRIM_PENDING.store(false, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists; any pad is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocations at least this large get their own mapping from glibc's malloc, which
/// returns it to the system when freed (see [`fix_malloc_mmap_threshold`]).
pub const MMAP_THRESHOLD: usize = 64 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. By default glibc raises it to
/// the size of each large block freed (up to 32 MiB), so after one burst of large
/// replies every later burst buffer comes from the thread arenas, and the small
/// buffers allocated among them pin the freed pages: measured with
/// `benches/faults.py idle`, 300 connections idle after a burst of GETs of 60 KB values
/// held 41 KiB each with the default, 19 KiB with the threshold fixed (16 KiB after
/// only a PING), and `malloc_trim` could not help (the pages are not free). Burst
/// buffers are per round, never per request, so the extra `mmap` calls cost little.
/// A process-wide setting, so the binary's to make, before any thread starts.
pub fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; the value is a valid threshold.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Does a trim [`give_freed_memory_back`] skipped, if there is one.
pub fn trim_if_pending() {
    if TRIM_PENDING.load(Ordering::Relaxed) {
        give_freed_memory_back();
    }
}

/// True for exactly one caller per `interval_ms`, across threads: the one that moves
/// `last` (the claimed time plus one, so 0 means never) forward to `now_ms`.
fn claim_interval(last: &AtomicU64, now_ms: u64, interval_ms: u64) -> bool {
    let previous = last.load(Ordering::Relaxed);
    if previous != 0 && now_ms + 1 < previous + interval_ms {
        return false;
    }
    last.compare_exchange(previous, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Takes an exclusive advisory lock on `file` without waiting: false if another
/// process holds it. Released when the file is closed (the process exits).
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: the descriptor is a valid open file owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock { Ok(false) } else { Err(error) }
}

/// SIGINT, SIGTERM or SIGHUP: each asks for a graceful shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    Interrupt,
    Terminate,
    /// The terminal went away, or an operator's reload habit: kv has nothing to
    /// reload, and dying at once (the default action) would lose replies.
    Hangup,
}

impl ShutdownSignal {
    /// The signal's name, for the log.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Interrupt => "SIGINT",
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Hangup => "SIGHUP",
        }
    }
}

/// The signals [`block_shutdown_signals`] takes over.
const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it starts
/// afterwards, after restoring their default action (a shell starts background jobs
/// with SIGINT ignored, and an ignored signal is discarded rather than left pending
/// for [`wait_for_shutdown_signal`]).
pub fn block_shutdown_signals() -> io::Result<()> {
    for signal in SHUTDOWN_SIGNALS {
        // SAFETY: SIG_DFL is a valid disposition for these signals.
        if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    let set = shutdown_signals();
    // SAFETY: `set` is a valid, initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Waits for the next SIGINT, SIGTERM or SIGHUP (blocked by [`block_shutdown_signals`]).
pub fn wait_for_shutdown_signal() -> io::Result<ShutdownSignal> {
    let set = shutdown_signals();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is a valid sigset_t and `signal` a valid place to write.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(match signal {
        libc::SIGINT => ShutdownSignal::Interrupt,
        libc::SIGHUP => ShutdownSignal::Hangup,
        _ => ShutdownSignal::Terminate,
    })
}

/// Bytes written to `stream` that its peer has not yet acknowledged (Linux's
/// `SIOCOUTQ`): 0 once the client's kernel holds every reply, after which closing the
/// socket loses nothing even if the close turns into a reset.
pub fn unsent_bytes(stream: &TcpStream) -> io::Result<usize> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: the descriptor belongs to `stream`; TIOCOUTQ (SIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(unsent).unwrap_or(0))
}

/// Fills `buffer` from the kernel's random source (`getrandom(2)`, blocking only until
/// the pool is first seeded at boot). For the handshake's nonces.
pub fn fill_random(buffer: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: `rest` is valid for writes of its length; flags 0 is the default pool.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += got as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_now_does_not_block_and_sees_data_and_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 16];
        assert_eq!(recv_now(&server, &mut buffer).unwrap(), None);
        std::io::Write::write_all(&mut client, b"hi").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            got = recv_now(&server, &mut buffer).unwrap();
        }
        assert_eq!(got, Some(2));
        drop(client);
        let mut closed = None;
        while closed.is_none() && Instant::now() < deadline {
            closed = recv_now(&server, &mut buffer).unwrap();
        }
        assert_eq!(closed, Some(0));
    }

    #[test]
    fn the_allocator_is_trimmed_at_most_once_per_interval() {
        let last = AtomicU64::new(0);
        assert!(claim_interval(&last, 0, 1000), "the first call trims");
        assert!(!claim_interval(&last, 10, 1000));
        assert!(!claim_interval(&last, 999, 1000));
        assert!(claim_interval(&last, 1000, 1000));
        assert!(!claim_interval(&last, 1500, 1000));
        // Many threads at once: one wins.
        let last = AtomicU64::new(0);
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..8).map(|_| scope.spawn(|| usize::from(claim_interval(&last, 5, 1000)))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn the_open_file_limit_is_readable() {
        assert!(open_file_limit().is_some_and(|limit| limit > 0));
    }
}
