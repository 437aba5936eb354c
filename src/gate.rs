//! The receiving side's door checks (issue 14): protected mode when a connection
//! opens, the client password (`AUTH`), and the responder's half of the version-2
//! node handshake (challenge, then check the initiator's proof).
//!
//! `connection.rs` asks; this file decides, counts for STATS and logs, rate-limited.
//! The pure parts (proofs, the throttle, protected mode's rule) are `auth.rs`'s; the
//! bytes are `protocol/`'s.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::auth::{self, MAX_AUTH_FAILURES, NONCE_LEN, Role, Transcript};
use crate::logcap::{Limiter, warn_limited};
use crate::protocol::{Command, ErrorKind, Refusal, Reply, parse_proof, write_challenge};
use crate::state::State;

/// Failed node handshakes and failed `AUTH`s, each logged at most once a second.
static PEER_AUTH_FAILED: Limiter = Limiter::new();
static AUTH_FAILED: Limiter = Limiter::new();

/// What protected mode makes of a new connection from `client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// Serve it as usual.
    Open,
    /// Refuse it with one line and close (`auth::protected_mode_refuses`) ...
    Refuse,
    /// ... unless it comes from the address of a node in the cluster file: then its
    /// first line must be a node handshake, or it is refused as above.
    NodesOnly,
}

/// Protected mode's decision for a connection from `client` (`None`: address unknown,
/// taken as remote).
pub(crate) fn door(state: &State, client: Option<IpAddr>) -> Door {
    let config = &state.config;
    let remote = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !auth::protected_mode_refuses(remote, config.bind, config.password.is_some(), config.protected_mode) {
        return Door::Open;
    }
    let is_node = |ip: IpAddr| {
        config.cluster.as_ref().is_some_and(|c| c.nodes().iter().any(|n| n.addr.ip().to_canonical() == ip))
    };
    if client.is_some_and(|ip| is_node(ip.to_canonical())) { Door::NodesOnly } else { Door::Refuse }
}

/// Counts and logs a protected-mode refusal; the reply to send.
pub(crate) fn refuse_at_door(state: &State, client: Option<IpAddr>) -> Reply<'static> {
    state.counters.protected_mode_rejections.fetch_add(1, Ordering::Relaxed);
    static PROTECTED: Limiter = Limiter::new();
    warn_limited!(PROTECTED, "protected mode refused a client from {client:?}: see docs/SECURITY.md");
    Reply::Error(ErrorKind::ProtectedMode)
}

/// A node's version-2 handshake in progress: the initiator has its challenge, and its
/// proof is the next line.
#[derive(Debug)]
pub(crate) struct Pending {
    from: Vec<u8>,
    initiator_nonce: [u8; NONCE_LEN],
    responder_nonce: [u8; NONCE_LEN],
}

/// Answers a version-1 hello: `None` (accept it) on a node with neither a secret nor a
/// password. A node peer needs no `AUTH`, so on a node with a password an unproven v1
/// hello would be a way around it.
pub(crate) fn v1_hello(state: &State, client: Option<IpAddr>) -> Option<Refusal> {
    if state.config.cluster_secret.is_some() {
        return Some(failed(state, client, Refusal::PeerSentNoSecret));
    }
    if state.config.password.is_some() {
        return Some(failed(state, client, Refusal::AuthFailed));
    }
    None
}

/// Answers a version-2 hello from node `from` with `nonce`: writes the challenge to
/// `out` and returns what to check the proof against, or the refusal.
pub(crate) fn challenge(
    state: &State,
    client: Option<IpAddr>,
    from: Vec<u8>,
    initiator_nonce: [u8; NONCE_LEN],
    out: &mut Vec<u8>,
) -> Result<Pending, Refusal> {
    let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !state.handshake_throttle.allows(ip, Instant::now()) {
        state.counters.peer_auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal::Throttled);
    }
    let Some(secret) = &state.config.cluster_secret else {
        return Err(failed(state, client, Refusal::NodeHasNoSecret));
    };
    let Ok(responder_nonce) = auth::fresh_nonce() else {
        log::error!("cannot read the kernel's random source: refusing a node handshake");
        return Err(Refusal::AuthFailed);
    };
    let pending = Pending { from, initiator_nonce, responder_nonce };
    write_challenge(out, &responder_nonce, &pending.transcript(state).proof(secret, Role::Responder));
    Ok(pending)
}

impl Pending {
    fn transcript<'a>(&'a self, state: &'a State) -> Transcript<'a> {
        Transcript {
            from: &self.from,
            to: state.config.node.as_bytes(),
            initiator_nonce: &self.initiator_nonce,
            responder_nonce: &self.responder_nonce,
        }
    }

    /// Checks the line after the challenge: the initiator's proof, or the refusal.
    pub(crate) fn check(&self, state: &State, client: Option<IpAddr>, line: &[u8]) -> Result<(), Refusal> {
        let Some(secret) = &state.config.cluster_secret else {
            return Err(Refusal::AuthFailed);
        };
        // Taken again here, not only looked at in the hello, and in one step: many
        // handshakes opened at once would otherwise all get their proofs checked on
        // one full bucket. A proof that holds gives the token back.
        let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if !state.handshake_throttle.try_take(ip, Instant::now()) {
            state.counters.peer_auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Throttled);
        }
        match parse_proof(line) {
            Some(proof) if self.transcript(state).verify(secret, Role::Initiator, &proof) => {
                state.handshake_throttle.refund(ip, Instant::now());
                Ok(())
            }
            _ => Err(refused(state, client, Refusal::AuthFailed)),
        }
    }
}

/// Counts, throttles and logs a failed node handshake; returns `refusal`.
fn failed(state: &State, client: Option<IpAddr>, refusal: Refusal) -> Refusal {
    state.handshake_throttle.failed(client.unwrap_or(IpAddr::from([0, 0, 0, 0])), Instant::now());
    refused(state, client, refusal)
}

/// Counts and logs a failed node handshake whose token is already taken.
fn refused(state: &State, client: Option<IpAddr>, refusal: Refusal) -> Refusal {
    state.counters.peer_auth_failures.fetch_add(1, Ordering::Relaxed);
    let reply = refusal.reply(&state.config.node).to_string();
    warn_limited!(PEER_AUTH_FAILED, "refused a node handshake from {client:?}: {reply}");
    refusal
}

/// A connection's standing with the client password.
#[derive(Debug)]
pub(crate) struct Password {
    /// `AUTH` succeeded, or the server has no password.
    authenticated: bool,
    /// Failed `AUTH`s on this connection.
    failures: u32,
}

impl Password {
    pub(crate) fn new(state: &State) -> Password {
        Password { authenticated: state.config.password.is_none(), failures: 0 }
    }

    /// True once `AUTH` succeeded, or when the server has no password.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// True if `command` may run now: anything once authenticated, else only `AUTH`,
    /// `PING` and `QUIT` (a node's handshake is looked at before this).
    pub(crate) fn allows(&self, command: &Command<'_>) -> bool {
        self.authenticated || matches!(command, Command::Auth { .. } | Command::Ping | Command::Quit)
    }

    /// `AUTH <attempt>`: the reply, and true if the connection is to close after it
    /// ([`MAX_AUTH_FAILURES`]). A failure waits `auth::auth_delay` first, so a guesser
    /// gets few answers a second on one connection, and the address's throttle
    /// (`auth::AUTH_RATE`) bounds them over all its connections.
    pub(crate) fn attempt(
        &mut self,
        state: &State,
        client: Option<IpAddr>,
        attempt: &[u8],
    ) -> (Reply<'static>, bool) {
        let Some(password) = &state.config.password else {
            return (Reply::Error(ErrorKind::NoPasswordSet), false);
        };
        let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        // An address past its allowance of failures gets no answer about the password,
        // right or wrong, until it has earned an attempt back; the connection keeps
        // whatever standing it had.
        let reply = if !state.auth_throttle.try_take(ip, Instant::now()) {
            Reply::Error(ErrorKind::AuthThrottled)
        } else if password.matches(attempt) {
            state.auth_throttle.refund(ip, Instant::now());
            self.authenticated = true;
            return (Reply::Ok, false);
        } else {
            self.authenticated = false;
            Reply::Error(ErrorKind::InvalidPassword)
        };
        self.failures += 1;
        state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        warn_limited!(AUTH_FAILED, "failed AUTH from {client:?} ({} on this connection)", self.failures);
        let close = self.failures >= MAX_AUTH_FAILURES;
        if !close {
            std::thread::sleep(auth::auth_delay(self.failures));
        }
        (reply, close)
    }
}
