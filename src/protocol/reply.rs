//! Replies as values, and the text door's bytes for each.
//!
//! Everything kv answers is a [`Reply`] (subscribers get `Event`s, `event.rs`). A door
//! turns them into bytes: [`Reply::write_text`] is the text protocol's
//! (`docs/PROTOCOL.md`), and the only place in `src/` where its reply words are spelt.
//! Values hold no whitespace (the parser splits on it and the store only keeps what a
//! [`Command`](super::Command) carried), which is what lets a reply be framed by its
//! shape alone (see `shape.rs`).

use std::fmt::{self, Display};

use super::resp_write::Resp;

/// The text door's reply to every successful write, `CREATE`, `DROP` and `QUIT`.
pub(crate) const OK_LINE: &[u8] = b"OK\r\n";

/// The words of the fixed one-line replies, without their line end. `shape.rs` reads
/// replies by them, so a reader and a writer cannot drift apart.
pub(crate) const NOT_FOUND_WORDS: &[u8] = b"NOT FOUND";
pub(crate) const UNKNOWN_WORDS: &[u8] = b"UNKNOWN COMMAND";
pub(crate) const ERROR_PREFIX: &[u8] = b"ERROR ";
pub(crate) const PONG_WORD: &[u8] = b"PONG";
pub(crate) const OK_WORD: &[u8] = b"OK";

/// What every routing refusal between nodes starts with, after `ERROR `: a node that
/// reads it in reply to its handshake knows the peer refused *it* (the cluster files
/// disagree), not that the peer is busy or stopping.
const ROUTING_MISMATCH: &[u8] = b"routing mismatch: ";

/// True if `error_text` (an error line's text after `ERROR `) is a routing refusal.
///
/// ```
/// use kv::protocol::is_routing_mismatch;
///
/// assert!(is_routing_mismatch(b"routing mismatch: this is node a, not b"));
/// assert!(!is_routing_mismatch(b"too many connections"));
/// ```
pub fn is_routing_mismatch(error_text: &[u8]) -> bool {
    error_text.starts_with(ROUTING_MISMATCH)
}

/// What every refused node authentication starts with, after `ERROR `: the issue-14
/// handshake failed, or one side has a cluster secret and the other has none.
const AUTHENTICATION_FAILED: &[u8] = b"authentication failed";

/// True if `error_text` (an error line's text after `ERROR `) refuses a node's
/// authentication: like a routing mismatch, a refusal to relay, not a busy peer.
///
/// ```
/// use kv::protocol::is_auth_failure;
///
/// assert!(is_auth_failure(b"authentication failed"));
/// assert!(is_auth_failure(b"authentication failed: node b has no cluster secret but the connecting node has one"));
/// assert!(!is_auth_failure(b"authentication required"));
/// ```
pub fn is_auth_failure(error_text: &[u8]) -> bool {
    error_text.starts_with(AUTHENTICATION_FAILED)
}

/// How the error of a forwarded write that may have been applied ends
/// ([`ErrorKind::PeerOutcomeUnknown`]); `gather.rs` reads it back in the parts of a
/// multi-key reply.
pub const OUTCOME_UNKNOWN: &[u8] = b" unavailable: outcome unknown";

/// How the error of a write applied but not known to be on disk begins
/// ([`ErrorKind::NotSynced`]); read back the same way.
pub const NOT_SYNCED: &[u8] = b"applied but not synced to disk: ";

/// One reply to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `OK`: a write happened, a bucket exists, `QUIT` is honoured.
    Ok,
    /// A GET's answer: the value (empty for a missing key, as the guide's server
    /// answers), then `OK`.
    Value(&'a [u8]),
    /// The bucket does not exist.
    NotFound,
    /// An unknown command word, a wrong number of words, an empty line.
    Unknown,
    /// The answer to `PING`.
    Pong,
    /// A SUBSCRIBE took: the connection becomes a stream of [`Event`]s. Nothing is
    /// written to a client; a node relaying the stream is answered `OK` first (see
    /// docs/CLUSTER.md).
    Subscribed,
    /// Something went wrong; the request may not have been served.
    Error(ErrorKind<'a>),
    // The RESP door's replies to its own operations (`Command::HSet` and the rest).
    // The text door never asks for them; should one reach it, it is written as
    // `UNKNOWN COMMAND`.
    /// A count, or a 1/0 answer.
    Integer(i64),
    /// Nothing there: a missing key or bucket.
    Nil,
    /// A value, whatever bytes it holds.
    Bulk(&'a [u8]),
    /// A fixed word, such as `TYPE`'s `hash`.
    Status(&'static str),
    /// A bucket's pairs, keys or values (`HGETALL`, `HKEYS`, `HVALS`); `None` for a
    /// bucket that does not exist, which has none.
    Fields(Option<&'a dyn Fields>, Part),
}

/// What of a bucket [`Reply::Fields`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Each key then its value: a map.
    Pairs,
    Keys,
    Values,
}

/// A bucket as a reply reads it: implemented by the store's bucket, so that the
/// protocol knows nothing of how it is kept.
pub trait Fields {
    /// How many pairs there are.
    fn count(&self) -> usize;
    /// Calls `each` with every pair.
    fn each_pair(&self, each: &mut dyn FnMut(&[u8], &[u8]));
}

impl fmt::Debug for dyn Fields + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fields({} pairs)", self.count())
    }
}

/// Two field sources are the same reply when they are the same bucket.
impl PartialEq for dyn Fields + '_ {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self, other)
    }
}

impl Eq for dyn Fields + '_ {}

/// How a connection's replies are written: the text door's lines, or RESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    Text,
    Resp2,
    Resp3,
}

/// What went wrong, for [`Reply::Error`]. Each has a fixed text in the text door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind<'a> {
    /// The request line was longer than the limit.
    LineTooLong,
    /// The server is at its connection limit (sent, then the connection closes).
    TooManyConnections,
    /// The server has begun shutting down; the request was not served.
    ShuttingDown,
    /// The worker serving the request crashed while doing so.
    WorkerCrashed,
    /// The request's worker could not be reached (a safety net a running server
    /// never needs).
    WorkerUnavailable,
    /// No node of the cluster owns the bucket.
    NoRoute { bucket: &'a [u8] },
    /// A node forwarded a request for a bucket this node does not own.
    NotOwner { node: &'a str, bucket: &'a [u8] },
    /// A node's handshake named another node: this is `node`, it asked for `asked`.
    WrongNode { node: &'a str, asked: &'a [u8] },
    /// A handshake of a version or shape this node does not speak.
    HandshakeNotUnderstood { node: &'a str },
    /// The peer owning the bucket could not be reached, or the request never reached
    /// it: a write answered so is known not to have happened (docs/CLUSTER.md).
    PeerUnavailable { peer: &'a str },
    /// A SUBSCRIBE reached a worker without its subscriber (a bug, answered rather
    /// than trusted).
    SubscriptionNotSetUp,
    /// `DEBUG CRASH-ACCEPTOR` could not wake the acceptor.
    CannotWakeAcceptor,
    /// A write whose record could not reach the log: it was not applied.
    PersistenceFailed { reason: &'a str },
    /// With `--fsync always`: a write that was applied and written to its log, whose
    /// sync then failed, so a crash may lose it. Answered instead of `OK`, which would
    /// promise it is on disk; the write stays applied (docs/PROTOCOL.md).
    NotSynced { reason: &'a str },
    /// `DEBUG FAILSYNC` on a server without `--data-dir`: there is no log to fail.
    PersistenceOff,
    /// A write was sent to the peer owning the bucket, which then failed or did not
    /// answer in time: it may or may not have been applied (docs/CLUSTER.md).
    PeerOutcomeUnknown { peer: &'a str },
    /// A write (`CREATE`, `PUT`) would take the store past `--max-memory`; nothing
    /// was changed.
    OutOfMemory,
    /// A node's handshake proof was wrong (or missing): the one line a failed
    /// authentication gets, whatever failed, so it tells a guesser nothing.
    AuthenticationFailed,
    /// This node, `node`, has a cluster secret; the connecting node sent a handshake
    /// without one.
    PeerSentNoSecret { node: &'a str },
    /// This node, `node`, has no cluster secret; the connecting node sent one.
    NodeHasNoSecret { node: &'a str },
    /// Too many failed handshakes from the connecting address: try again later.
    HandshakeThrottled,
    /// The peer `peer` answered this node's handshake without proving the secret
    /// (said by the connecting node, to the clients whose requests it held).
    PeerProofFailed { peer: &'a str },
    /// A request before `AUTH` on a server with a password.
    AuthenticationRequired,
    /// `AUTH` with the wrong password.
    InvalidPassword,
    /// `AUTH` from an address that failed too often lately: the password was not
    /// looked at.
    AuthThrottled,
    /// `AUTH` on a server without a password.
    NoPasswordSet,
    /// A GET of a value the text protocol cannot show on one line (it holds a space
    /// or a line end): stored through the RESP door.
    NotRepresentable,
    /// Protected mode turned a non-loopback client away (then the connection closes).
    ProtectedMode,
}

impl Reply<'_> {
    /// Appends this reply's bytes in `dialect`.
    #[inline]
    pub fn write(&self, dialect: Dialect, out: &mut Vec<u8>) {
        match dialect {
            Dialect::Text => self.write_text(out),
            Dialect::Resp2 => super::reply_resp::write_resp(self, Resp::V2, out),
            Dialect::Resp3 => super::reply_resp::write_resp(self, Resp::V3, out),
        }
    }

    /// True for a reply that says a write was not applied (an error, or no bucket).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Reply::Error(_) | Reply::NotFound | Reply::Unknown)
    }

    /// Appends the text door's bytes for this reply.
    ///
    /// ```
    /// use kv::protocol::{ErrorKind, Reply};
    ///
    /// let mut out = Vec::new();
    /// Reply::Value(b"3").write_text(&mut out);
    /// Reply::NotFound.write_text(&mut out);
    /// Reply::Error(ErrorKind::NoRoute { bucket: b"Apple" }).write_text(&mut out);
    /// assert_eq!(out, b"3\r\nOK\r\nNOT FOUND\r\nERROR no route for bucket Apple\r\n");
    /// ```
    #[inline]
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match *self {
            Reply::Ok => out.extend_from_slice(OK_LINE),
            Reply::Value(value) if !fits_a_line(value) => ErrorKind::NotRepresentable.write_text(out),
            Reply::Value(value) => {
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(OK_LINE);
            }
            Reply::NotFound => line(out, &[NOT_FOUND_WORDS]),
            Reply::Unknown => line(out, &[UNKNOWN_WORDS]),
            Reply::Pong => line(out, &[PONG_WORD]),
            Reply::Subscribed => {}
            Reply::Error(kind) => kind.write_text(out),
            Reply::Integer(_) | Reply::Nil | Reply::Bulk(_) | Reply::Status(_) | Reply::Fields(..) => {
                line(out, &[UNKNOWN_WORDS])
            }
        }
    }
}

/// True if the text protocol can show a stored key or value as one word of a line: it
/// holds no protocol whitespace, and it is not empty, since an empty one could not be
/// told from a missing one (a missing key's `GET` answers an empty line, an event
/// would lose its last word).
#[inline]
pub fn is_representable(value: &[u8]) -> bool {
    !value.is_empty() && fits_a_line(value)
}

/// True if a line can carry `bytes`: they hold no protocol whitespace. A
/// [`Reply::Value`] is written when it does; its empty value is a missing key's answer,
/// a stored empty one being refused before (`apply.rs`).
#[inline]
fn fits_a_line(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| super::command::is_space(b))
}

/// The text after `ERROR ` of an error kind, for the RESP door's `-ERR <text>`.
impl ErrorKind<'_> {
    pub(crate) fn text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_text(&mut out);
        let text = out.strip_prefix(ERROR_PREFIX).unwrap_or(&out);
        text.strip_suffix(b"\r\n").unwrap_or(text).to_vec()
    }
}

impl ErrorKind<'_> {
    /// Appends `ERROR <text>\r\n`.
    #[cold]
    fn write_text(&self, out: &mut Vec<u8>) {
        let e = ERROR_PREFIX;
        match *self {
            ErrorKind::LineTooLong => line(out, &[e, b"line too long"]),
            ErrorKind::TooManyConnections => line(out, &[e, b"too many connections"]),
            ErrorKind::ShuttingDown => line(out, &[e, b"shutting down"]),
            ErrorKind::WorkerCrashed => line(out, &[e, b"worker crashed"]),
            ErrorKind::WorkerUnavailable => line(out, &[e, b"worker unavailable"]),
            ErrorKind::NoRoute { bucket } => line(out, &[e, b"no route for bucket ", bucket]),
            ErrorKind::NotOwner { node, bucket } => {
                line(out, &[e, ROUTING_MISMATCH, b"node ", node.as_bytes(), b" does not own bucket ", bucket])
            }
            ErrorKind::WrongNode { node, asked } => {
                line(out, &[e, ROUTING_MISMATCH, b"this is node ", node.as_bytes(), b", not ", asked])
            }
            ErrorKind::HandshakeNotUnderstood { node } => line(
                out,
                &[
                    e,
                    ROUTING_MISMATCH,
                    b"node ",
                    node.as_bytes(),
                    b" does not understand this peer handshake",
                ],
            ),
            ErrorKind::PeerUnavailable { peer } => {
                line(out, &[e, b"peer ", peer.as_bytes(), b" unavailable"])
            }
            ErrorKind::SubscriptionNotSetUp => line(out, &[e, b"subscription not set up"]),
            ErrorKind::CannotWakeAcceptor => line(out, &[e, b"cannot wake the acceptor"]),
            ErrorKind::PersistenceFailed { reason } => {
                line(out, &[e, b"persistence failed: ", reason.as_bytes()])
            }
            ErrorKind::NotSynced { reason } => line(out, &[e, NOT_SYNCED, reason.as_bytes()]),
            ErrorKind::PersistenceOff => line(out, &[e, b"persistence is off (no --data-dir)"]),
            ErrorKind::PeerOutcomeUnknown { peer } => {
                line(out, &[e, b"peer ", peer.as_bytes(), OUTCOME_UNKNOWN])
            }
            ErrorKind::OutOfMemory => line(out, &[e, b"out of memory"]),
            ErrorKind::NotRepresentable => {
                line(out, &[e, b"value not representable in the text protocol (use the RESP port)"])
            }
            _ => self.write_auth_text(out),
        }
    }

    /// The issue-14 lines: node authentication, client passwords, protected mode.
    #[cold]
    fn write_auth_text(&self, out: &mut Vec<u8>) {
        let (e, failed) = (ERROR_PREFIX, AUTHENTICATION_FAILED);
        match *self {
            ErrorKind::AuthenticationFailed => line(out, &[e, failed]),
            ErrorKind::PeerSentNoSecret { node } => line(
                out,
                &[
                    e,
                    failed,
                    b": node ",
                    node.as_bytes(),
                    b" has a cluster secret and the connecting node has none",
                ],
            ),
            ErrorKind::NodeHasNoSecret { node } => line(
                out,
                &[
                    e,
                    failed,
                    b": node ",
                    node.as_bytes(),
                    b" has no cluster secret but the connecting node has one",
                ],
            ),
            ErrorKind::HandshakeThrottled => {
                line(out, &[e, failed, b": too many failed handshakes from this address, try again later"])
            }
            ErrorKind::PeerProofFailed { peer } => {
                line(out, &[e, failed, b": peer ", peer.as_bytes(), b" did not prove the cluster secret"])
            }
            ErrorKind::AuthenticationRequired => line(out, &[e, b"authentication required"]),
            ErrorKind::InvalidPassword => line(out, &[e, b"invalid password"]),
            ErrorKind::AuthThrottled => {
                line(out, &[e, b"too many failed AUTH attempts from this address, try again later"])
            }
            ErrorKind::NoPasswordSet => line(out, &[e, b"AUTH given but no password is set"]),
            ErrorKind::ProtectedMode => line(out, &[e, PROTECTED_MODE_TEXT]),
            _ => {}
        }
    }
}

/// Protected mode's one line (after `ERROR `), Redis's advice in kv's words.
const PROTECTED_MODE_TEXT: &[u8] =
    b"protected mode: kv listens on a non-loopback address without a password, \
so only loopback clients are served; set one with --password-file PATH (clients then send AUTH <password>), \
or start kv with --protected-mode no if the network is trusted";

/// The text of a reply, for logs and tests: the bytes, lossily as UTF-8.
impl Display for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_text(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// Appends `parts` then `\r\n`.
#[inline]
pub(super) fn line(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// The STATS reply: `<name> <value>` lines in order, then `OK`. Built on a cold path,
/// so it owns its text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    lines: Vec<(String, String)>,
}

impl Stats {
    /// Adds one figure. A name is one word; a value is one word too (node names are).
    pub fn push(&mut self, name: impl Into<String>, value: impl Display) {
        self.lines.push((name.into(), value.to_string()));
    }

    /// The figures, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// One figure by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, value)| value)
    }

    /// Appends the text door's bytes: each line, then `OK`.
    ///
    /// ```
    /// let mut stats = kv::protocol::Stats::default();
    /// stats.push("keys", 12);
    /// let mut out = Vec::new();
    /// stats.write_text(&mut out);
    /// assert_eq!(out, b"keys 12\r\nOK\r\n");
    /// ```
    pub fn write_text(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.lines {
            line(out, &[name.as_bytes(), b" ", value.as_bytes()]);
        }
        out.extend_from_slice(OK_LINE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reply: Reply<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        reply.write_text(&mut out);
        out
    }

    #[test]
    fn every_reply_has_its_bytes() {
        let cases: &[(Reply, &[u8])] = &[
            (Reply::Ok, b"OK\r\n"),
            (Reply::Value(b"3"), b"3\r\nOK\r\n"),
            (Reply::Value(b""), b"\r\nOK\r\n"),
            (Reply::NotFound, b"NOT FOUND\r\n"),
            (Reply::Unknown, b"UNKNOWN COMMAND\r\n"),
            (Reply::Pong, b"PONG\r\n"),
            (Reply::Error(ErrorKind::LineTooLong), b"ERROR line too long\r\n"),
            (Reply::Error(ErrorKind::TooManyConnections), b"ERROR too many connections\r\n"),
            (Reply::Error(ErrorKind::ShuttingDown), b"ERROR shutting down\r\n"),
            (Reply::Error(ErrorKind::WorkerCrashed), b"ERROR worker crashed\r\n"),
            (Reply::Error(ErrorKind::WorkerUnavailable), b"ERROR worker unavailable\r\n"),
            (Reply::Error(ErrorKind::NoRoute { bucket: b"Apple" }), b"ERROR no route for bucket Apple\r\n"),
            (
                Reply::Error(ErrorKind::NotOwner { node: "foo", bucket: b"nuts" }),
                b"ERROR routing mismatch: node foo does not own bucket nuts\r\n",
            ),
            (
                Reply::Error(ErrorKind::WrongNode { node: "baz", asked: b"bar" }),
                b"ERROR routing mismatch: this is node baz, not bar\r\n",
            ),
            (
                Reply::Error(ErrorKind::HandshakeNotUnderstood { node: "baz" }),
                b"ERROR routing mismatch: node baz does not understand this peer handshake\r\n",
            ),
            (Reply::Error(ErrorKind::PeerUnavailable { peer: "n1" }), b"ERROR peer n1 unavailable\r\n"),
            (Reply::Error(ErrorKind::SubscriptionNotSetUp), b"ERROR subscription not set up\r\n"),
            (Reply::Error(ErrorKind::CannotWakeAcceptor), b"ERROR cannot wake the acceptor\r\n"),
            (
                Reply::Error(ErrorKind::PersistenceFailed { reason: "File too large (os error 27)" }),
                b"ERROR persistence failed: File too large (os error 27)\r\n",
            ),
            (
                Reply::Error(ErrorKind::PeerOutcomeUnknown { peer: "n1" }),
                b"ERROR peer n1 unavailable: outcome unknown\r\n",
            ),
            (
                Reply::Error(ErrorKind::NotSynced { reason: "Input/output error (os error 5)" }),
                b"ERROR applied but not synced to disk: Input/output error (os error 5)\r\n",
            ),
            (Reply::Error(ErrorKind::PersistenceOff), b"ERROR persistence is off (no --data-dir)\r\n"),
            (Reply::Error(ErrorKind::OutOfMemory), b"ERROR out of memory\r\n"),
            (Reply::Error(ErrorKind::AuthenticationFailed), b"ERROR authentication failed\r\n"),
            (
                Reply::Error(ErrorKind::PeerSentNoSecret { node: "b" }),
                b"ERROR authentication failed: node b has a cluster secret and the connecting node has none\r\n",
            ),
            (
                Reply::Error(ErrorKind::NodeHasNoSecret { node: "b" }),
                b"ERROR authentication failed: node b has no cluster secret but the connecting node has one\r\n",
            ),
            (
                Reply::Error(ErrorKind::HandshakeThrottled),
                b"ERROR authentication failed: too many failed handshakes from this address, try again later\r\n",
            ),
            (
                Reply::Error(ErrorKind::PeerProofFailed { peer: "b" }),
                b"ERROR authentication failed: peer b did not prove the cluster secret\r\n",
            ),
            (Reply::Error(ErrorKind::AuthenticationRequired), b"ERROR authentication required\r\n"),
            (Reply::Error(ErrorKind::InvalidPassword), b"ERROR invalid password\r\n"),
            (
                Reply::Error(ErrorKind::AuthThrottled),
                b"ERROR too many failed AUTH attempts from this address, try again later\r\n",
            ),
            (Reply::Error(ErrorKind::NoPasswordSet), b"ERROR AUTH given but no password is set\r\n"),
            (
                Reply::Error(ErrorKind::ProtectedMode),
                b"ERROR protected mode: kv listens on a non-loopback address without a password, so only \
loopback clients are served; set one with --password-file PATH (clients then send AUTH <password>), or start \
kv with --protected-mode no if the network is trusted\r\n",
            ),
        ];
        for (reply, bytes) in cases {
            assert_eq!(text(*reply), *bytes, "{reply:?}");
        }
    }

    #[test]
    fn stats_lines_then_ok() {
        let mut stats = Stats::default();
        stats.push("node", "kv");
        stats.push("keys", 3);
        assert_eq!(stats.get("keys"), Some("3"));
        let mut out = Vec::new();
        stats.write_text(&mut out);
        assert_eq!(out, b"node kv\r\nkeys 3\r\nOK\r\n");
    }
}
