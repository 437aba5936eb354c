//! SIGINT, SIGTERM and SIGHUP, turned into a graceful shutdown.
//!
//! The standard library has no signal API. Rather than add a crate, the binary blocks
//! the three signals in every thread (`sys::block_shutdown_signals`, first thing in
//! `main`) and one dedicated thread waits for them synchronously with `sigwait`. No
//! code runs in a signal handler, so there is nothing async-signal-safe to get wrong.
//! The first signal starts a graceful shutdown; a second one, for an operator who does
//! not want to wait, exits at once. SIGHUP is a shutdown like SIGTERM: kv has no
//! configuration to reload, and its default action (dying at once) would lose replies.

use std::io;
use std::thread;

use crate::server::Stopper;
use crate::sys;

pub use crate::sys::block_shutdown_signals;

/// Starts the thread that waits for SIGINT, SIGTERM or SIGHUP and asks `stopper` to stop the
/// server. [`block_shutdown_signals`] must have been called first.
pub fn stop_on_signals(stopper: Stopper) -> io::Result<()> {
    thread::Builder::new().name("kv-signals".into()).spawn(move || {
        let mut first = true;
        loop {
            let signal = match sys::wait_for_shutdown_signal() {
                Ok(signal) => signal,
                Err(error) => {
                    log::error!("sigwait failed: {error}");
                    return;
                }
            };
            let name = signal.name();
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
