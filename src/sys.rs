//! Every call into the C library, and every effect on the whole process, in one file.
//!
//! The rest of the crate is `#![deny(unsafe_code)]` (Cargo.toml's `[lints]`); this file
//! alone is allowed `unsafe`, each block with a SAFETY comment. Nothing here runs on its
//! own: the library only reads process limits, and it is the binary that decides to
//! raise the open-file limit or to take over SIGINT and SIGTERM.
#![allow(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// Waits until one of `listeners` has a connection to accept; returns which are ready.
/// For an acceptor serving two doors on one thread.
pub fn wait_for_connections(listeners: &[&TcpListener]) -> io::Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    loop {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call's
        // length, each naming a descriptor its listener keeps open.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready >= 0 {
            return Ok(fds.iter().map(|fd| fd.revents != 0).collect());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A descriptor that becomes readable when rung: how a thread that waits in `poll`
/// on sockets also hears from other threads (a subscription's event logs). An
/// `eventfd`: one descriptor, and ringing a rung bell costs one write and no memory.
#[derive(Debug)]
pub struct Bell {
    fd: OwnedFd,
}

impl Bell {
    pub fn new() -> io::Result<Bell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a descriptor
        // nobody else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Bell { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Makes the bell readable until [`Bell::clear`]. Cannot fail in a way that
    /// matters: a counter at its limit is still readable.
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to the bell's own descriptor.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Takes the rings so far: the bell is quiet until the next one.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, from the bell's own descriptor.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut count).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Rung and not cleared since.
    #[cfg(test)]
    pub fn is_rung(&self) -> bool {
        let mut fd = [PollFd::new(self.fd(), true, false)];
        poll(&mut fd, Duration::ZERO).is_ok() && fd[0].0.revents & libc::POLLIN != 0
    }
}

/// One descriptor for [`poll`] and what to wait for.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Waits for `fd` to be readable with `read`, writable with `write`.
    pub fn new(fd: RawFd, read: bool, write: bool) -> PollFd {
        let events = if read { libc::POLLIN } else { 0 } | if write { libc::POLLOUT } else { 0 };
        PollFd(libc::pollfd { fd, events, revents: 0 })
    }

    /// A place in the array that waits for nothing (`poll` skips a negative fd).
    pub fn ignored() -> PollFd {
        PollFd(libc::pollfd { fd: -1, events: 0, revents: 0 })
    }
}

/// Waits up to `timeout` until one of `fds` is ready; a signal ends the wait early.
pub fn poll(fds: &mut [PollFd], timeout: Duration) -> io::Result<()> {
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `PollFd` is a transparent pollfd, so `fds` is a valid array of
    // `fds.len()` pollfd structs for the call's length.
    let ready = unsafe { libc::poll(fds.as_mut_ptr().cast(), fds.len() as libc::nfds_t, millis) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

/// One non-blocking read from `stream` into `buffer`, leaving the socket blocking for
/// everyone else (a per-call flag, not `set_nonblocking`, which costs two syscalls).
/// `Ok(None)`: nothing there yet.
pub fn recv_now(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buffer` is valid for writes of its length.
    match unsafe { recv(stream, buffer.as_mut_ptr(), buffer.len(), libc::MSG_DONTWAIT) } {
        Ok(read) => Ok(Some(read)),
        Err(error) if nothing_yet(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

/// True for the error of a non-blocking read that found nothing, or was interrupted
/// before it could: try again later.
pub fn nothing_yet(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// `recv(2)` of at most `len` bytes into `to`, with `flags`.
///
/// # Safety
/// `to` must be valid for writes of `len` bytes.
unsafe fn recv(stream: &TcpStream, to: *mut u8, len: usize, flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`; the caller vouches for `to`.
    let read = unsafe { libc::recv(stream.as_raw_fd(), to.cast(), len, flags) };
    if read < 0 { Err(io::Error::last_os_error()) } else { Ok(read as usize) }
}

/// One read from `stream` onto the end of `buffer`, of at most `room` bytes, into
/// its spare capacity: the bytes are not zeroed first, as `resize` then `read` would
/// do on every call (16 KiB of memset per read of a 40-byte reply). `now`: without
/// waiting (`MSG_DONTWAIT`, as [`recv_now`]); otherwise as a blocking `read`, within
/// the socket's read timeout. Errors are the call's own, `WouldBlock` included.
pub fn recv_append(stream: &TcpStream, buffer: &mut Vec<u8>, room: usize, now: bool) -> io::Result<usize> {
    buffer.reserve(room);
    let spare = buffer.spare_capacity_mut();
    let flags = if now { libc::MSG_DONTWAIT } else { 0 };
    // SAFETY: `spare` is valid for writes of its length, which is at least `room`.
    let read = unsafe { recv(stream, spare.as_mut_ptr().cast(), room, flags) }?;
    // SAFETY: `recv` initialised the first `read` bytes of the spare capacity, and
    // `read <= room <= spare.len()`.
    unsafe { buffer.set_len(buffer.len() + read) };
    Ok(read)
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

/// Stack bytes left alone below the frame of [`give_unused_stack_back`]: its own call
/// to `madvise` and the x86-64 red zone (128 bytes) fit in far less. Small on purpose:
/// a connection blocked in `read` sits about 7 KiB below its stack's top, so a larger
/// margin would keep the very page this is for.
const STACK_MARGIN: usize = 512;

/// Where this thread is in giving back the stack pages its first round touched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StackPages {
    /// No round served yet: the stack is as shallow as it gets.
    Fresh,
    /// A round went deeper than an idle connection needs: give it back once idle.
    Deepened,
    /// Given back once; later only a burst asks again.
    GivenBack,
}

thread_local! {
    static STACK_PAGES: std::cell::Cell<StackPages> = const { std::cell::Cell::new(StackPages::Fresh) };
}

/// Notes that this thread served a round. The first one touches a page of stack below
/// where an idle connection waits (measured: a connection that only sent `PING` keeps
/// 3 pages of its stack resident, one that sent nothing 2), which stays resident for
/// the thread's life unless given back: see [`stack_to_give_back`]. Per round, so it is
/// one thread-local read.
pub fn note_round_served() {
    STACK_PAGES.with(|pages| {
        if pages.get() == StackPages::Fresh {
            pages.set(StackPages::Deepened);
        }
    });
}

/// True when this thread served its first round and has not yet given back the stack
/// pages it touched below its idle frame.
pub fn stack_to_give_back() -> bool {
    STACK_PAGES.with(|pages| pages.get() == StackPages::Deepened)
}

/// Gives back to the system the pages of this thread's stack below the caller's frame
/// (`madvise(MADV_DONTNEED)`: they read as zeros if touched again, which is all a stack
/// below its pointer may assume). For a connection about to wait idle: RSS counts every
/// page a thread's stack ever touched, and a burst or the first request touches more
/// than waiting does. One `pthread_getattr_np` and one `madvise`, on a cold path.
#[inline(never)]
pub fn give_unused_stack_back() {
    STACK_PAGES.with(|pages| pages.set(StackPages::GivenBack));
    let Some(lowest) = stack_lowest_address() else { return };
    let here = 0u8;
    let frame = std::ptr::addr_of!(here) as usize;
    let page = page_size();
    let end = frame.saturating_sub(STACK_MARGIN) & !(page - 1);
    if end <= lowest {
        return;
    }
    // SAFETY: [lowest, end) lies in this thread's own stack mapping (pthread_getattr_np
    // reports it, guard page excluded), wholly below this frame by at least
    // STACK_MARGIN and page aligned. Nothing lives below the stack pointer, and this
    // thread is the only one using its stack, so discarding those pages loses nothing.
    unsafe {
        libc::madvise(lowest as *mut libc::c_void, end - lowest, libc::MADV_DONTNEED);
    }
}

/// The lowest usable address of the calling thread's stack (above its guard page),
/// page aligned, if glibc can say. Not inlined: its `pthread_attr_t` must not sit in
/// the frame of [`give_unused_stack_back`], which is measured from a local.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline(never)]
fn stack_lowest_address() -> Option<usize> {
    let mut address: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread, and it is
    // destroyed after pthread_attr_getstack wrote the two values it is given. For a
    // thread std started (every caller here) glibc reads its own descriptor; only the
    // main thread's answer would cost a read of /proc/self/maps.
    let got = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let got = libc::pthread_attr_getstack(&attr, &mut address, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        got
    };
    let page = page_size();
    (got == 0 && !address.is_null()).then(|| (address as usize + page - 1) & !(page - 1))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn stack_lowest_address() -> Option<usize> {
    None
}

/// The system's page size (4 KiB where it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system parameter.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|size| size.is_power_of_two()).unwrap_or(4096)
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
/// socket loses nothing even if the close turns into a reset. Once we shut down
/// writing, our FIN is one more byte here until it is acknowledged, and for good if a
/// reset comes first ([`TcpState`] says while the connection lasts).
pub fn unsent_bytes(stream: &TcpStream) -> io::Result<usize> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: the descriptor belongs to `stream`; TIOCOUTQ (SIOCOUTQ) writes one int.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(unsent).unwrap_or(0))
}

/// Where a TCP connection is in its life, as far as closing it is concerned (Linux's
/// `tcpi_state`, from `TCP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// Both sides may still send (`ESTABLISHED`, `CLOSE_WAIT`, or a state before them).
    Open,
    /// Our FIN is queued or sent and not yet acknowledged (`FIN_WAIT1`, `CLOSING`,
    /// `LAST_ACK`): [`unsent_bytes`] counts it as one byte.
    FinUnacknowledged,
    /// Our FIN was acknowledged (`FIN_WAIT2`, `TIME_WAIT`): everything was delivered.
    FinAcknowledged,
    /// The connection is over (`CLOSE`): closed both ways, or reset. Nothing more we
    /// wrote will be acknowledged.
    Over,
}

/// `stream`'s [`TcpState`].
pub fn tcp_state(stream: &TcpStream) -> io::Result<TcpState> {
    // SAFETY: tcp_info is plain integers.
    let info: libc::tcp_info = unsafe { socket_option(stream, libc::IPPROTO_TCP, libc::TCP_INFO) }?;
    // The kernel's numbering (include/net/tcp_states.h).
    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    const TIME_WAIT: u8 = 6;
    const CLOSE: u8 = 7;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    Ok(match info.tcpi_state {
        FIN_WAIT1 | CLOSING | LAST_ACK => TcpState::FinUnacknowledged,
        FIN_WAIT2 | TIME_WAIT => TcpState::FinAcknowledged,
        CLOSE => TcpState::Over,
        _ => TcpState::Open,
    })
}

/// Fixes `stream`'s kernel send buffer at `bytes` (`SO_SNDBUF`; Linux doubles the
/// figure for its bookkeeping and stops growing the buffer on its own).
pub fn set_send_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor belongs to `stream`; SO_SNDBUF reads one int from a
    // pointer valid for its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `stream`'s kernel send buffer size as the kernel reports it (`SO_SNDBUF`).
pub fn send_buffer(stream: &TcpStream) -> io::Result<usize> {
    // SAFETY: SO_SNDBUF is an int.
    let value: libc::c_int = unsafe { socket_option(stream, libc::SOL_SOCKET, libc::SO_SNDBUF) }?;
    Ok(usize::try_from(value).unwrap_or(0))
}

/// Reads socket option `name` at `level` of `stream` (`getsockopt`) as a `T`.
///
/// # Safety
/// `T` must be the type the kernel writes for that option, made of plain integers
/// (an `int`, `tcp_info`): any bytes, zeroes included, are a valid `T`.
unsafe fn socket_option<T: Copy>(stream: &TcpStream, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the descriptor belongs to `stream`; the kernel writes at most `len`
    // bytes to `value` and the length it wrote to `len`.
    let rc =
        unsafe { libc::getsockopt(stream.as_raw_fd(), level, name, value.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed first, so bytes the kernel did not write are zeroes, and the
    // caller vouches that any bytes are a valid `T`.
    Ok(unsafe { value.assume_init() })
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
    fn recv_append_appends_what_came_and_says_when_nothing_did() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buffer = b"ab".to_vec();
        let nothing = recv_append(&server, &mut buffer, 16, true).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(buffer, b"ab", "nothing appended");
        std::io::Write::write_all(&mut client, b"cdefgh").unwrap();
        assert_eq!(recv_append(&server, &mut buffer, 4, false).unwrap(), 4, "at most room bytes");
        assert_eq!(recv_append(&server, &mut buffer, 16, false).unwrap(), 2);
        assert_eq!(buffer, b"abcdefgh");
        drop(client);
        assert_eq!(recv_append(&server, &mut buffer, 16, false).unwrap(), 0, "closed");
        assert_eq!(buffer, b"abcdefgh");
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

    /// Pages of the calling thread's stack that are resident (`mincore`).
    fn resident_stack_pages() -> usize {
        let lowest = stack_lowest_address().expect("a std thread's stack");
        let here = 0u8;
        let page = page_size();
        let top = (std::ptr::addr_of!(here) as usize) & !(page - 1);
        let pages = (top - lowest) / page;
        let mut resident = vec![0u8; pages];
        // SAFETY: [lowest, top) is mapped (this thread's stack below this frame) and
        // `resident` has one byte per page of it.
        let rc = unsafe { libc::mincore(lowest as *mut libc::c_void, top - lowest, resident.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        resident.iter().filter(|&&byte| byte & 1 == 1).count()
    }

    /// Touches about `bytes` of stack below the caller, as a deep request path does.
    #[inline(never)]
    fn go_deep(bytes: usize) -> u8 {
        let mut frame = [0u8; 1024];
        std::hint::black_box(&mut frame);
        if bytes <= frame.len() { frame[7] } else { go_deep(bytes - frame.len()).wrapping_add(frame[3]) }
    }

    #[test]
    fn stack_pages_a_round_touched_are_given_back_once_idle() {
        let measured = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                assert!(!stack_to_give_back(), "nothing to give back before a round");
                go_deep(64 * 1024);
                note_round_served();
                let deep = resident_stack_pages();
                assert!(stack_to_give_back());
                give_unused_stack_back();
                let idle = resident_stack_pages();
                assert!(!stack_to_give_back(), "given back once");
                note_round_served();
                assert!(!stack_to_give_back(), "later rounds do not ask again");
                (deep, idle)
            })
            .unwrap()
            .join()
            .unwrap();
        let (deep, idle) = measured;
        assert!(deep >= 16, "64 KiB of frames touched at least 16 pages below, saw {deep}");
        assert!(idle <= 1, "at most the page of the margin stays, saw {idle}");
    }

    #[test]
    fn the_open_file_limit_is_readable() {
        assert!(open_file_limit().is_some_and(|limit| limit > 0));
    }
}
