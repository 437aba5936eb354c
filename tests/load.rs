//! The server under load and under misbehaving clients, over real TCP: deep pipelines,
//! many concurrent clients, thousands of simultaneous connections, and clients that
//! vanish mid-request. (The connection cap itself is `tests/hardening.rs`'s.)
//! Every reply byte is checked; nothing here measures speed (that is the benchmarks'
//! job), so sizes are chosen to finish in a few seconds on a small shared machine.

mod common;

use std::thread;

use common::proc::{open_descriptors, open_file_limit_of_at_least};
use common::{
    Conn, assert_same_bytes, show, start_kv_serve, start_server, start_server_with_workers,
    wait_for_connections, wait_until,
};

#[test]
fn twenty_thousand_puts_then_gets_in_one_write_are_answered_in_order() {
    const N: usize = 20_000;
    const BUCKETS: usize = 5;
    let server = start_server_with_workers(4);
    let mut conn = Conn::connect(server.addr());
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for b in 0..BUCKETS {
        requests.extend_from_slice(format!("CREATE b{b}\r\n").as_bytes());
        expected.extend_from_slice(b"OK\r\n");
    }
    for i in 0..N {
        requests.extend_from_slice(format!("PUT b{} k{i} v{i}\r\n", i % BUCKETS).as_bytes());
        expected.extend_from_slice(b"OK\r\n");
    }
    for i in 0..N {
        requests.extend_from_slice(format!("GET b{} k{i}\r\n", i % BUCKETS).as_bytes());
        expected.extend_from_slice(format!("v{i}\r\nOK\r\n").as_bytes());
    }
    let got = conn.pipeline(requests, expected.len());
    assert_same_bytes(&got, &expected);
    // Exactly that many replies: the next request's reply comes next.
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    assert_eq!(conn.stat("keys"), N as u64);
}

#[test]
fn sixty_four_concurrent_clients_with_disjoint_keys_all_keep_their_values() {
    const CLIENTS: usize = 64;
    const ONE_BY_ONE: usize = 50;
    const PIPELINED: usize = 150;
    const BUCKETS: usize = 8;
    let server = start_server_with_workers(4);
    let addr = server.addr();
    let mut setup = Conn::connect(addr);
    for b in 0..BUCKETS {
        setup.roundtrip(format!("CREATE shared{b}\r\n").as_bytes(), b"OK\r\n");
    }
    let value = |c: usize, i: usize| format!("value-{c}-{i}");
    let key = |c: usize, i: usize| format!("shared{} c{c}-k{i}", (c + i) % BUCKETS);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                // Some requests one at a time, interleaving with the other clients...
                for i in 0..ONE_BY_ONE {
                    conn.roundtrip(format!("PUT {} {}\r\n", key(c, i), value(c, i)).as_bytes(), b"OK\r\n");
                }
                // ... and the rest as one pipeline.
                let mut requests = Vec::new();
                for i in ONE_BY_ONE..ONE_BY_ONE + PIPELINED {
                    requests.extend_from_slice(format!("PUT {} {}\r\n", key(c, i), value(c, i)).as_bytes());
                }
                let got = conn.pipeline(requests, PIPELINED * 4);
                assert_same_bytes(&got, &b"OK\r\n".repeat(PIPELINED));
                // Each client reads its own keys back before the others are done.
                for i in (0..ONE_BY_ONE + PIPELINED).step_by(7) {
                    let expected = format!("{}\r\nOK\r\n", value(c, i));
                    conn.roundtrip(format!("GET {}\r\n", key(c, i)).as_bytes(), expected.as_bytes());
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }

    // Every value of every client, read back on a fresh connection.
    let mut check = Conn::connect(addr);
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for c in 0..CLIENTS {
        for i in 0..ONE_BY_ONE + PIPELINED {
            requests.extend_from_slice(format!("GET {}\r\n", key(c, i)).as_bytes());
            expected.extend_from_slice(format!("{}\r\nOK\r\n", value(c, i)).as_bytes());
        }
    }
    let got = check.pipeline(requests, expected.len());
    assert_same_bytes(&got, &expected);
    assert_eq!(check.stat("keys"), (CLIENTS * (ONE_BY_ONE + PIPELINED)) as u64);
}

/// Also covers what this file's former 1,000-connection test checked in this process:
/// a second round of requests on every connection while all are still open, and the
/// server serving on after they close.
#[test]
fn two_thousand_simultaneous_connections_each_get_pong() {
    const CLIENTS: usize = 2_000;
    const WAVE: usize = 250;
    // This process holds the client ends; the server is a child with its own table.
    let limit = open_file_limit_of_at_least(CLIENTS as u64 + 1_000);
    assert!(limit >= CLIENTS as u64 + 500, "the open file limit ({limit}) is too low for {CLIENTS} clients");
    let server = start_kv_serve(&[]);
    let addr = server.addr();
    let mut observer = Conn::connect(addr);
    let fds_before = open_descriptors(server.pid());
    let mut conns: Vec<Conn> = Vec::with_capacity(CLIENTS);
    // In waves that fit the listen backlog, each waited for, so no SYN is dropped (a
    // dropped SYN costs the client a one-second retransmit).
    while conns.len() < CLIENTS {
        let wave = (CLIENTS - conns.len()).min(WAVE);
        conns.extend((0..wave).map(|_| Conn::connect(addr)));
        let open = conns.len() as u64 + 1;
        wait_until(&format!("the server has accepted {open} connections"), || {
            observer.stat("connections") == open
        });
    }
    // All open at once, two rounds on every one of them. The PINGs go in waves too, so
    // that 2,000 server threads waking together do not starve the other tests running
    // beside this one.
    for round in 0..2 {
        for (w, wave) in conns.chunks_mut(WAVE).enumerate() {
            for conn in wave.iter_mut() {
                conn.send(b"PING\r\n");
            }
            for (i, conn) in wave.iter_mut().enumerate() {
                let got = conn.read_exact_bytes(6);
                assert_eq!(show(&got), "PONG\\r\\n", "round {round}, connection {}", w * WAVE + i);
            }
        }
        // All of them are open at once, as the server counts them.
        let stats = observer.stats();
        assert_eq!(common::stat_of(&stats, "connections"), CLIENTS as u64 + 1, "after round {round}");
        assert_eq!(common::stat_of(&stats, "rejected_connections"), 0);
    }
    // One descriptor per connection, so the open-file limit caps connections one to one.
    let fds = open_descriptors(server.pid()) - fds_before;
    assert!(fds <= CLIENTS + 10, "{fds} more descriptors open for {CLIENTS} connections");
    drop(conns);
    wait_until("every client connection is closed", || observer.stat("connections") == 1);
    observer.roundtrip(b"PING\r\n", b"PONG\r\n");
}

#[test]
fn client_that_stops_reading_does_not_stall_others_and_its_disconnect_frees_its_connection() {
    let server = start_server();
    let addr = server.addr();
    let value = vec![b'v'; 60 * 1024];
    let mut setup = Conn::connect(addr);
    setup.roundtrip(b"CREATE big\r\n", b"OK\r\n");
    setup.roundtrip(&[&b"PUT big k "[..], &value, b"\r\n"].concat(), b"OK\r\n");
    drop(setup);

    // 500 GETs of 60 KiB ask for 30 MiB of replies, far more than the socket buffers
    // hold, and this client reads none of them.
    let mut greedy = Conn::connect(addr);
    greedy.send(&b"GET big k\r\n".repeat(500));

    // Others are served meanwhile, from the same bucket.
    let mut other = Conn::connect(addr);
    other.roundtrip(b"PING\r\n", b"PONG\r\n");
    other.roundtrip(b"GET big k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
    other.roundtrip(b"PUT big k2 x\r\n", b"OK\r\n");

    // Gone without reading: its connection thread must notice and end.
    drop(greedy);
    drop(other);
    wait_for_connections(addr, 1);
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"GET big k2\r\n", b"x\r\nOK\r\n");
    fresh.roundtrip(b"GET big k\r\n", &[&value[..], b"\r\nOK\r\n"].concat());
}

#[test]
fn client_that_drops_right_after_writing_a_pipeline_leaves_the_server_healthy() {
    let server = start_server();
    let addr = server.addr();
    let mut setup = Conn::connect(addr);
    setup.roundtrip(b"CREATE b\r\n", b"OK\r\n");
    drop(setup);
    for round in 0..5 {
        let mut conn = Conn::connect(addr);
        let mut requests = Vec::new();
        for i in 0..2_000 {
            requests.extend_from_slice(
                format!("PUT b r{round}-{i} v\r\nGET b r{round}-{i}\r\nPING\r\n").as_bytes(),
            );
        }
        conn.send(&requests);
        drop(conn);
    }
    wait_for_connections(addr, 1);
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"PING\r\n", b"PONG\r\n");
    fresh.roundtrip(b"PUT b after ok\r\n", b"OK\r\n");
    fresh.roundtrip(b"GET b after\r\n", b"ok\r\nOK\r\n");
}

#[test]
fn client_that_drops_mid_line_leaves_the_server_healthy_and_the_partial_line_unapplied() {
    let server = start_server();
    let addr = server.addr();
    let mut conn = Conn::connect(addr);
    conn.roundtrip(b"CREATE b\r\nPUT b k before\r\n", b"OK\r\nOK\r\n");
    // A line is a request only once its \n arrives.
    conn.send(b"PING\r\nPUT b k after");
    conn.expect(b"PONG\r\n");
    drop(conn);
    wait_for_connections(addr, 1);
    let mut fresh = Conn::connect(addr);
    fresh.roundtrip(b"GET b k\r\n", b"before\r\nOK\r\n");
    fresh.roundtrip(b"PING\r\n", b"PONG\r\n");

    // The same in the middle of a line over the limit.
    let mut conn = Conn::connect(addr);
    conn.send(&[&b"PUT b k "[..], &vec![b'x'; 100 * 1024]].concat());
    conn.expect(b"ERROR line too long\r\n");
    drop(conn);
    wait_for_connections(addr, 2);
    fresh.roundtrip(b"GET b k\r\n", b"before\r\nOK\r\n");
}

#[test]
fn shutdown_closes_idle_connections_and_stops_accepting() {
    let server = start_server();
    let addr = server.addr();
    let mut idle = Conn::connect(addr);
    idle.roundtrip(b"CREATE b\r\nPUT b k v\r\n", b"OK\r\nOK\r\n");
    let stopping = thread::spawn(move || server.shutdown());
    // The idle client sees its connection end (with at most a notice), not a hang.
    let rest = idle.read_to_close();
    assert!(rest.is_empty() || rest == b"ERROR shutting down\r\n", "after shutdown: {}", show(&rest));
    // And shutdown() itself comes back.
    stopping.join().unwrap();
}
