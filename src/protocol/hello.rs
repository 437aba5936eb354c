//! The one line that differs between nodes: the handshake that opens every
//! node-to-node connection, `KV-PEER-HELLO <version> <from-node> <to-node>`.
//!
//! It marks the connection as coming from a node, which changes one thing on the
//! receiving side: a request for a bucket that node does not own is answered
//! [`ErrorKind::NotOwner`] instead of being forwarded again, so a request crosses at
//! most one hop. docs/CLUSTER.md tells the whole story; this file owns the bytes.

use super::command::words;
use super::reply::{ErrorKind, Reply};

/// The first word of the handshake line.
pub const HELLO_WORD: &[u8] = b"KV-PEER-HELLO";

/// The version of the node-to-node conversation this build speaks, the handshake's
/// second word. Bumped if forwarding ever needs more than the client protocol.
pub const PEER_PROTOCOL_VERSION: &[u8] = b"1";

/// The handshake node `from` opens a connection to node `to` with, `\n` included.
///
/// ```
/// assert_eq!(kv::protocol::hello_line("a", "b"), b"KV-PEER-HELLO 1 a b\n");
/// ```
pub fn hello_line(from: &str, to: &str) -> Vec<u8> {
    [HELLO_WORD, b" ", PEER_PROTOCOL_VERSION, b" ", from.as_bytes(), b" ", to.as_bytes(), b"\n"].concat()
}

/// What the receiving side makes of a connection's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a handshake: an ordinary client request.
    NotHello,
    /// A node speaking to this node by its right name: answer `OK`, never forward.
    Accepted,
    /// A node that means another node, or speaks another version: answer
    /// [`Refusal::reply`] to the handshake and to every request after it.
    Refused(Refusal),
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sender meant the node called this.
    WrongNode(Vec<u8>),
    /// Another version, or the wrong number of words.
    NotUnderstood,
}

impl Refusal {
    /// The reply a refused connection gets to everything, from node `node`.
    pub fn reply<'a>(&'a self, node: &'a str) -> Reply<'a> {
        Reply::Error(match self {
            Refusal::WrongNode(asked) => ErrorKind::WrongNode { node, asked },
            Refusal::NotUnderstood => ErrorKind::HandshakeNotUnderstood { node },
        })
    }
}

/// Checks whether `line`, the first of a connection, is a handshake meant for the node
/// called `node`. Only this exact spelling counts (case-sensitive, unlike commands),
/// so a person typing into `nc` never trips over it.
///
/// ```
/// use kv::protocol::{check_hello, Hello, Refusal};
///
/// assert_eq!(check_hello(b"KV-PEER-HELLO 1 foo bar", "bar"), Hello::Accepted);
/// assert_eq!(
///     check_hello(b"KV-PEER-HELLO 1 foo bar", "baz"),
///     Hello::Refused(Refusal::WrongNode(b"bar".to_vec())),
/// );
/// assert_eq!(check_hello(b"kv-peer-hello 1 foo bar", "bar"), Hello::NotHello);
/// assert_eq!(check_hello(b"GET shopping eggs", "bar"), Hello::NotHello);
/// ```
pub fn check_hello(line: &[u8], node: &str) -> Hello {
    let mut words = words(line);
    if words.next() != Some(HELLO_WORD) {
        return Hello::NotHello;
    }
    let (version, from, to, extra) = (words.next(), words.next(), words.next(), words.next());
    match (version, from, to, extra) {
        (Some(PEER_PROTOCOL_VERSION), Some(_), Some(to), None) if to == node.as_bytes() => Hello::Accepted,
        (Some(PEER_PROTOCOL_VERSION), Some(_), Some(to), None) => {
            Hello::Refused(Refusal::WrongNode(to.to_vec()))
        }
        _ => Hello::Refused(Refusal::NotUnderstood),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_variants() {
        assert_eq!(check_hello(b"KV-PEER-HELLO 1 a b", "b"), Hello::Accepted);
        assert_eq!(check_hello(b"  KV-PEER-HELLO\t1 a b ", "b"), Hello::Accepted);
        assert_eq!(check_hello(b"KV-PEER-HELLO 2 a b", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLO 1 a", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLO 1 a b c", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLOX 1 a b", "b"), Hello::NotHello);
        assert_eq!(check_hello(b"", "b"), Hello::NotHello);
    }

    #[test]
    fn a_refusal_is_the_error_line_the_sender_relays() {
        let mut out = Vec::new();
        Refusal::WrongNode(b"bar".to_vec()).reply("baz").write_text(&mut out);
        assert_eq!(out, b"ERROR routing mismatch: this is node baz, not bar\r\n");
    }
}
