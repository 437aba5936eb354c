//! The one line that differs between nodes: the handshake that opens every
//! node-to-node connection, `KV-PEER-HELLO <version> <from-node> <to-node>`.
//!
//! It marks the connection as coming from a node, which changes one thing on the
//! receiving side: a request for a bucket that node does not own is answered
//! [`ErrorKind::NotOwner`] instead of being forwarded again, so a request crosses at
//! most one hop. docs/CLUSTER.md tells the whole story; this file owns the bytes.
//!
//! With a cluster secret (issue 14, docs/SECURITY.md) the handshake is version 2, a
//! mutual challenge-response: `KV-PEER-HELLO 2 <from> <to> <nonce>`, answered
//! `KV-PEER-CHALLENGE <nonce> <proof>`, then `KV-PEER-PROOF <proof>`, answered `OK`.
//! Nonces and proofs travel as lowercase hex. The proofs themselves are `auth.rs`'s.

use super::command::words;
use super::reply::{ErrorKind, Reply};
use crate::auth::{NONCE_LEN, PROOF_LEN};

/// The first word of the handshake line.
pub const HELLO_WORD: &[u8] = b"KV-PEER-HELLO";

/// The version of the node-to-node conversation this build speaks, the handshake's
/// second word: after the handshake, requests and replies travel as length-prefixed
/// frames (`peer/serve.rs`, docs/CLUSTER.md), which carry any bytes.
pub const PEER_PROTOCOL_VERSION: &[u8] = b"3";

/// The same with a cluster secret: challenge-response, then frames.
pub const AUTH_PROTOCOL_VERSION: &[u8] = b"4";

/// The versions of earlier builds, still accepted: their requests are text lines, as
/// a client's, so a node of an earlier build can still forward to this one.
pub const TEXT_PEER_PROTOCOL_VERSION: &[u8] = b"1";
pub const TEXT_AUTH_PROTOCOL_VERSION: &[u8] = b"2";

/// The first word of the responder's challenge, and of the initiator's proof.
pub const CHALLENGE_WORD: &[u8] = b"KV-PEER-CHALLENGE";
pub const PROOF_WORD: &[u8] = b"KV-PEER-PROOF";

/// The handshake node `from` opens a connection to node `to` with, `\n` included.
///
/// ```
/// assert_eq!(kv::protocol::hello_line("a", "b"), b"KV-PEER-HELLO 3 a b\n");
/// ```
pub fn hello_line(from: &str, to: &str) -> Vec<u8> {
    [HELLO_WORD, b" ", PEER_PROTOCOL_VERSION, b" ", from.as_bytes(), b" ", to.as_bytes(), b"\n"].concat()
}

/// The version-2 handshake, with the initiator's `nonce`, `\n` included.
///
/// ```
/// assert_eq!(kv::protocol::auth_hello_line("a", "b", &[0xab; 16]),
///            b"KV-PEER-HELLO 4 a b abababababababababababababababab\n");
/// ```
pub fn auth_hello_line(from: &str, to: &str, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut line =
        [HELLO_WORD, b" ", AUTH_PROTOCOL_VERSION, b" ", from.as_bytes(), b" ", to.as_bytes(), b" "].concat();
    push_hex(&mut line, nonce);
    line.push(b'\n');
    line
}

/// The responder's answer to a version-2 hello, `\r\n` included, onto `out`.
pub fn write_challenge(out: &mut Vec<u8>, nonce: &[u8; NONCE_LEN], proof: &[u8; PROOF_LEN]) {
    out.extend_from_slice(CHALLENGE_WORD);
    out.push(b' ');
    push_hex(out, nonce);
    out.push(b' ');
    push_hex(out, proof);
    out.extend_from_slice(b"\r\n");
}

/// The initiator's proof line, `\n` included.
pub fn proof_line(proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    let mut line = [PROOF_WORD, b" "].concat();
    push_hex(&mut line, proof);
    line.push(b'\n');
    line
}

/// Reads a challenge line (with or without its line end): the responder's nonce and
/// proof. `None` if it is anything else.
///
/// ```
/// use kv::protocol::{parse_challenge, write_challenge};
/// let mut line = Vec::new();
/// write_challenge(&mut line, &[1; 16], &[2; 32]);
/// assert_eq!(parse_challenge(&line), Some(([1; 16], [2; 32])));
/// assert_eq!(parse_challenge(b"OK\r\n"), None);
/// ```
pub fn parse_challenge(line: &[u8]) -> Option<([u8; NONCE_LEN], [u8; PROOF_LEN])> {
    let mut words = words(line);
    let (word, nonce, proof, extra) = (words.next(), words.next(), words.next(), words.next());
    match (word, nonce, proof, extra) {
        (Some(CHALLENGE_WORD), Some(nonce), Some(proof), None) => Some((from_hex(nonce)?, from_hex(proof)?)),
        _ => None,
    }
}

/// Reads a proof line: the initiator's proof. `None` if it is anything else.
///
/// ```
/// use kv::protocol::{parse_proof, proof_line};
/// assert_eq!(parse_proof(&proof_line(&[7; 32])), Some([7; 32]));
/// assert_eq!(parse_proof(b"KV-PEER-PROOF 07"), None);
/// ```
pub fn parse_proof(line: &[u8]) -> Option<[u8; PROOF_LEN]> {
    let mut words = words(line);
    match (words.next(), words.next(), words.next()) {
        (Some(PROOF_WORD), Some(proof), None) => from_hex(proof),
        _ => None,
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 15)]);
    }
}

/// Exactly `N` bytes of hex (either case), or `None`.
fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

/// What the receiving side makes of a connection's first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a handshake: an ordinary client request.
    NotHello,
    /// A node without a secret (version 3, or 1 from an earlier build) speaking to
    /// this node by its right name: answer `OK` (if this node has no secret), never
    /// forward. `framed`: its requests come as frames from now on, not lines.
    Accepted { framed: bool },
    /// A node with a secret (version 4, or 2) speaking to this node by its right name,
    /// with its nonce: answer a challenge (if this node has a secret).
    Authenticate { from: Vec<u8>, nonce: [u8; NONCE_LEN], framed: bool },
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
    /// A wrong or missing proof: `ERROR authentication failed`, nothing more.
    AuthFailed,
    /// This node has a secret; the peer spoke version 1, without one.
    PeerSentNoSecret,
    /// This node has no secret; the peer spoke version 2, with one.
    NodeHasNoSecret,
    /// Too many failed handshakes from the peer's address.
    Throttled,
}

impl Refusal {
    /// The reply a refused connection gets to everything, from node `node`.
    pub fn reply<'a>(&'a self, node: &'a str) -> Reply<'a> {
        Reply::Error(match self {
            Refusal::WrongNode(asked) => ErrorKind::WrongNode { node, asked },
            Refusal::NotUnderstood => ErrorKind::HandshakeNotUnderstood { node },
            Refusal::AuthFailed => ErrorKind::AuthenticationFailed,
            Refusal::PeerSentNoSecret => ErrorKind::PeerSentNoSecret { node },
            Refusal::NodeHasNoSecret => ErrorKind::NodeHasNoSecret { node },
            Refusal::Throttled => ErrorKind::HandshakeThrottled,
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
/// assert_eq!(check_hello(b"KV-PEER-HELLO 3 foo bar", "bar"), Hello::Accepted { framed: true });
/// assert_eq!(check_hello(b"KV-PEER-HELLO 1 foo bar", "bar"), Hello::Accepted { framed: false });
/// assert_eq!(
///     check_hello(b"KV-PEER-HELLO 3 foo bar", "baz"),
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
    let plain = |v: &[u8]| v == PEER_PROTOCOL_VERSION || v == TEXT_PEER_PROTOCOL_VERSION;
    let with_secret = |v: &[u8]| v == AUTH_PROTOCOL_VERSION || v == TEXT_AUTH_PROTOCOL_VERSION;
    match (version, from, to, extra) {
        (Some(v), Some(_), Some(to), None) if plain(v) && to == node.as_bytes() => {
            Hello::Accepted { framed: v == PEER_PROTOCOL_VERSION }
        }
        (Some(v), Some(_), Some(to), None) if plain(v) => Hello::Refused(Refusal::WrongNode(to.to_vec())),
        (Some(v), Some(from), Some(to), Some(nonce)) if with_secret(v) && words.next().is_none() => {
            match from_hex(nonce) {
                _ if to != node.as_bytes() => Hello::Refused(Refusal::WrongNode(to.to_vec())),
                Some(nonce) => {
                    Hello::Authenticate { from: from.to_vec(), nonce, framed: v == AUTH_PROTOCOL_VERSION }
                }
                None => Hello::Refused(Refusal::NotUnderstood),
            }
        }
        _ => Hello::Refused(Refusal::NotUnderstood),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_variants() {
        assert_eq!(check_hello(b"KV-PEER-HELLO 1 a b", "b"), Hello::Accepted { framed: false });
        assert_eq!(check_hello(b"  KV-PEER-HELLO\t3 a b ", "b"), Hello::Accepted { framed: true });
        assert_eq!(check_hello(b"KV-PEER-HELLO 2 a b", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLO 4 a b", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLO 5 a b", "b"), Hello::Refused(Refusal::NotUnderstood));
        let v4 = auth_hello_line("a", "b", &[9; NONCE_LEN]);
        assert_eq!(
            check_hello(&v4, "b"),
            Hello::Authenticate { from: b"a".to_vec(), nonce: [9; NONCE_LEN], framed: true }
        );
        let v2 = [&b"KV-PEER-HELLO 2 a b "[..], &[b'0', b'9'].repeat(NONCE_LEN)].concat();
        assert_eq!(
            check_hello(&v2, "b"),
            Hello::Authenticate { from: b"a".to_vec(), nonce: [9; NONCE_LEN], framed: false }
        );
        assert_eq!(check_hello(&v2, "c"), Hello::Refused(Refusal::WrongNode(b"b".to_vec())));
        assert_eq!(check_hello(b"KV-PEER-HELLO 2 a b 0909", "b"), Hello::Refused(Refusal::NotUnderstood));
        assert_eq!(check_hello(b"KV-PEER-HELLO 2 a b zz", "b"), Hello::Refused(Refusal::NotUnderstood));
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
