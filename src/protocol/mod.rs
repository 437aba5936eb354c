//! The wire protocol as pure values: bytes in, [`Command`] out; [`Reply`] and
//! [`Event`] values out, written as bytes by the text door.
//!
//! This folder owns every byte kv puts on the wire and how those bytes are read back:
//! - `command.rs`: one request line to one [`Command`] ([`parse`]), and the HTTP guard;
//! - `frame.rs`: [`LineReader`], where a line starts and ends, and the line limit;
//! - `reply.rs`: [`Reply`], [`ErrorKind`], [`Event`] and [`Stats`], and their text;
//! - `shape.rs`: reading replies back ([`ReplyShape`], [`reply_len`], [`ReplyLine`]),
//!   for the client, the forwarder and the bench;
//! - `hello.rs`: the node-to-node handshake line.
//!
//! It does no I/O beyond filling a buffer from a `Read` it is handed, starts no
//! threads and holds no locks, so all of it is tested without sockets. The contract it
//! implements is `docs/PROTOCOL.md`.

mod command;
mod frame;
mod hello;
mod reply;
mod shape;

pub use command::{Command, Words, is_http_request_line, is_space, parse, words};
pub use frame::{DEFAULT_MAX_LINE, Frame, LineReader, MAX_MAX_LINE};
pub use hello::{
    AUTH_PROTOCOL_VERSION, HELLO_WORD, Hello, PEER_PROTOCOL_VERSION, Refusal, auth_hello_line, check_hello,
    hello_line, parse_challenge, parse_proof, proof_line, write_challenge,
};
pub(crate) use reply::DROPPED_LINE;
pub use reply::{ErrorKind, Event, Reply, Stats, is_auth_failure, is_routing_mismatch};
pub use shape::{BadReply, ReplyLine, ReplyShape, line_len, reply_len, trim_line_end};
