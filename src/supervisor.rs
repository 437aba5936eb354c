//! The supervisor: starts the workers and the acceptor, restarts them when they
//! crash, and gives up, as an OTP supervisor does, when they crash too often.
//!
//! ```text
//!                 supervisor thread
//!                 ├── worker 0 ... worker N-1   (restarted on the same partition and inbox)
//!                 └── acceptor                  (restarted on the same listening socket)
//!                        └── connection threads (not restarted: a panic closes that
//!                                               connection only)
//! ```
//!
//! It learns of a death at once, not by polling: every child runs inside
//! `catch_unwind` and its last act is a message on the supervisor's `exits` channel.
//! The supervisor is one `select!` loop over that channel and its control channel.
//!
//! A replacement worker gets the same [`WorkerShared`] (so the same partition and
//! counters) and a clone of the same inbox receiver (so batches queued behind the
//! crash are served), plus the batch the dead worker was in the middle of, which it
//! finishes first. What the partition looks like after a crash is explained in
//! `worker.rs` and `store/`: every request either happened or did not.
//!
//! A worker that returns because its inbox closed is shutting down cleanly and is
//! not restarted. Restart intensity follows OTP's defaults: more than `max_restarts`
//! crashes within `max_seconds` and the supervisor stops restarting, reports
//! [`StopReason::GaveUp`], and the process exits non-zero so that an outer supervisor
//! (systemd, a container runtime) can start it afresh.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::batch::Batch;
use crate::sys;
use crate::worker::{self, Outcome, WorkerShared};

/// Why a server stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Asked to (a signal, or [`ServerHandle::shutdown`](crate::ServerHandle::shutdown)).
    Requested,
    /// Children crashed more often than the restart intensity allows.
    GaveUp(String),
}

/// A child's last message to the supervisor.
#[derive(Debug)]
pub enum ChildExit {
    /// Worker `index` ended.
    Worker { index: usize, outcome: Outcome },
    /// The acceptor ended: `None` cleanly (shutdown), `Some(message)` by a panic.
    Acceptor { panic: Option<String> },
}

/// Starts an acceptor thread that reports its end on the given channel.
pub type AcceptorStart = Box<dyn Fn(Sender<ChildExit>) -> io::Result<JoinHandle<()>> + Send>;

/// Counts crashes in a sliding window, as OTP's restart intensity does: the crashes of
/// every child count together, and each is remembered with the child's name so that
/// giving up can say who crashed.
#[derive(Debug)]
pub struct RestartIntensity {
    max_restarts: u32,
    window: Duration,
    crashes: VecDeque<(Instant, String)>,
}

impl RestartIntensity {
    /// At most `max_restarts` restarts within `window`.
    pub fn new(max_restarts: u32, window: Duration) -> Self {
        RestartIntensity { max_restarts, window, crashes: VecDeque::new() }
    }

    /// Records a crash of `who` at `now`; false if restarting it would exceed the
    /// intensity.
    pub fn allow_restart(&mut self, now: Instant, who: &str) -> bool {
        while self.crashes.front().is_some_and(|(t, _)| now.duration_since(*t) >= self.window) {
            self.crashes.pop_front();
        }
        self.crashes.push_back((now, who.to_string()));
        self.crashes.len() <= self.max_restarts as usize
    }

    /// Why the intensity was exceeded, counting each child's crashes in the window:
    /// `worker 0 crashed 3 times and the acceptor once within 5s`.
    pub fn explain(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, who) in &self.crashes {
            match counts.iter_mut().find(|(name, _)| name == who) {
                Some((_, count)) => *count += 1,
                None => counts.push((who, 1)),
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(who, count)| match count {
                1 => format!("{who} once"),
                n => format!("{who} {n} times"),
            })
            .collect();
        let joined = match parts.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::from("nothing"),
        };
        format!(
            "{} crashes, more than the {} restarts allowed within {:?}: {joined}",
            self.crashes.len(),
            self.max_restarts,
            self.window
        )
    }
}

/// Messages to the supervisor from the server.
#[derive(Debug)]
pub enum Control {
    /// Inboxes are closed; wait (at most the given time) for the workers to finish
    /// and end.
    Stop(Duration),
}

struct WorkerChild {
    shared: Arc<WorkerShared>,
    inbox: Receiver<Batch>,
    thread: Option<JoinHandle<()>>,
    running: bool,
}

/// The supervisor's state; runs on its own thread (see [`Supervisor::spawn`]).
pub struct Supervisor {
    workers: Vec<WorkerChild>,
    acceptor_start: AcceptorStart,
    acceptor: Option<JoinHandle<()>>,
    intensity: RestartIntensity,
    exits_tx: Sender<ChildExit>,
    exits_rx: Receiver<ChildExit>,
    stop_tx: Sender<StopReason>,
    gave_up: bool,
}

impl Supervisor {
    /// Starts every worker (one per `(shared, inbox)` pair) and the acceptor, then the
    /// supervisor thread that watches them. `stop_tx` hears if the supervisor gives up.
    pub fn spawn(
        workers: Vec<(Arc<WorkerShared>, Receiver<Batch>)>,
        acceptor_start: AcceptorStart,
        intensity: RestartIntensity,
        stop_tx: Sender<StopReason>,
    ) -> io::Result<(Sender<Control>, JoinHandle<()>)> {
        let (exits_tx, exits_rx) = crossbeam_channel::unbounded();
        let mut supervisor = Supervisor {
            workers: workers
                .into_iter()
                .map(|(shared, inbox)| WorkerChild { shared, inbox, thread: None, running: false })
                .collect(),
            acceptor_start,
            acceptor: None,
            intensity,
            exits_tx,
            exits_rx,
            stop_tx,
            gave_up: false,
        };
        for index in 0..supervisor.workers.len() {
            supervisor.start_worker(index, None)?;
        }
        supervisor.acceptor = Some((supervisor.acceptor_start)(supervisor.exits_tx.clone())?);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let thread =
            thread::Builder::new().name("kv-supervisor".into()).spawn(move || supervisor.run(control_rx))?;
        Ok((control_tx, thread))
    }

    fn start_worker(&mut self, index: usize, pending: Option<Batch>) -> io::Result<()> {
        let child = &mut self.workers[index];
        let shared = child.shared.clone();
        let inbox = child.inbox.clone();
        let exits = self.exits_tx.clone();
        let thread = thread::Builder::new().name(format!("kv-worker-{index}")).spawn(move || {
            let outcome = worker::run(&shared, &inbox, pending);
            // If the supervisor is gone the server is going away; nobody to tell.
            let _ = exits.send(ChildExit::Worker { index, outcome });
        })?;
        child.thread = Some(thread);
        child.running = true;
        Ok(())
    }

    /// In place of a worker that will not be restarted: answers every batch in its
    /// inbox `ERROR worker crashed` until the inbox closes, then exits cleanly.
    fn start_drainer(&mut self, index: usize, unfinished: Option<Batch>) -> io::Result<()> {
        let child = &mut self.workers[index];
        let inbox = child.inbox.clone();
        let exits = self.exits_tx.clone();
        let thread = thread::Builder::new().name(format!("kv-drain-{index}")).spawn(move || {
            for mut batch in unfinished.into_iter().chain(inbox.iter()) {
                batch.answer_rest(worker::CRASHED);
                batch.send_back();
            }
            let _ = exits.send(ChildExit::Worker { index, outcome: Outcome::Clean });
        })?;
        child.thread = Some(thread);
        child.running = true;
        Ok(())
    }

    fn run(mut self, control: Receiver<Control>) {
        loop {
            select! {
                recv(self.exits_rx) -> exit => {
                    // We hold a sender ourselves, so the channel cannot close.
                    if let Ok(exit) = exit {
                        self.on_exit(exit);
                    }
                }
                recv(control) -> message => {
                    let wait = match message {
                        Ok(Control::Stop(wait)) => wait,
                        Err(_) => Duration::ZERO,
                    };
                    self.wait_for_workers(wait);
                    return;
                }
                // Memory freed by connections and subscribers that went quiet together
                // is given back within an interval (see sys::give_freed_memory_back).
                default(sys::TRIM_INTERVAL) => sys::trim_if_pending(),
            }
        }
    }

    fn on_exit(&mut self, exit: ChildExit) {
        match exit {
            ChildExit::Worker { index, outcome: Outcome::Clean } => {
                self.join_worker(index);
                log::debug!("worker {index} stopped");
            }
            ChildExit::Worker { index, outcome: Outcome::Crashed { message, unfinished } } => {
                let crashed_at = Instant::now();
                self.join_worker(index);
                log::error!("worker {index} crashed: {message}");
                if !self.may_restart(crashed_at, &format!("worker {index}")) {
                    // No worker will serve this partition again, but requests keep
                    // arriving until shutdown closes the inbox: answer them all
                    // rather than leave their clients waiting.
                    if let Err(error) = self.start_drainer(index, unfinished.map(|batch| *batch)) {
                        log::error!("cannot start a drainer for worker {index}: {error}");
                    }
                    return;
                }
                self.workers[index].shared.stats.restarts.fetch_add(1, Ordering::Relaxed);
                match self.start_worker(index, unfinished.map(|batch| *batch)) {
                    Ok(()) => log::info!("worker {index} restarted in {:?}", crashed_at.elapsed()),
                    Err(error) => self.give_up(format!("cannot restart worker {index}: {error}")),
                }
            }
            ChildExit::Acceptor { panic: None } => {
                if let Some(thread) = self.acceptor.take() {
                    let _ = thread.join();
                }
            }
            ChildExit::Acceptor { panic: Some(message) } => {
                let crashed_at = Instant::now();
                if let Some(thread) = self.acceptor.take() {
                    let _ = thread.join();
                }
                log::error!("acceptor crashed: {message}");
                if !self.may_restart(crashed_at, "the acceptor") {
                    return;
                }
                match (self.acceptor_start)(self.exits_tx.clone()) {
                    Ok(thread) => {
                        self.acceptor = Some(thread);
                        log::info!("acceptor restarted in {:?}", crashed_at.elapsed());
                    }
                    Err(error) => self.give_up(format!("cannot restart the acceptor: {error}")),
                }
            }
        }
    }

    fn join_worker(&mut self, index: usize) {
        let child = &mut self.workers[index];
        child.running = false;
        if let Some(thread) = child.thread.take() {
            // It has already sent its last message: this returns at once.
            let _ = thread.join();
        }
    }

    /// Applies the restart intensity; gives up (and says so) when it is exceeded.
    fn may_restart(&mut self, now: Instant, who: &str) -> bool {
        if self.gave_up {
            return false;
        }
        if self.intensity.allow_restart(now, who) {
            return true;
        }
        self.give_up(format!("{}; giving up", self.intensity.explain()));
        false
    }

    fn give_up(&mut self, why: String) {
        log::error!("supervisor: {why}");
        self.gave_up = true;
        let _ = self.stop_tx.send(StopReason::GaveUp(why));
    }

    /// Serves exits until every worker has stopped or `wait` has passed. Workers still
    /// serve (and are still restarted) meanwhile: what was queued gets answered.
    fn wait_for_workers(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.workers.iter().any(|w| w.running) {
            match self.exits_rx.recv_deadline(deadline) {
                Ok(exit) => self.on_exit(exit),
                Err(_) => {
                    log::warn!("workers still busy at shutdown; not waiting longer");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_restarts_within_the_window() {
        let mut intensity = RestartIntensity::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(intensity.allow_restart(t0, "worker 0"));
        assert!(intensity.allow_restart(t0 + Duration::from_secs(1), "worker 0"));
        assert!(intensity.allow_restart(t0 + Duration::from_secs(2), "worker 0"));
        assert!(!intensity.allow_restart(t0 + Duration::from_secs(3), "worker 0"));
    }

    #[test]
    fn crashes_older_than_the_window_do_not_count() {
        let mut intensity = RestartIntensity::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(intensity.allow_restart(t0 + Duration::from_secs(2 * i), "worker 1"), "crash {i}");
        }
    }

    #[test]
    fn zero_restarts_gives_up_at_the_first_crash() {
        let mut intensity = RestartIntensity::new(0, Duration::from_secs(5));
        assert!(!intensity.allow_restart(Instant::now(), "the acceptor"));
        assert_eq!(
            intensity.explain(),
            "1 crashes, more than the 0 restarts allowed within 5s: the acceptor once"
        );
    }

    #[test]
    fn the_give_up_message_counts_each_child_it_names() {
        let mut intensity = RestartIntensity::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for who in ["worker 0", "worker 1", "worker 0"] {
            assert!(intensity.allow_restart(t0, who));
        }
        assert!(!intensity.allow_restart(t0, "the acceptor"));
        assert_eq!(
            intensity.explain(),
            "4 crashes, more than the 3 restarts allowed within 5s: worker 0 2 times, worker 1 once and the acceptor once"
        );
    }
}
