//! Closing every client connection at shutdown without losing a reply: the server's
//! side of `--shutdown-grace`.
//!
//! The promise (docs/PROTOCOL.md, "Shutdown"): every request kv read before the stop is
//! answered, and the answer reaches the client's kernel before the socket closes,
//! within the grace; requests read after the stop get `ERROR shutting down`. The
//! connection threads keep it (`connection.rs`, closing through `socket.rs`); this file
//! wakes them, waits for them, and at the end of the grace closes the sockets of
//! clients that still have not read their replies, then logs how many replies that
//! lost. It also owns what both doors do with requests read after the stop
//! ([`refuse_waiting`]) and with the replies a closed connection never delivered
//! ([`count_lost_replies`]). It starts no thread and owns no state of its own.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::door::Reader;
use crate::protocol::{ErrorKind, Reply};
use crate::round::Round;
use crate::socket::{self, Ledger};
use crate::state::State;

/// Most request bytes a connection reads after the stop to answer them `shutting
/// down`: a client that keeps sending cannot hold the shutdown for the whole grace.
/// Beyond it the connection closes as soon as its replies are taken.
const REFUSE_AT_STOP_BYTES: usize = 1024 * 1024;

/// Shutdown began before this read: every whole request `reader` holds is answered
/// `shutting down` (in the round's dialect), and so is every one still waiting in the
/// socket, up to [`REFUSE_AT_STOP_BYTES`] and `deadline`. The replies are written as
/// they go; returns how many requests were refused. The caller then closes.
pub(crate) fn refuse_waiting(
    reader: &mut impl Reader,
    round: &mut Round<'_>,
    stream: &TcpStream,
    deadline: Instant,
) -> io::Result<u64> {
    let (mut refused, mut bytes) = (0, 0);
    loop {
        while reader.take_request() {
            refused += 1;
            round.push_local(Reply::Error(ErrorKind::ShuttingDown));
        }
        round.flush();
        round.write_output(&mut &*stream)?;
        if bytes >= REFUSE_AT_STOP_BYTES || Instant::now() >= deadline {
            return Ok(refused);
        }
        // Shutdown stopped the socket's reading: this never blocks, and ends at what
        // the socket holds.
        match reader.fill_from(&mut &*stream) {
            Ok(0) => return Ok(refused),
            Ok(n) => bytes += n,
            Err(error) if socket::is_timeout(&error) => return Ok(refused),
            Err(error) => return Err(error),
        }
    }
}

/// A connection closed while the server stops: logs and counts (STATS `replies_lost`)
/// the replies its client never received, by the `ledger` of what it wrote.
/// `undelivered` is what `socket::close_after_last_reply` returned if the connection
/// closed through it; otherwise the socket is asked now. `peer` was taken when the
/// connection started, since a reset socket no longer knows it.
#[cold]
pub(crate) fn count_lost_replies(
    state: &State,
    ledger: Ledger,
    stream: &TcpStream,
    undelivered: Option<usize>,
    peer: Option<SocketAddr>,
) {
    let unsent = undelivered.unwrap_or_else(|| socket::undelivered(stream, false).bytes);
    let lost = ledger.lost(unsent);
    if lost > 0 {
        log::warn!(
            "closed the connection from {peer:?} at shutdown: about {lost} replies ({unsent} bytes) not received"
        );
        state.counters.replies_lost.fetch_add(lost, Ordering::SeqCst);
    }
}

/// How long, after the grace, the connections closed by force get to notice and
/// count what they lost.
const AFTER_GRACE: Duration = Duration::from_secs(1);

/// How often the wait looks at the count of open connections.
const POLL: Duration = Duration::from_millis(2);

/// Wakes every connection, waits for them to answer what they read and close, and
/// closes the rest at the end of the grace (`state.stop_deadline()`).
pub(crate) fn close_connections(state: &State) {
    // Wake every connection blocked in read(): its reads now return what the socket
    // holds, then end of stream, and it answers and closes (Connection::serve).
    for stream in state.open.lock().values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    let deadline = state.stop_deadline();
    if !wait_for_connections(state, deadline) {
        let open = state.open.lock();
        log::warn!(
            "the shutdown grace ({:?}) is over: closing {} connection(s) whose clients have not read their \
             replies",
            state.config.shutdown_grace,
            open.len()
        );
        // Their threads are blocked writing, or waiting for the client to take the
        // last replies: both end now, and count what was lost.
        for stream in open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        drop(open);
        if !wait_for_connections(state, Instant::now() + AFTER_GRACE) {
            count_stuck_connections(state);
        }
    }
    match state.counters.replies_lost.load(Ordering::SeqCst) {
        0 => log::info!("every request read before the stop was answered"),
        lost => log::warn!("about {lost} replies to requests read before the stop were lost"),
    }
}

/// Counts the connections still open after the grace and [`AFTER_GRACE`]: closing
/// their sockets did not end them, because they wait on something else than their
/// client, such as another node's reply to a forwarded request (`--peer-timeout` may be
/// longer than the grace). The process exits under them, so each loses at least the
/// reply it waits for; counted as one each rather than claiming every request was
/// answered.
#[cold]
fn count_stuck_connections(state: &State) {
    let counters = &state.counters;
    let stuck =
        counters.connections.load(Ordering::SeqCst) + counters.peer_connections.load(Ordering::SeqCst);
    log::warn!(
        "{stuck} connection(s) still waiting on a reply (from a worker or another node) after the grace: \
         their replies are lost"
    );
    counters.replies_lost.fetch_add(stuck as u64, Ordering::SeqCst);
}

/// Waits until no connection is open or `deadline` passes; true if none is open.
fn wait_for_connections(state: &State, deadline: Instant) -> bool {
    loop {
        let counters = &state.counters;
        // Connections from other nodes too: their clients wait on these replies.
        if counters.connections.load(Ordering::SeqCst) + counters.peer_connections.load(Ordering::SeqCst) == 0
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}
