//! The acceptor: takes connections, enforces the connection cap, and gives each
//! connection its own thread.
//!
//! It runs under the supervisor (a panic restarts it on the same listening socket) and
//! never blocks on a client: a connection over the cap is told so and closed without
//! waiting for it.

use std::net::{TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crate::config::CONNECTION_STACK_SIZE;
use crate::protocol::{ErrorKind, Reply};
use crate::socket;
use crate::state::State;
use crate::{connection, worker};

/// Takes connections until shutdown.
pub(crate) fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for incoming in listener.incoming() {
        if state.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(error) => {
                // Typically out of file descriptors: back off instead of spinning.
                log::warn!("accept failed: {error}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if state.crash_acceptor.swap(false, Ordering::SeqCst) {
            panic!("DEBUG CRASH-ACCEPTOR requested");
        }
        let counters = &state.counters;
        let open = counters.connections.fetch_add(1, Ordering::SeqCst);
        if open >= state.config.max_connections {
            counters.connections.fetch_sub(1, Ordering::SeqCst);
            counters.rejected_connections.fetch_add(1, Ordering::Relaxed);
            log::warn!("refusing a connection: {open} open, the limit");
            socket::reject(&stream, Reply::Error(ErrorKind::TooManyConnections));
            continue;
        }
        let id = counters.connections_total.fetch_add(1, Ordering::Relaxed);
        let connection_state = state.clone();
        let spawned = thread::Builder::new()
            .name(format!("kv-conn-{id}"))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || serve_connection(stream, id, connection_state));
        if let Err(error) = spawned {
            // The closure, and with it the stream, is dropped: the client sees a close.
            counters.connections.fetch_sub(1, Ordering::SeqCst);
            log::error!("cannot start a connection thread: {error}");
        }
    }
}

/// Undoes a connection's registration when its thread ends, however it ends.
struct ConnectionGuard {
    id: u64,
    state: Arc<State>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.open.lock().remove(&self.id);
        self.state.counters.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The body of a connection thread: register the socket for shutdown, serve it, and
/// contain a panic to this one connection.
fn serve_connection(stream: TcpStream, id: u64, state: Arc<State>) {
    let guard = ConnectionGuard { id, state };
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
    let served = panic::catch_unwind(AssertUnwindSafe(|| connection::serve(stream, &guard.state, inboxes)));
    match served {
        Ok(Ok(())) => log::debug!("connection {id} closed"),
        Ok(Err(error)) => log::debug!("connection {id} closed: {error}"),
        // The connection's handle was dropped while unwinding and the guard drops
        // the last one: only this client sees a close.
        Err(payload) => log::error!("connection {id} crashed: {}", worker::panic_message(&*payload)),
    }
}
