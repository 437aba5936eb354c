//! The acceptor: takes connections, enforces the connection caps, and gives each
//! connection its own thread.
//!
//! It runs under the supervisor (a panic restarts it on the same listening socket) and
//! never blocks on a client: a connection over the caps is told so and closed without
//! waiting for it. Three limits apply (`state.rs`): `--max-connections` clients; beyond
//! it, connections from other nodes within their own budget (`--peer-connections` per
//! peer), which must then open with a handshake; and the sockets the open-file limit
//! leaves. Should `accept` still run out of descriptors, a spare one kept open for the
//! purpose is given up to accept the client and tell it, so nobody waits silently in
//! the listen queue.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crate::config::CONNECTION_STACK_SIZE;
use crate::logcap::{Limiter, warn_limited};
use crate::protocol::{ErrorKind, Reply};
use crate::socket;
use crate::state::{Seat, State};
use crate::{connection, worker};

/// Refusals at the caps, logged at most once a second with a count.
static REFUSED: Limiter = Limiter::new();
/// Failed `accept`s (out of descriptors), likewise.
static ACCEPT_FAILED: Limiter = Limiter::new();

/// Takes connections until shutdown.
pub(crate) fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    // Given up when `accept` runs out of descriptors, to take the client and tell it.
    let mut spare = File::open("/dev/null").ok();
    for incoming in listener.incoming() {
        if state.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(error) => {
                accept_failed(listener, state, &error, &mut spare);
                continue;
            }
        };
        if state.crash_acceptor.swap(false, Ordering::SeqCst) {
            panic!("DEBUG CRASH-ACCEPTOR requested");
        }
        let Some(seat) = state.admit() else {
            refuse(state, &stream);
            continue;
        };
        let counters = &state.counters;
        let id = counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let connection_state = state.clone();
        let spawned = thread::Builder::new()
            .name(format!("kv-conn-{id}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || serve_connection(stream, id, seat, connection_state));
        if let Err(error) = spawned {
            // The closure, and with it the stream, is dropped: the client sees a close.
            state.leave(seat);
            log::error!("cannot start a connection thread: {error}");
        }
    }
}

/// Tells a connection over the caps so, and closes it.
fn refuse(state: &State, stream: &TcpStream) {
    let counters = &state.counters;
    counters.rejected_connections.fetch_add(1, Ordering::Relaxed);
    warn_limited!(
        REFUSED,
        "refusing a connection: {} clients, {} peer connections, {} sockets open (limits {}, {}, {})",
        counters.connections.load(Ordering::Relaxed),
        counters.peer_connections.load(Ordering::Relaxed),
        counters.sockets.load(Ordering::Relaxed),
        state.config.max_connections,
        state.budget.peers,
        state.budget.sockets
    );
    socket::reject(stream, Reply::Error(ErrorKind::TooManyConnections));
}

/// `accept` failed. Out of descriptors, the spare one is given up for as long as it
/// takes to accept one client and tell it `ERROR too many connections`; otherwise the
/// loop backs off a little instead of spinning. Logged at most once a second.
#[cold]
fn accept_failed(listener: &TcpListener, state: &State, error: &io::Error, spare: &mut Option<File>) {
    warn_limited!(ACCEPT_FAILED, "accept failed: {error}");
    let out_of_descriptors = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_descriptors && spare.take().is_some() {
        if let Ok((stream, _)) = listener.accept() {
            refuse(state, &stream);
        }
        *spare = File::open("/dev/null").ok();
        return;
    }
    thread::sleep(Duration::from_millis(10));
}

/// Undoes a connection's registration when its thread ends, however it ends.
struct ConnectionGuard {
    id: u64,
    /// The limit it counts against now; the connection may move it once.
    seat: Cell<Seat>,
    state: Arc<State>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.open.lock().remove(&self.id);
        self.state.leave(self.seat.get());
    }
}

/// The body of a connection thread: register the socket for shutdown, serve it, and
/// contain a panic to this one connection.
fn serve_connection(stream: TcpStream, id: u64, seat: Seat, state: Arc<State>) {
    let guard = ConnectionGuard { id, seat: Cell::new(seat), state };
    log::debug!("connection {id} from {:?} opened", stream.peer_addr().ok());
    let stream = Arc::new(stream);
    guard.state.open.lock().insert(id, stream.clone());
    // Checked after registering: shutdown sets the flag before it walks `open`, so
    // either it saw this connection or this connection sees the flag.
    let inboxes = guard.state.inboxes.lock().clone();
    let Some(inboxes) = inboxes.filter(|_| !guard.state.shutting_down.load(Ordering::SeqCst)) else {
        socket::reject(&stream, Reply::Error(ErrorKind::ShuttingDown));
        return;
    };
    let served = panic::catch_unwind(AssertUnwindSafe(|| {
        connection::serve(stream, &guard.state, &guard.seat, inboxes)
    }));
    match served {
        Ok(Ok(())) => log::debug!("connection {id} closed"),
        Ok(Err(error)) => log::debug!("connection {id} closed: {error}"),
        // The connection's handle was dropped while unwinding and the guard drops
        // the last one: only this client sees a close.
        Err(payload) => log::error!("connection {id} crashed: {}", worker::panic_message(&*payload)),
    }
}
