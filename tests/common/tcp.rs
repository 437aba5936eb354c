//! A TCP connection as the kernel sees it, for tests about what reaches a client:
//! a client socket with a receive buffer fixed before it connects (so a client that
//! does not read stops the server's sending after a known amount), and the server's
//! side of a connection as `/proc/net/tcp` lists it (its state and how many bytes it
//! has sent that the client has not acknowledged). Linux only, as those tests are.
//!
//! Setting a socket option before `connect` has no std API, so this file calls libc
//! and is exempt from the crate's `unsafe_code` lint, as `src/sys.rs` is.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;

/// The kernel's number for `ESTABLISHED`: both sides may send.
pub const ESTABLISHED: u8 = 1;
/// The kernel's number for `FIN_WAIT1`: our FIN is sent or queued, not acknowledged.
pub const FIN_WAIT1: u8 = 4;

/// Connects to `addr` (IPv4) from a socket whose receive buffer was set to `bytes`
/// before the handshake, so the window it offers never grows past what that buffer
/// holds.
pub fn connect_with_receive_buffer(addr: SocketAddrV4, bytes: usize) -> TcpStream {
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a new socket no one else owns; the stream closes it when dropped.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let value = libc::c_int::try_from(bytes).unwrap();
    // SAFETY: SO_RCVBUF reads one int from a pointer valid for its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `to` is a valid sockaddr_in and the length is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect to {addr}: {}", io::Error::last_os_error());
    stream
}

/// The server's side of the connection from `client` to `server`, as `/proc/net/tcp`
/// lists it: its state and the bytes it sent that the client's kernel has not
/// acknowledged (a FIN counts as one). `None` when it is not listed (closed for good).
pub fn server_side(server: SocketAddr, client: SocketAddr) -> Option<(u8, u64)> {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (parse_addr(fields.get(1)?)?, parse_addr(fields.get(2)?)?);
        if local != server || remote != client {
            return None;
        }
        let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
        let tx_queue = u64::from_str_radix(fields.get(4)?.split(':').next()?, 16).ok()?;
        Some((state, tx_queue))
    })
}

/// `0100007F:1F90` (the address as the kernel stores it, then the port) as an address.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The address is printed as the integer its network-order bytes make on this host.
    Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
}
