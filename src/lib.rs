//! kv: a small distributed key-value server, the one of Elixir's *Mix and OTP* guide
//! rebuilt as synchronous Rust.
//!
//! One request's path, and the file that owns each step:
//!
//! ```text
//!  client ─TCP─▶ acceptor.rs ─▶ connection.rs ─▶ round.rs ──Batch──▶ worker.rs ─▶ apply.rs ─▶ store/
//!  (nc, kv cli)  a thread per   read, frame,     group by owner,      under the    one place    buckets of
//!                connection     parse, dispatch  send, collect,       lock         per request  key-value
//!                               (protocol/)      reorder              (batch.rs)   (persist/)   pairs
//!        ◀────── one write per read ◀──────────── replies in request order ◀──────
//!                                                 └─▶ forward.rs ─▶ peer/ (buckets other
//!                                                     nodes own, router.rs says which)
//! ```
//!
//! - [`protocol`]: bytes to [`Command`](protocol::Command), [`Reply`](protocol::Reply)
//!   and [`Event`](protocol::Event) values to bytes, reading replies back. Pure.
//! - [`store`]: [`Partition`](store::Partition) and [`Bucket`](store::Bucket). Plain data.
//! - [`apply`]: where every request meets the partition, the one place each mutation
//!   passes.
//! - [`persist`]: with `--data-dir`, each partition's log and its snapshots, loading at
//!   start; the flusher and compactor threads behind it are crate-internal.
//! - [`batch`] and [`worker`]: the batch a connection sends a worker, and the worker
//!   loop.
//! - [`subscribe`]: SUBSCRIBE's event streams, never able to slow a worker down.
//! - [`supervisor`]: starts, watches and restarts the workers and the acceptor.
//! - [`router`]: the static cluster description: first byte of a bucket -> its node.
//! - [`config`]: [`Config`], its defaults and [`ConfigError`].
//! - [`auth`]: who may talk to kv (docs/SECURITY.md): the cluster secret and the node
//!   handshake's proofs, passwords, protected mode's rule, the handshake throttle. Pure;
//!   `gate.rs` applies it to a client connection, `peer/handshake.rs` to a peer one.
//! - [`server`]: binding, starting and stopping a server; the acceptor, connections,
//!   rounds, STATS, forwarding and peers behind it are crate-internal, and so is
//!   `shutdown.rs`, which closes the connections at a stop without losing a reply.
//! - [`client`]: the blocking [`Client`] used by `kv cli`, the tests and the bench.
//! - [`signals`] and [`sys`]: the process-wide effects, which only the binary asks for.
//! - `logcap`: warnings clients and peers can provoke, cut short and rate-limited.
//! - `resp/`: the RESP door (`--resp-port`), Redis clients on the same path;
//!   `door.rs`: how both doors' connection loops read requests.
//!
//! Each worker owns a fixed partition of the buckets (chosen by a hash of the bucket
//! name), held in an `Arc` behind a lock so that the data outlives the thread that
//! serves it. A connection sends each worker at most one batch per read, so a deep
//! pipeline costs one cross-thread round trip per worker, not one per request.

pub mod apply;
pub mod auth;
pub mod batch;
pub mod client;
pub mod config;
pub mod persist;
pub mod protocol;
pub mod router;
pub mod server;
pub mod signals;
pub mod store;
pub mod subscribe;
pub mod supervisor;
pub mod sys;
pub mod worker;

mod acceptor;
mod connection;
mod door;
mod forward;
mod gate;
mod housekeeping;
mod logcap;
mod peer;
mod resp;
mod round;
mod shutdown;
mod socket;
mod state;
mod stats;

pub use client::Client;
pub use config::{Config, ConfigError, PeerConfig};
/// Failed exchanges in a row after which a peer is marked down.
pub use peer::DOWN_AFTER_FAILURES;
pub use server::{Server, ServerHandle, Stopper};
pub use supervisor::StopReason;
