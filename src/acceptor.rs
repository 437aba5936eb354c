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
//!
//! With `--resp-port` it takes connections for both doors on one thread, waiting on
//! both listeners at once; each connection is served by its door's loop
//! (`connection.rs` for text, `resp/` for RESP) under the same caps.

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
use crate::protocol::{Dialect, ErrorKind, Reply};
use crate::socket;
use crate::state::{Seat, State};
use crate::{connection, resp, sys, worker};

/// Which door a listener is: how its connections are served and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    Text,
    Resp,
}

impl Door {
    fn dialect(self) -> Dialect {
        match self {
            Door::Text => Dialect::Text,
            Door::Resp => Dialect::Resp2,
        }
    }
}

/// The listening sockets of a server: the text door's, and the RESP door's if any.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub text: TcpListener,
    pub resp: Option<TcpListener>,
}

/// Refusals at the caps, logged at most once a second with a count.
static REFUSED: Limiter = Limiter::new();
/// Failed `accept`s (out of descriptors), likewise.
static ACCEPT_FAILED: Limiter = Limiter::new();

/// Takes connections until shutdown.
pub(crate) fn accept_loop(listeners: &Listeners, state: &Arc<State>) {
    // Given up when `accept` runs out of descriptors, to take the client and tell it.
    let mut spare = File::open("/dev/null").ok();
    let Some(resp) = &listeners.resp else {
        for incoming in listeners.text.incoming() {
            if !take(&listeners.text, incoming, Door::Text, state, &mut spare) {
                break;
            }
        }
        return;
    };
    let both = [&listeners.text, resp];
    loop {
        let ready = match sys::wait_for_connections(&both) {
            Ok(ready) => ready,
            Err(error) => {
                log::error!("cannot wait for connections: {error}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        for ((listener, door), ready) in both.iter().zip([Door::Text, Door::Resp]).zip(ready) {
            if ready && !take(listener, listener.accept().map(|(s, _)| s), door, state, &mut spare) {
                return;
            }
        }
    }
}

/// Admits one accepted connection (or handles the failure to accept one); false once
/// the server is stopping.
fn take(
    listener: &TcpListener,
    incoming: io::Result<TcpStream>,
    door: Door,
    state: &Arc<State>,
    spare: &mut Option<File>,
) -> bool {
    if state.shutting_down.load(Ordering::SeqCst) {
        return false;
    }
    let stream = match incoming {
        Ok(stream) => stream,
        Err(error) => {
            accept_failed(listener, state, &error, spare, door);
            return true;
        }
    };
    if state.crash_acceptor.swap(false, Ordering::SeqCst) {
        panic!("DEBUG CRASH-ACCEPTOR requested");
    }
    let Some(seat) = state.admit() else {
        refuse(state, &stream, door);
        return true;
    };
    spawn_connection(stream, seat, door, state);
    true
}

/// Gives an admitted connection its thread.
fn spawn_connection(stream: TcpStream, seat: Seat, door: Door, state: &Arc<State>) {
    let counters = &state.counters;
    let id = counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let connection_state = state.clone();
    let spawned = thread::Builder::new()
        .name(format!("kv-conn-{id}"))
        .stack_size(CONNECTION_STACK_SIZE)
        .spawn(move || serve_connection(stream, id, seat, door, connection_state));
    if let Err(error) = spawned {
        // The closure, and with it the stream, is dropped: the client sees a close.
        state.leave(seat);
        log::error!("cannot start a connection thread: {error}");
    }
}

/// Tells a connection over the caps so, and closes it.
fn refuse(state: &State, stream: &TcpStream, door: Door) {
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
    socket::reject_in(stream, Reply::Error(ErrorKind::TooManyConnections), door.dialect());
}

/// `accept` failed. Out of descriptors, the spare one is given up for as long as it
/// takes to accept one client and tell it `ERROR too many connections`; otherwise the
/// loop backs off a little instead of spinning. Logged at most once a second.
#[cold]
fn accept_failed(
    listener: &TcpListener,
    state: &State,
    error: &io::Error,
    spare: &mut Option<File>,
    door: Door,
) {
    warn_limited!(ACCEPT_FAILED, "accept failed: {error}");
    let out_of_descriptors = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_descriptors && spare.take().is_some() {
        if let Ok((stream, _)) = listener.accept() {
            refuse(state, &stream, door);
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
fn serve_connection(stream: TcpStream, id: u64, seat: Seat, door: Door, state: Arc<State>) {
    let guard = ConnectionGuard { id, seat: Cell::new(seat), state };
    log::debug!("connection {id} from {:?} opened", stream.peer_addr().ok());
    let stream = Arc::new(stream);
    guard.state.open.lock().insert(id, stream.clone());
    // Checked after registering: shutdown sets the flag before it walks `open`, so
    // either it saw this connection or this connection sees the flag.
    let inboxes = guard.state.inboxes.lock().clone();
    let Some(inboxes) = inboxes.filter(|_| !guard.state.shutting_down.load(Ordering::SeqCst)) else {
        socket::reject_in(&stream, Reply::Error(ErrorKind::ShuttingDown), door.dialect());
        return;
    };
    let served = panic::catch_unwind(AssertUnwindSafe(|| match door {
        Door::Text => connection::serve(stream, &guard.state, &guard.seat, inboxes),
        Door::Resp => resp::serve(stream, &guard.state, id, inboxes),
    }));
    match served {
        Ok(Ok(())) => log::debug!("connection {id} closed"),
        Ok(Err(error)) => log::debug!("connection {id} closed: {error}"),
        // The connection's handle was dropped while unwinding and the guard drops
        // the last one: only this client sees a close.
        Err(payload) => log::error!("connection {id} crashed: {}", worker::panic_message(&*payload)),
    }
}
