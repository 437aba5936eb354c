//! Every `kv::` path below the crate root that the tests use, re-exported from one
//! place. The crate root's `kv::Config`, `kv::Server`, `kv::ServerHandle`,
//! `kv::Client` and `kv::StopReason` are used directly; anything deeper is reached
//! through here, so when `src/` moves one of these, the fix is one line in this file.
//! (`tests/fuzzing/mod.rs` names `kv::protocol` itself: the `cargo fuzz` target
//! includes that file by path, outside this module.)

/// How many failed exchanges in a row mark a peer down.
pub use kv::DOWN_AFTER_FAILURES;
/// How a node talks to its peers: timeouts and back-off.
pub use kv::PeerConfig;
/// Node authentication and client passwords (issue 14): secrets, the handshake's
/// proofs and the throttle's figures, for tests that play a node.
pub use kv::auth::{
    AUTH_BURST, AUTH_RATE, HANDSHAKE_BURST, HANDSHAKE_RATE, NONCE_LEN, Role, Secret, Transcript,
};
/// The stack size of a connection thread (`tests/connection_stack.rs` and the
/// deepest-paths test in `tests/hardening.rs` exercise it).
pub use kv::config::CONNECTION_STACK_SIZE;
/// How many bytes of events a subscriber may fall behind before it is dropped.
pub use kv::config::DEFAULT_SUBSCRIBER_BACKLOG;
/// The protocol's default line limit.
pub use kv::protocol::DEFAULT_MAX_LINE;
/// The reply shapes `kv::Client::read_reply` reads.
pub use kv::protocol::ReplyShape;
/// Requests as values, and the frames nodes send them in after the handshake.
pub use kv::protocol::{Command, Dialect, push_peer_frame};
/// The authenticated handshake's lines (version 4; tests make version 2 from it).
pub use kv::protocol::{auth_hello_line, parse_challenge, proof_line};
/// A parsed cluster file.
pub use kv::router::Cluster;
/// Which worker of `n` owns a bucket.
pub use kv::worker::worker_for;
/// Which worker of `n` owns a bucket in a child kv whose data directory holds the
/// seed it places buckets with (`stored_seed`).
pub use kv::{persist::stored_seed, worker::worker_for_seed};
