//! SIGINT and SIGTERM, turned into a graceful shutdown.
//!
//! The standard library has no signal API. Rather than add a crate, the binary blocks
//! the two signals in every thread (`sys::block_shutdown_signals`, first thing in
//! `main`) and one dedicated thread waits for them synchronously with `sigwait`. No
//! code runs in a signal handler, so there is nothing async-signal-safe to get wrong.
//! The first signal starts a graceful shutdown; a second one, for an operator who does
//! not want to wait, exits at once.

use std::io;
use std::thread;

use crate::server::Stopper;
use crate::sys::{self, ShutdownSignal};

pub use crate::sys::block_shutdown_signals;

/// Starts the thread that waits for SIGINT or SIGTERM and asks `stopper` to stop the
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
            let name = if signal == ShutdownSignal::Interrupt { "SIGINT" } else { "SIGTERM" };
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
