//! The real `kv` binary as a child process: a long-running server under a guard
//! ([`ChildServer`]: killed and reaped when dropped, its stderr drained and kept), and a
//! command run to completion with its output ([`run_to_end`]). Every wait on a child
//! is bounded by a deadline and polls its exit status; none is a bare sleep.
//!
//! Signalling a child (`kill`) has no std API, so this file calls libc and is exempt
//! from the crate's `unsafe_code` lint, as `src/sys.rs` is.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// The `kv` binary under test.
pub fn kv_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv"));
    // The start-up line is logged at info, the binary's default level; make sure a
    // RUST_LOG in the environment running the tests does not hide it.
    command.env_remove("RUST_LOG");
    command
}

/// `kv serve` as node `name` of the cluster in `file`: one worker, a 0.5 s peer connect
/// timeout, then `extra` flags (each flag may be given once).
pub fn cluster_node_command(file: &Path, name: &str, extra: &[&str]) -> Command {
    let mut command = kv_binary();
    command
        .args(["serve", "--workers", "1", "--node", name, "--peer-connect-timeout", "0.5"])
        .args(extra)
        .arg("--cluster")
        .arg(file);
    command
}

/// Starts `command` (from [`cluster_node_command`]) and waits until it accepts
/// connections at `addr`, where its cluster file says it listens.
pub fn start_cluster_node(command: Command, addr: SocketAddr) -> ChildServer {
    let node = ChildServer::start(command);
    assert_eq!(node.addr(), addr, "the node listens where the cluster file says");
    super::wait_until_accepting(addr);
    node
}

/// `kv serve --port 0` followed by `args`.
pub fn kv_serve(args: &[&str]) -> Command {
    let mut command = kv_binary();
    command.args(["serve", "--port", "0"]).args(args);
    command
}

/// [`kv_serve`] started as a [`ChildServer`].
pub fn start_kv_serve(args: &[&str]) -> ChildServer {
    ChildServer::start(kv_serve(args))
}

/// A `kv` server running as a child process. Killed and reaped when dropped.
pub struct ChildServer {
    child: Child,
    addr: SocketAddr,
    /// Every line the child has logged on stderr so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Drains the child's stderr to its end so the child never blocks on a full pipe.
    stderr_thread: Option<JoinHandle<()>>,
}

impl ChildServer {
    /// Starts `command` and waits for its `kv listening on ADDR` line on stderr.
    pub fn start(mut command: Command) -> ChildServer {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the kv binary");
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_lines = log.clone();
        let stderr_thread = thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split_once("kv listening on ").map(|(_, rest)| rest) {
                    let word = rest.split_whitespace().next().unwrap_or("");
                    if let (Some(tx), Ok(addr)) = (addr_tx.take(), word.parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
                log_lines.lock().unwrap().push(line);
            }
        });
        let mut server = ChildServer {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
            stderr_thread: Some(stderr_thread),
        };
        match addr_rx.recv_timeout(DEADLINE) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "kv never logged `kv listening on ADDR` (exit status so far: {status:?}); its log:\n{}",
                    server.log_text()
                );
            }
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id, e.g. to read its memory use from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines the child has logged so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|line| line.contains(needle)).cloned().collect()
    }

    /// Everything the child has logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends the child a real signal (SIGTERM, SIGINT, ...).
    pub fn signal(&mut self, signal: libc::c_int) {
        // Only while it has not been reaped: after that its pid may belong to another
        // process.
        assert!(self.child.try_wait().unwrap().is_none(), "the kv process has already exited");
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// The exit status if the child exits within `within`, polling; `None` if it is
    /// still running then.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child and waits until it is gone (what dropping it does, said aloud).
    pub fn kill(self) {
        drop(self);
    }

    /// The exit status if the child has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a finished child process left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `command` to completion with `stdin` as its input, killing it if it outlives
/// [`DEADLINE`].
pub fn run_to_end(command: Command, stdin: &[u8]) -> Finished {
    run_to_end_within(command, stdin, DEADLINE)
}

/// [`run_to_end`] with a deadline of `within` instead of [`DEADLINE`], for commands
/// that are allowed to run longer (`kv bench --duration`).
pub fn run_to_end_within(mut command: Command, stdin: &[u8], within: Duration) -> Finished {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the kv binary");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
        // Dropping `input` closes the child's stdin.
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the kv process did not exit within {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Finished { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}
