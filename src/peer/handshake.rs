//! The sending side of the version-2 node handshake (issue 14): send the hello with
//! this node's nonce, check the responder's proof, and leave this node's proof as the
//! connection's first line, to go out in the same write as the first requests.
//!
//! One extra round trip per new pooled connection, and no request leaves before the
//! peer has proven the secret; the peer reads the requests behind the proof only if
//! the proof holds (docs/CLUSTER.md). Bytes are `protocol/hello.rs`'s, proofs `auth.rs`'s.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::conn::{Deadline, Failure, HelloReply, PeerConn, read_hello};
use crate::auth::{Role, Secret, Transcript, fresh_nonce};
use crate::protocol::{ErrorKind, Reply, auth_hello_line, line_len, parse_challenge, proof_line};

/// Longest first reply read while waiting for a challenge: a challenge is 117 bytes,
/// and refusals are short lines too.
const MAX_CHALLENGE_BYTES: usize = 4096;

/// Runs the challenge-response on the new connection `conn` from node `from` to node
/// `to`. On success `conn.hello` is this node's proof; a peer that refuses us, or fails
/// to prove the secret, is [`Failure::Refused`] with the line every request gets; the
/// latter is counted in `proof_failures`.
pub(crate) fn authenticate(
    conn: &mut PeerConn,
    secret: &Secret,
    (from, to): (&str, &str),
    deadline: Deadline,
    proof_failures: &AtomicU64,
) -> Result<(), Failure> {
    let nonce = fresh_nonce().map_err(Failure::Io)?;
    conn.stream.write_all(&auth_hello_line(from, to, &nonce))?;
    let mut buffer = Vec::new();
    let len = loop {
        if let Some(len) = line_len(&buffer) {
            break len;
        }
        if buffer.len() > MAX_CHALLENGE_BYTES {
            return Err(Failure::Protocol("handshake answered with an overlong line".to_string()));
        }
        conn.read_more(&mut buffer, deadline)?;
    };
    let line = &buffer[..len];
    let Some((responder_nonce, proof)) = parse_challenge(line) else {
        return match read_hello(line)? {
            HelloReply::Refused(line) => Err(Failure::Refused(line)),
            HelloReply::Accepted => {
                Err(Failure::Protocol("a version-2 handshake answered OK without a challenge".to_string()))
            }
        };
    };
    if len != buffer.len() {
        return Err(Failure::Protocol("bytes after the handshake's challenge".to_string()));
    }
    let transcript = Transcript {
        from: from.as_bytes(),
        to: to.as_bytes(),
        initiator_nonce: &nonce,
        responder_nonce: &responder_nonce,
    };
    if !transcript.verify(secret, Role::Responder, &proof) {
        proof_failures.fetch_add(1, Ordering::Relaxed);
        let mut line = Vec::new();
        Reply::Error(ErrorKind::PeerProofFailed { peer: to }).write_text(&mut line);
        return Err(Failure::Refused(line));
    }
    conn.hello = proof_line(&transcript.proof(secret, Role::Initiator));
    Ok(())
}
