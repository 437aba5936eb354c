//! Forwarding: a connection's requests for buckets other nodes own, and their replies.
//!
//! A connection thread hands such requests to its [`Forwarder`], one [`Exchange`] per
//! peer per round. At the end of the round the forwarder writes each peer's requests
//! with ONE write on a pooled connection (`peer/`), then reads the replies back, and the
//! connection relays them unchanged, in request order with its local replies. The
//! worker batches of the same round are in flight meanwhile, so local and remote work
//! overlap.
//!
//! Between nodes, after one handshake line (`protocol/hello.rs`), each request is a
//! frame: the dialect its reply is to be written in (the asking client's: text or
//! RESP), then the [`Command`] encoded (`protocol/request.rs`). Each reply comes back
//! as `[u32 LE length][the reply's bytes]`, ready to relay. Frames carry any bytes, so
//! a RESP value with a line end in it crosses nodes intact. docs/CLUSTER.md tells the
//! whole story.
//!
//! # Faults: at most once
//! A forwarded request is written to a peer at most once. A pooled connection the peer
//! closed while it sat idle (it restarted, or is stopping) is seen to be closed before
//! anything is written to it and replaced; after the first byte of an exchange has
//! left, nothing of it is sent again, on that connection or another. Resending after
//! that point is what applied writes twice: the peer may have applied the batch and
//! lost only the reply, and a resend then overwrites later writes of other clients.
//!
//! A peer that refuses, resets, closes or does not answer within the request timeout
//! fails the whole exchange: every request of it not yet answered gets an error line,
//! and the client connection carries on; the failure counts towards marking the peer
//! down (`peer/`). The error line says what is known: `ERROR peer <name> unavailable`
//! when the request never reached the peer (not connected, marked down, turned away
//! unread) or is a read, `ERROR peer <name> unavailable: outcome unknown` for a write
//! that may have been applied. docs/CLUSTER.md argues this for users.

use crate::peer::{Deadline, Failure, HelloReply, Peer, PeerConn, Peers};
use crate::protocol::{self, Command, Dialect};

/// Most request bytes sent to a peer in one exchange; a round with more for one peer
/// is split.
///
/// The forwarder writes a whole exchange before it reads any reply. If the requests did
/// not fit in the kernel's socket buffers, a peer blocked on writing replies we are not
/// yet reading would stop reading requests, and both sides would wait for the timeout.
/// Socket buffers are at least this large by default on the systems we run on. (An
/// exchange may still be one longer line on its own: the peer reads a whole line before
/// it answers it, so one line cannot deadlock.)
pub const MAX_EXCHANGE_BYTES: usize = 16 * 1024;

/// One round's requests for one peer and, after [`Forwarder::exchange`], their replies.
#[derive(Debug, Default)]
struct Exchange {
    /// Request frames: the dialect's byte, then the encoded command.
    requests: Vec<u8>,
    /// For each request, whether it is a write (what a failure answers depends on it).
    writes: Vec<bool>,
    /// The dialect every reply of the exchange is written in: the asking connection's.
    dialect: Dialect,
    /// The replies as read (frame prefixes and the handshake's line included), and
    /// where each reply's bytes are in it, in request order.
    replies: Vec<u8>,
    spans: Vec<(usize, usize)>,
    /// How many replies have been taken by [`Forwarder::next_reply`].
    cursor: usize,
    /// The connection the requests went out on, and when this peer's time is up,
    /// until the replies are in.
    conn: Option<(PeerConn, Deadline)>,
}

impl Exchange {
    fn push(&mut self, command: &Command<'_>, dialect: Dialect) {
        self.dialect = dialect;
        protocol::push_peer_frame(command, dialect, &mut self.requests);
        self.writes.push(command.is_write());
    }

    fn clear(&mut self) {
        self.requests.clear();
        self.writes.clear();
        self.replies.clear();
        self.spans.clear();
        self.cursor = 0;
    }

    /// Appends one reply the exchange makes up itself (a failure's).
    fn push_own_reply(&mut self, reply: &[u8]) {
        let start = self.replies.len();
        self.replies.extend_from_slice(reply);
        self.spans.push((start, self.replies.len()));
    }

    /// Sends the requests on a pooled or new connection. A pooled connection the peer
    /// closed while it sat idle is replaced before anything is written to it; once a
    /// byte has been written, the requests are never sent again (module docs).
    fn send(&mut self, peer: &Peer, deadline: Deadline) -> Result<(), (Failure, Sent)> {
        let mut conn = peer.checkout(deadline).map_err(|failure| (failure, Sent::Nothing))?;
        if conn.reused
            && conn.closed_while_idle()
            && let Err(failure) = peer.replace(&mut conn, deadline)
        {
            peer.discard(conn);
            return Err((failure, Sent::Nothing));
        }
        match conn.send(&self.requests, deadline) {
            Ok(()) => {
                self.conn = Some((conn, deadline));
                Ok(())
            }
            Err(failure) => {
                let sent = if conn.wrote_any() { Sent::Maybe } else { Sent::Nothing };
                peer.discard(conn);
                Err((failure, sent))
            }
        }
    }

    /// Reads the replies. Never sends again: the requests may have been applied even
    /// when no reply came back, so the ones left unanswered are failed (see
    /// [`Exchange::fail`]).
    fn receive(&mut self, peer: &Peer, mut conn: PeerConn, deadline: Deadline) {
        let result = conn.read_replies(&mut self.replies, &mut self.spans, self.writes.len(), deadline);
        match result {
            Ok(HelloReply::Accepted) => {
                peer.succeeded();
                peer.checkin(conn);
            }
            Ok(HelloReply::Refused(line)) => {
                // The peer refused the handshake and so every request behind it: each
                // gets its refusal, and the connection is not kept.
                peer.discard(conn);
                self.relay_refusal(peer, &line);
            }
            Err(failure) => {
                peer.discard(conn);
                // A peer that turned the connection away read none of it.
                let sent = if matches!(failure, Failure::Full | Failure::Rejected(_)) {
                    Sent::Nothing
                } else {
                    Sent::Maybe
                };
                self.fail(peer, &failure, sent);
            }
        }
    }

    /// Answers every request not answered yet, and counts the failure towards marking
    /// the peer down. If the requests may have reached the peer, a write among them
    /// may have been applied: it gets `ERROR peer <name> unavailable: outcome
    /// unknown`; everything else gets `ERROR peer <name> unavailable`.
    fn fail(&mut self, peer: &Peer, failure: &Failure, sent: Sent) {
        if let Failure::Refused(line) = failure {
            self.relay_refusal(peer, line);
            return;
        }
        let missing = self.answer_unavailable(peer, sent);
        peer.log_failure(failure, missing);
        peer.count_failure(failure);
    }

    /// The peer refused the handshake before any request left (node authentication):
    /// every request gets the refusal line, as with a routing refusal, and the peer is
    /// not marked down for it (its refusals are answers, and say why).
    fn relay_refusal(&mut self, peer: &Peer, line: &[u8]) {
        let missing = self.writes.len() - self.spans.len();
        let mut reply = Vec::new();
        protocol::relay_error_line(line, self.dialect, &mut reply);
        for _ in 0..missing {
            self.push_own_reply(&reply);
        }
        peer.count_errors(missing);
        peer.log_refusal(line);
    }

    /// Answers every request not answered yet as [`Exchange::fail`] says; returns how
    /// many that was.
    fn answer_unavailable(&mut self, peer: &Peer, sent: Sent) -> usize {
        let answered = self.spans.len();
        let missing = self.writes.len() - answered;
        let mut reply = Vec::new();
        for i in answered..self.writes.len() {
            reply.clear();
            let unknown = self.writes[i] && sent == Sent::Maybe;
            let answer = if unknown { peer.outcome_unknown() } else { peer.unavailable() };
            answer.write(self.dialect, &mut reply);
            self.push_own_reply(&reply);
        }
        peer.count_errors(missing);
        missing
    }
}

/// Whether an exchange's requests may have reached the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not one byte left this node, or the peer turned the connection away unread:
    /// nothing was applied.
    Nothing,
    /// Some bytes left: the peer may have applied any of the requests.
    Maybe,
}

/// A connection thread's forwarding state: one [`Exchange`] per peer, reused for the
/// connection's life.
#[derive(Debug)]
pub struct Forwarder<'p> {
    peers: &'p Peers,
    exchanges: Vec<Exchange>,
    /// Some exchange holds requests.
    pending: bool,
}

impl<'p> Forwarder<'p> {
    /// A forwarder to `peers`. Allocates nothing when there are none.
    pub fn new(peers: &'p Peers) -> Self {
        Forwarder { peers, exchanges: peers.iter().map(|_| Exchange::default()).collect(), pending: false }
    }

    /// True if a request of about `len` bytes for `peer` should wait for the next
    /// round: its exchange already holds requests and would pass
    /// [`MAX_EXCHANGE_BYTES`].
    #[inline]
    pub fn is_full_for(&self, peer: usize, len: usize) -> bool {
        let requests = &self.exchanges[peer].requests;
        !requests.is_empty() && requests.len() + len > MAX_EXCHANGE_BYTES
    }

    /// Frees reply buffers a burst grew past `keep` bytes (they are empty between
    /// rounds). Returns true if any was freed.
    pub fn release_large_buffers(&mut self, keep: usize) -> bool {
        let mut released = false;
        for exchange in &mut self.exchanges {
            if exchange.replies.capacity() > keep {
                exchange.replies = Vec::new();
                released = true;
            }
        }
        released
    }

    /// Queues one request for `peer`, its reply to be written in `dialect`.
    #[inline]
    pub fn push(&mut self, peer: usize, command: &Command<'_>, dialect: Dialect) {
        self.exchanges[peer].push(command, dialect);
        self.pending = true;
    }

    /// Sends every queued request and reads every reply: first one write per peer, then
    /// the replies peer by peer. Failures become `ERROR peer <name> unavailable`
    /// replies; this never fails as a whole.
    ///
    /// Each peer has the request timeout from when its turn to be sent to comes. With
    /// one deadline for the round, a peer that stalled the send (a full pool, a connect
    /// that hangs, a large request it does not read) used up the time of the peers
    /// after it: their requests failed unsent, and each such round counted a failure
    /// against them, so one stalled node got healthy ones marked down. A round waits
    /// longer when several peers stall; replies are read in the order sent, and a peer
    /// whose time passed while another was waited on still has the replies it already
    /// sent read ([`PeerConn::read_more`]).
    pub fn exchange(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        for (peer, exchange) in self.peers.iter().zip(&mut self.exchanges) {
            if exchange.writes.is_empty() {
                continue;
            }
            peer.count_forwarded(exchange.writes.len());
            if !peer.is_up() {
                // Down: fail at once; its prober will say when it is back.
                exchange.answer_unavailable(peer, Sent::Nothing);
                continue;
            }
            if let Err((failure, sent)) = exchange.send(peer, Deadline::after(self.peers.timeout())) {
                exchange.fail(peer, &failure, sent);
            }
        }
        for (peer, exchange) in self.peers.iter().zip(&mut self.exchanges) {
            if let Some((conn, deadline)) = exchange.conn.take() {
                exchange.receive(peer, conn, deadline);
            }
        }
    }

    /// The next reply from `peer` of this round, in request order, appended to `out`.
    #[inline]
    pub fn next_reply(&mut self, peer: usize, out: &mut Vec<u8>) {
        let exchange = &mut self.exchanges[peer];
        let index = exchange.cursor;
        exchange.cursor += 1;
        match exchange.spans.get(index) {
            Some(&(start, end)) => out.extend_from_slice(&exchange.replies[start..end]),
            // Not reached: every request of an exchange gets a reply or a failure line.
            None => self.peers.get(peer).unavailable().write(exchange.dialect, out),
        }
    }

    /// Empties every exchange for the next round, keeping buffers.
    pub fn clear(&mut self) {
        for exchange in &mut self.exchanges {
            if !exchange.writes.is_empty() {
                exchange.clear();
            }
        }
    }
}

impl Drop for Forwarder<'_> {
    fn drop(&mut self) {
        // Only a panic between send and receive leaves a connection here; its pool slot
        // must still be given back.
        for (peer, exchange) in self.peers.iter().zip(&mut self.exchanges) {
            if let Some((conn, _)) = exchange.conn.take() {
                peer.discard(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;
    use crate::peer::DOWN_AFTER_FAILURES;
    use crate::protocol::Stats;
    use crate::router::Cluster;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    /// Queues the request `line` for the one peer, answered in the text dialect.
    fn push(forwarder: &mut Forwarder<'_>, line: &[u8]) {
        forwarder.push(0, &protocol::parse(line), Dialect::Text);
    }

    /// `replies`, each as a reply frame.
    fn frames(replies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for reply in replies {
            let start = protocol::begin_reply_frame(&mut out);
            out.extend_from_slice(reply);
            protocol::end_reply_frame(&mut out, start);
        }
        out
    }

    /// Reads a handshake line (if `hello`) and `count` request frames from `stream`;
    /// returns them as text, a line each, for comparing.
    fn read_requests(stream: &mut TcpStream, hello: bool, count: usize) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let hello_len = if hello { protocol::line_len(&received) } else { Some(0) };
            if let Some(mut at) = hello_len {
                let mut text = received[..at].to_vec();
                let mut got = 0;
                while let protocol::PeerFrame::Request(_, command, used) =
                    protocol::peer_frame(&received[at..])
                {
                    text.extend_from_slice(&line_of(&command));
                    at += used;
                    got += 1;
                }
                if got == count {
                    return text;
                }
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buf[..n]);
        }
    }

    /// A request as the text line that would have asked it.
    fn line_of(command: &Command<'_>) -> Vec<u8> {
        let words: Vec<&[u8]> = match *command {
            Command::Put { bucket, key, value } => vec![b"PUT", bucket, key, value],
            Command::Get { bucket, key } => vec![b"GET", bucket, key],
            Command::Delete { bucket, key } => vec![b"DELETE", bucket, key],
            Command::Create { bucket } => vec![b"CREATE", bucket],
            Command::Ping => vec![b"PING"],
            _ => vec![b"?"],
        };
        [words.join(&b' '), b"\n".to_vec()].concat()
    }

    /// The next reply from `peer`, as bytes.
    fn next(forwarder: &mut Forwarder<'_>, peer: usize) -> Vec<u8> {
        let mut out = Vec::new();
        forwarder.next_reply(peer, &mut out);
        out
    }

    fn one_peer(addr: SocketAddr, config: PeerConfig) -> Peers {
        let text = format!("me 127.0.0.1:1 a\nthem {addr} b\n");
        let cluster = Cluster::parse("test", &text).unwrap();
        Peers::start(&cluster, 0, &config, None).unwrap()
    }

    /// A fake peer: accepts one connection, reads the handshake and two requests,
    /// answers `replies` (the handshake's line, then reply frames).
    fn fake_peer(replies: Vec<u8>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let received = read_requests(&mut stream, true, 2);
            stream.write_all(&replies).unwrap();
            received
        });
        (addr, thread)
    }

    #[test]
    fn an_exchange_is_one_handshake_and_the_requests_then_the_replies() {
        let (addr, fake) = fake_peer([&b"OK\r\n"[..], &frames(&[b"OK\r\n", b"v\r\nOK\r\n"])].concat());
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        push(&mut forwarder, b"PUT b k v");
        push(&mut forwarder, b"GET b k");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"OK\r\n");
        assert_eq!(next(&mut forwarder, 0), b"v\r\nOK\r\n");
        let received = fake.join().unwrap();
        assert_eq!(received, b"KV-PEER-HELLO 3 me them\nPUT b k v\nGET b k\n");
        let peer = peers.get(0);
        assert_eq!(peer.forwarded(), 2);
        assert_eq!(peer.errors(), 0);
        assert_eq!(peers.get(0).pool_state().0, 1, "the connection is kept for reuse");
    }

    #[test]
    fn a_pooled_connection_that_died_while_idle_is_replaced_without_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let fake = thread::spawn(move || {
            // First connection: one exchange, then the peer "restarts" and drops it.
            let (mut first, _) = listener.accept().unwrap();
            assert_eq!(read_requests(&mut first, true, 1), b"KV-PEER-HELLO 3 me them\nCREATE b\n");
            first.write_all(&[&b"OK\r\n"[..], &frames(&[b"OK\r\n"])].concat()).unwrap();
            drop(first);
            closed_tx.send(()).unwrap();
            // The forwarder comes back on a new connection, with a new handshake.
            let (mut second, _) = listener.accept().unwrap();
            assert_eq!(read_requests(&mut second, true, 1), b"KV-PEER-HELLO 3 me them\nGET b k\n");
            second.write_all(&[&b"OK\r\n"[..], &frames(&[b"v\r\nOK\r\n"])].concat()).unwrap();
            let third = read_requests(&mut second, false, 1);
            second.write_all(&frames(&[b"PONG\r\n"])).unwrap();
            third
        });
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        push(&mut forwarder, b"CREATE b");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"OK\r\n");
        forwarder.clear();
        closed_rx.recv().unwrap();
        push(&mut forwarder, b"GET b k");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"v\r\nOK\r\n");
        forwarder.clear();
        let peer = peers.get(0);
        assert_eq!(peer.errors(), 0);
        assert_eq!(peer.pool_state().2, 0, "no failure counted");
        assert_eq!(peer.pool_state().1, 1, "the dead connection's slot was reused");
        // The new connection went back to the pool and carries the next exchange.
        push(&mut forwarder, b"PING");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"PONG\r\n");
        assert_eq!(fake.join().unwrap(), b"PING\n", "no new handshake: the same connection");
    }

    #[test]
    fn a_refused_handshake_relays_the_peers_error_lines() {
        let (addr, fake) = fake_peer(b"ERROR routing mismatch: this is node x, not them\r\n".to_vec());
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        push(&mut forwarder, b"CREATE b");
        push(&mut forwarder, b"GET b k");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"ERROR routing mismatch: this is node x, not them\r\n");
        assert_eq!(next(&mut forwarder, 0), b"ERROR routing mismatch: this is node x, not them\r\n");
        fake.join().unwrap();
        assert_eq!(peers.get(0).pool_state().1, 0, "a refused connection is not kept");
    }

    #[test]
    fn a_silent_peer_times_out_and_is_marked_down_after_repeated_failures() {
        // Accepts (the kernel does, via the backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = PeerConfig { timeout: Duration::from_millis(50), ..PeerConfig::default() };
        let peers = one_peer(addr, config);
        let mut forwarder = Forwarder::new(&peers);
        for round in 1..=DOWN_AFTER_FAILURES {
            push(&mut forwarder, b"GET b k");
            forwarder.exchange();
            assert_eq!(next(&mut forwarder, 0), b"ERROR peer them unavailable\r\n", "round {round}");
            forwarder.clear();
        }
        let peer = peers.get(0);
        assert!(!peer.is_up());
        assert_eq!(peer.errors(), u64::from(DOWN_AFTER_FAILURES));
        let mut stats = Stats::default();
        peers.add_stats(&mut stats);
        assert_eq!(stats.get("peer.them.state"), Some("down"));
        assert_eq!(stats.get("peer_errors_total"), Some("3"));
        drop(listener);
    }

    #[test]
    fn a_peer_that_stalls_its_send_leaves_the_next_peer_its_own_time() {
        // `them` has one connection allowed and the test holds it, so the round's send
        // to `them` waits its whole timeout for a free one; `other` answers at once.
        let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
        let (healthy, fake) = fake_peer([&b"OK\r\n"[..], &frames(&[b"OK\r\n", b"v\r\nOK\r\n"])].concat());
        let text = format!("me 127.0.0.1:1 a\nthem {} b\nother {healthy} c\n", stalled.local_addr().unwrap());
        let cluster = Cluster::parse("test", &text).unwrap();
        let config =
            PeerConfig { timeout: Duration::from_millis(200), connections: 1, ..PeerConfig::default() };
        let peers = Peers::start(&cluster, 0, &config, None).unwrap();
        let held = peers.get(0).checkout(Deadline::after(Duration::from_secs(5))).unwrap();
        let mut forwarder = Forwarder::new(&peers);
        forwarder.push(0, &protocol::parse(b"GET b k"), Dialect::Text);
        forwarder.push(1, &protocol::parse(b"PUT c k v"), Dialect::Text);
        forwarder.push(1, &protocol::parse(b"GET c k"), Dialect::Text);
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"ERROR peer them unavailable\r\n");
        assert_eq!(next(&mut forwarder, 1), b"OK\r\n", "the healthy peer was sent to and answered");
        assert_eq!(next(&mut forwarder, 1), b"v\r\nOK\r\n");
        assert_eq!(fake.join().unwrap(), b"KV-PEER-HELLO 3 me other\nPUT c k v\nGET c k\n");
        assert_eq!(peers.get(1).errors(), 0, "no failure is counted against the healthy peer");
        peers.get(0).discard(held);
    }

    #[test]
    fn a_refused_connection_fails_every_request() {
        // Bind then drop, so nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let peers = one_peer(addr, PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        push(&mut forwarder, b"PUT b k v");
        push(&mut forwarder, b"DELETE b k");
        forwarder.exchange();
        assert_eq!(next(&mut forwarder, 0), b"ERROR peer them unavailable\r\n");
        assert_eq!(next(&mut forwarder, 0), b"ERROR peer them unavailable\r\n");
        assert_eq!(peers.get(0).pool_state().1, 0);
    }

    #[test]
    fn exchanges_are_split_before_they_pass_the_byte_limit() {
        let peers = one_peer("127.0.0.1:9".parse().unwrap(), PeerConfig::default());
        let mut forwarder = Forwarder::new(&peers);
        let value = vec![b'x'; 1000];
        let put = Command::Put { bucket: b"b", key: b"k", value: &value };
        let mut frame = Vec::new();
        protocol::push_peer_frame(&put, Dialect::Text, &mut frame);
        assert!(!forwarder.is_full_for(0, 100_000), "an empty exchange takes any one request");
        let mut pushed = 0;
        while !forwarder.is_full_for(0, frame.len()) {
            forwarder.push(0, &put, Dialect::Text);
            pushed += 1;
        }
        assert_eq!(pushed, MAX_EXCHANGE_BYTES / frame.len());
    }

    #[test]
    fn no_peers_means_no_exchanges() {
        let peers = Peers::none();
        let forwarder = Forwarder::new(&peers);
        assert!(forwarder.exchanges.is_empty());
        let mut stats = Stats::default();
        peers.add_stats(&mut stats);
        assert_eq!(stats.get("forwarded_total"), Some("0"));
        assert_eq!(stats.get("peer_errors_total"), Some("0"));
    }
}
