//! SIGINT and SIGTERM, turned into a graceful shutdown.
//!
//! The standard library has no signal API. Rather than add a crate, this uses
//! `sigwait` from libc (already in the dependency tree through parking_lot): the two
//! signals are blocked in every thread, and one dedicated thread waits for them
//! synchronously. No code runs in a signal handler, so there is nothing
//! async-signal-safe to get wrong. The first signal starts a graceful shutdown; a
//! second one, for an operator who does not want to wait, exits at once.

use std::io;
use std::thread;

use crate::server::Stopper;

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts
/// afterwards. Call first thing in `main`, before any thread exists, so that no
/// thread but the waiter ever receives them.
pub fn block_shutdown_signals() -> io::Result<()> {
    // A shell starts background jobs with SIGINT ignored, and an ignored signal is
    // discarded rather than left pending for sigwait: restore the default action
    // first (while blocked, the default action never runs).
    for signal in [libc::SIGINT, libc::SIGTERM] {
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

/// Starts the thread that waits for SIGINT or SIGTERM and asks `stopper` to stop the
/// server. [`block_shutdown_signals`] must have been called first.
pub fn stop_on_signals(stopper: Stopper) -> io::Result<()> {
    thread::Builder::new().name("kv-signals".into()).spawn(move || {
        let set = shutdown_signals();
        let mut first = true;
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is a valid sigset_t and `signal` a valid place to write.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc != 0 {
                log::error!("sigwait failed: {}", io::Error::from_raw_os_error(rc));
                return;
            }
            let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
            if first {
                log::info!("{name} received: shutting down (send it again to exit at once)");
                stopper.stop();
                first = false;
            } else {
                log::warn!("{name} received again: exiting without waiting");
                std::process::exit(1);
            }
        }
    })?;
    Ok(())
}

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
