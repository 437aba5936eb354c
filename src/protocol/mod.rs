//! The wire protocol as pure values: bytes in, [`Command`] out; [`Reply`] and
//! [`Event`] values out, written as bytes by the text door.
//!
//! This folder owns every byte kv puts on the wire and how those bytes are read back:
//! - `command.rs`: one request line to one [`Command`] ([`parse`]), and the HTTP guard;
//! - `frame.rs`: [`LineReader`], where a line starts and ends, and the line limit;
//! - `read_buffer.rs`: both doors' read buffer, inline until a read needs more;
//! - `reply.rs`: [`Reply`], [`ErrorKind`] and [`Stats`], and their text;
//! - `event.rs`: [`Event`], as a frame in a bucket's event log, a text line, a RESP message;
//! - `shape.rs`: reading replies back ([`ReplyShape`], [`reply_len`], [`ReplyLine`]),
//!   for the client, the forwarder and the bench;
//! - `hello.rs`: the node-to-node handshake line;
//! - `request.rs`: a [`Command`] as length-prefixed bytes, for batches and peer links;
//! - `peer_frame.rs`: the frames nodes exchange after the handshake;
//! - `resp_frame.rs`: the RESP door's requests: [`RespReader`] cuts a stream into
//!   commands ([`RespFrame`], [`Args`]), multibulk or inline, within the size limits;
//! - `resp_write.rs`: the RESP door's replies, RESP2 or RESP3 ([`Resp`]), as bytes;
//! - `resp_read.rs`: reading RESP replies back ([`resp_value_len`]), for tests and
//!   the bench;
//! - `reply_resp.rs`: [`Reply`] values in RESP;
//! - `gather.rs`: one RESP reply from the replies of a command's parts.
//!
//! It does no I/O beyond filling a buffer from a `Read` it is handed, starts no
//! threads and holds no locks, so all of it is tested without sockets. The contract it
//! implements is `docs/PROTOCOL.md`.

mod command;
mod event;
mod frame;
mod gather;
mod hello;
mod peer_frame;
mod read_buffer;
mod reply;
mod reply_resp;
mod request;
mod resp_frame;
mod resp_read;
mod resp_write;
mod shape;

pub use command::{Command, Words, is_http_request_line, is_space, parse, words};
pub use event::{Event, EventFrame};
pub use frame::{DEFAULT_MAX_LINE, Frame, LineReader, MAX_MAX_LINE};
pub use gather::{Gather, gather};
pub use hello::{
    AUTH_PROTOCOL_VERSION, HELLO_WORD, Hello, PEER_PROTOCOL_VERSION, Refusal, TEXT_AUTH_PROTOCOL_VERSION,
    TEXT_PEER_PROTOCOL_VERSION, auth_hello_line, check_hello, hello_line, parse_challenge, parse_proof,
    proof_line, write_challenge,
};
pub use peer_frame::{
    PeerFrame, REPLY_HEAD, begin_reply_frame, end_reply_frame, peer_frame, push_peer_frame, relay_error_line,
    reply_frame_len,
};
pub use reply::{
    Dialect, ErrorKind, Fields, Part, Reply, Stats, is_auth_failure, is_representable, is_routing_mismatch,
};
pub use reply_resp::{write_resp, write_resp_error};
pub use request::{REQUEST_HEAD, decode_request, encode_request, request_len};
pub use resp_frame::{Args, MAX_INLINE, MAX_MULTIBULK, RespFrame, RespReader};
pub use resp_read::{BadResp, resp_value_len};
pub use resp_write::{
    Resp, write_array_len, write_bulk, write_bulk_head, write_decimal, write_error, write_integer,
    write_map_len, write_nil, write_push_len, write_simple, write_verbatim,
};
pub use shape::{BadReply, ReplyLine, ReplyShape, line_len, reply_len, trim_line_end};
