//! The RESP door from a test's side: a server with the door open, the `redis` crate's
//! connections to it in RESP2 or RESP3, commands framed by hand for raw [`Conn`]s,
//! one reply frame read off a raw connection, and where a child `kv` opened its door.
//!
//! Raw frames are for what the tests assert byte for byte (pub/sub frames, protocol
//! errors, closes); the `redis` crate is for what a real client library sees.

use std::net::SocketAddr;
use std::time::Duration;

use kv::{Config, ServerHandle};

use super::{ChildServer, Conn, DEADLINE, start_server_with, wait_until};

/// Which RESP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    /// Both, for tests run once per version.
    pub const BOTH: [Proto; 2] = [Proto::Resp2, Proto::Resp3];
}

/// An in-process server with the RESP door on a free port, two workers and `config`'s
/// other settings (its `port` and `resp_port` are overridden to 0).
pub fn start_resp_server_with(config: Config) -> ServerHandle {
    start_server_with(Config { port: 0, resp_port: Some(0), ..config })
}

/// [`start_resp_server_with`] the defaults and two workers.
pub fn start_resp_server() -> ServerHandle {
    start_resp_server_with(Config { workers: 2, ..Config::default() })
}

/// The RESP door's address of an in-process server.
pub fn resp_addr(server: &ServerHandle) -> SocketAddr {
    server.resp_addr().expect("the server has a RESP door")
}

/// The address a child `kv` logged its RESP door at (`kv's RESP door listening on
/// ADDR`), waiting for the line.
pub fn child_resp_addr(node: &ChildServer) -> SocketAddr {
    const NEEDLE: &str = "RESP door listening on ";
    let mut addr = None;
    wait_until("the child logs its RESP door's address", || {
        addr = node.log_lines_with(NEEDLE).first().and_then(|line| {
            let rest = line.split_once(NEEDLE)?.1;
            rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
        });
        addr.is_some()
    });
    addr.unwrap()
}

/// A `redis` crate connection to `addr` speaking `proto` (RESP3 opens with `HELLO 3`),
/// every read and write bounded by [`DEADLINE`].
pub fn redis_connection(addr: SocketAddr, proto: Proto) -> redis::Connection {
    redis_client(addr, proto, None)
        .get_connection_with_timeout(DEADLINE)
        .expect("connect with the redis crate")
}

/// A `redis` crate client for `addr` in `proto`, with `password` if given.
pub fn redis_client(addr: SocketAddr, proto: Proto, password: Option<&str>) -> redis::Client {
    let query = match proto {
        Proto::Resp2 => "",
        Proto::Resp3 => "?protocol=resp3",
    };
    let auth = password.map(|p| format!("default:{p}@")).unwrap_or_default();
    let url = format!("redis://{auth}{addr}/{query}");
    redis::Client::open(url.as_str()).expect("a valid redis URL")
}

/// Bounds a `redis` crate connection's reads and writes by [`DEADLINE`].
pub fn bound(connection: &redis::Connection) {
    connection.set_read_timeout(Some(DEADLINE)).unwrap();
    connection.set_write_timeout(Some(DEADLINE)).unwrap();
}

/// One command as a RESP multibulk: `*<n>\r\n` and a bulk per argument.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One bulk string reply: `$<len>\r\n<bytes>\r\n`.
pub fn bulk(bytes: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", bytes.len()).as_bytes(), bytes, b"\r\n"].concat()
}

/// Reads one complete reply frame off `conn` (any RESP2 or RESP3 type, nested ones
/// whole) and returns its bytes.
pub fn read_frame(conn: &mut Conn) -> Vec<u8> {
    let mut frame = Vec::new();
    read_frame_into(conn, &mut frame, 0);
    frame
}

fn read_frame_into(conn: &mut Conn, frame: &mut Vec<u8>, depth: usize) {
    assert!(depth < 16, "reply nested too deep: {}", super::show(frame));
    let line = conn.read_line();
    frame.extend_from_slice(&line);
    let number = || -> i64 {
        let text = std::str::from_utf8(&line[1..]).expect("a header is text");
        text.trim_end().parse().unwrap_or_else(|_| panic!("bad header {text:?}"))
    };
    match line.first() {
        Some(b'$' | b'=' | b'!') => {
            let len = number();
            if len >= 0 {
                frame.extend_from_slice(&conn.read_exact_bytes(len as usize + 2));
            }
        }
        Some(b'*' | b'~' | b'>') => {
            for _ in 0..number().max(0) {
                read_frame_into(conn, frame, depth + 1);
            }
        }
        Some(b'%' | b'|') => {
            for _ in 0..2 * number().max(0) {
                read_frame_into(conn, frame, depth + 1);
            }
        }
        _ => {}
    }
}

/// A raw connection to a RESP door that has said `HELLO 3` (its reply read and
/// dropped), or a fresh one for RESP2.
pub fn raw_resp_conn(addr: SocketAddr, proto: Proto) -> Conn {
    let mut conn = Conn::connect(addr);
    if proto == Proto::Resp3 {
        conn.send(&command(&[b"HELLO", b"3"]));
        let hello = read_frame(&mut conn);
        assert!(hello.starts_with(b"%7\r\n"), "HELLO 3 answered {}", super::show(&hello));
    }
    conn
}

/// How long a test waits to be sure a reply is not coming (a bounded wait on silence).
pub const SILENCE: Duration = Duration::from_millis(300);
