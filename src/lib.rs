//! kv: a small distributed key-value server, the one of Elixir's *Mix and OTP* guide
//! rebuilt as synchronous Rust.
//!
//! One request's path, and the file that owns each step:
//!
//! ```text
//!  client ──TCP──▶ connection thread ──Batch──▶ worker thread ──lock──▶ partition
//!  (nc, kv cli)    server.rs: read, frame,      worker.rs: apply a     store.rs:
//!                  parse (protocol.rs), group   whole batch under      buckets of
//!                  by worker, reorder replies   one lock, reply        key-value pairs
//!        ◀──────── one write per read ◀──────── Batch back ◀──────────
//! ```
//!
//! - [`protocol`]: bytes to [`Command`](protocol::Command), replies to bytes, the line
//!   reader and its limit. Pure.
//! - [`store`]: [`Partition`](store::Partition) and [`Bucket`](store::Bucket). Plain data.
//! - [`worker`]: the worker loop, the [`Batch`](worker::Batch) that carries requests
//!   and replies, and which worker owns a bucket.
//! - [`router`]: the static cluster description and the route table: first byte of a
//!   bucket name -> this node, a peer, or nobody.
//! - [`peer`]: forwarding requests to the node that owns their bucket: pooled
//!   connections, timeouts, marking peers down and probing them back up.
//! - [`server`]: the listener, connection threads, limits and shutdown.
//! - [`subscribe`]: SUBSCRIBE's event streams, never able to slow a worker down.
//! - [`supervisor`]: starts, watches and restarts the workers and the acceptor.
//! - [`signals`]: SIGINT and SIGTERM as a graceful shutdown.
//! - [`top`]: `kv top`, a live terminal view built on STATS.
//! - [`client`]: the blocking [`Client`] used by `kv cli`, the tests and the bench.
//!
//! Each worker owns a fixed partition of the buckets (chosen by a hash of the bucket
//! name), held in an `Arc` behind a lock so that the data outlives the thread that
//! serves it. A connection sends each worker at most one batch per read, so a deep
//! pipeline costs one cross-thread round trip per worker, not one per request.

pub mod client;
pub mod peer;
pub mod protocol;
pub mod router;
pub mod server;
pub mod signals;
pub mod store;
pub mod subscribe;
pub mod supervisor;
pub mod top;
pub mod worker;

pub use client::Client;
pub use server::{Config, Server, ServerHandle, Stopper};
pub use supervisor::StopReason;
