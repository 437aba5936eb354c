//! Signing the bench's connections in to a server that has a password
//! (`kv serve --password-file`, or Redis's `requirepass`): each sends `AUTH` in the
//! run's protocol before any load, and the run stops with the server's answer if it
//! is not OK, rather than counting every request after it as an error.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::args::BenchError;
use super::wire::Proto;

/// How long the server has to answer `AUTH`.
const LOGIN_WAIT: Duration = Duration::from_secs(5);

/// Longest answer read: any real one is a short line.
const MAX_ANSWER: usize = 4096;

/// The `AUTH` request with `password`, in `proto`; `None` where the protocol has none.
pub(crate) fn auth_request(proto: Proto, password: &[u8]) -> Option<Vec<u8>> {
    match proto {
        Proto::Kv => Some([b"AUTH ", password, b"\r\n"].concat()),
        Proto::Redis => {
            let mut request = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", password.len()).into_bytes();
            request.extend_from_slice(password);
            request.extend_from_slice(b"\r\n");
            Some(request)
        }
        Proto::Memcached => None,
    }
}

/// Sends `request` (from [`auth_request`]) on `stream` and waits for an OK.
pub(crate) fn log_in(stream: &mut TcpStream, request: &[u8]) -> Result<(), BenchError> {
    stream.write_all(request).map_err(|error| BenchError(format!("sending AUTH: {error}")))?;
    let answer =
        read_line(stream).map_err(|error| BenchError(format!("waiting for AUTH's answer: {error}")))?;
    match answer.as_slice() {
        b"OK\r\n" | b"+OK\r\n" => Ok(()),
        other => Err(BenchError(format!("AUTH refused: {}", String::from_utf8_lossy(other).trim_end()))),
    }
}

/// Reads one line, `\n` included, within [`LOGIN_WAIT`]. The stream's read timeout is
/// the bench's short poll, so a timeout is only the end of a wait.
fn read_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + LOGIN_WAIT;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        if line.len() >= MAX_ANSWER || Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no whole answer"));
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => line.push(byte[0]),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_is_a_line_for_kv_an_array_for_redis_and_absent_for_memcached() {
        assert_eq!(auth_request(Proto::Kv, b"hunter2").unwrap(), b"AUTH hunter2\r\n");
        assert_eq!(auth_request(Proto::Redis, b"a b").unwrap(), b"*2\r\n$4\r\nAUTH\r\n$3\r\na b\r\n");
        assert!(auth_request(Proto::Memcached, b"x").is_none());
    }
}
