//! SUBSCRIBE on one node: the stream's exact bytes, where it starts, and that a
//! subscriber who stops reading is dropped without slowing the writers.

mod common;

use std::thread;

use common::{Conn, start_server_with, wait_until};
use kv::Config;

fn server(subscriber_backlog: usize) -> kv::ServerHandle {
    start_server_with(Config { port: 0, workers: 2, subscriber_backlog, ..Config::default() })
}

#[test]
fn subscribe_to_a_missing_bucket_is_not_found_and_the_connection_serves_on() {
    let server = server(kv::config::DEFAULT_SUBSCRIBER_BACKLOG);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"SUBSCRIBE nowhere\r\n", b"NOT FOUND\r\n");
    conn.roundtrip(b"PING\r\n", b"PONG\r\n");
    conn.roundtrip(b"subscribe\r\n", b"UNKNOWN COMMAND\r\n");
}

#[test]
fn every_put_and_delete_after_subscribe_streams_in_order_none_missing_none_twice() {
    let server = server(kv::config::DEFAULT_SUBSCRIBER_BACKLOG);
    let mut writer = Conn::connect(server.addr());
    writer.roundtrip(b"CREATE s\r\nPUT s before 0\r\n", b"OK\r\nOK\r\n");

    let mut subscriber = Conn::connect(server.addr());
    // The PUT before SUBSCRIBE in the same write is answered and not streamed; the
    // line after SUBSCRIBE is ignored, not run.
    subscriber.send(b"PUT s mine 1\r\nSUBSCRIBE s\r\nPUT s ignored 1\r\n");
    subscriber.expect(b"OK\r\n");
    wait_until("the subscription is registered", || writer.stat("subscribers") == 1);

    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2_000 {
        if i % 3 == 2 {
            requests.extend_from_slice(format!("DELETE s k{}\r\n", i - 1).as_bytes());
            expected.extend_from_slice(format!("k{} DELETED\r\n", i - 1).as_bytes());
        } else {
            requests.extend_from_slice(format!("PUT s k{i} v{i}\r\n").as_bytes());
            expected.extend_from_slice(format!("k{i} SET TO v{i}\r\n").as_bytes());
        }
    }
    // A DELETE of a key that is not there is still a DELETE on the bucket.
    requests.extend_from_slice(b"DELETE s never-there\r\n");
    expected.extend_from_slice(b"never-there DELETED\r\n");
    // Writes to other buckets are not part of the stream.
    requests.extend_from_slice(b"CREATE other\r\nPUT other k v\r\n");
    let replies = writer.pipeline(requests, 2_000 * 4 + 4 + 8);
    assert!(replies.iter().all(|&b| b"OK\r\n".contains(&b)));

    subscriber.expect(&expected);
    writer.roundtrip(b"GET s ignored\r\n", b"\r\nOK\r\n");
    writer.roundtrip(b"GET s mine\r\n", b"1\r\nOK\r\n");
}

#[test]
fn two_subscribers_of_one_bucket_see_the_same_stream() {
    let server = server(kv::config::DEFAULT_SUBSCRIBER_BACKLOG);
    let mut writer = Conn::connect(server.addr());
    writer.roundtrip(b"CREATE s\r\n", b"OK\r\n");
    let mut first = Conn::connect(server.addr());
    let mut second = Conn::connect(server.addr());
    first.send(b"SUBSCRIBE s\r\n");
    second.send(b"subscribe s\r\n");
    wait_until("both subscriptions are registered", || writer.stat("subscribers") == 2);
    writer.roundtrip(b"PUT s a 1\r\nDELETE s a\r\n", b"OK\r\nOK\r\n");
    first.expect(b"a SET TO 1\r\na DELETED\r\n");
    second.expect(b"a SET TO 1\r\na DELETED\r\n");
}

#[test]
fn a_subscriber_that_closes_is_forgotten() {
    let server = server(kv::config::DEFAULT_SUBSCRIBER_BACKLOG);
    let mut writer = Conn::connect(server.addr());
    writer.roundtrip(b"CREATE s\r\n", b"OK\r\n");
    let mut subscriber = Conn::connect(server.addr());
    subscriber.send(b"SUBSCRIBE s\r\n");
    wait_until("the subscription is registered", || writer.stat("subscribers") == 1);
    drop(subscriber);
    let mut n = 0;
    wait_until("the closed subscriber is removed", || {
        n += 1;
        writer.roundtrip(format!("PUT s k {n}\r\n").as_bytes(), b"OK\r\n");
        writer.stat("subscribers") == 0
    });
    assert_eq!(writer.stat("subscribers_dropped"), 0, "a clean close is not a drop");
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_and_writers_complete() {
    // A small backlog so that the test needs only a few MiB of writes to overflow
    // the subscriber's backlog plus the kernel's socket buffers.
    let server = server(64 * 1024);
    let addr = server.addr();
    let mut setup = Conn::connect(addr);
    setup.roundtrip(b"CREATE s\r\n", b"OK\r\n");
    let mut stuck = Conn::connect(addr);
    stuck.send(b"SUBSCRIBE s\r\n");
    wait_until("the subscription is registered", || setup.stat("subscribers") == 1);

    let value = "v".repeat(1_000);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let value = value.clone();
            thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                for round in 0..20 {
                    let mut requests = Vec::new();
                    for i in 0..200 {
                        requests.extend_from_slice(format!("PUT s w{w}-{round}-{i} {value}\r\n").as_bytes());
                    }
                    let replies = conn.pipeline(requests, 200 * 4);
                    assert_eq!(replies, b"OK\r\n".repeat(200));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("every write completes");
    }
    // 16,000 events of about 1 KiB each cannot all fit in 64 KiB of backlog plus the
    // socket buffers: the stuck subscriber must have been dropped, not waited for.
    wait_until("the stuck subscriber is dropped", || setup.stat("subscribers_dropped") == 1);
    assert_eq!(setup.stat("subscribers"), 0);
    assert_eq!(setup.stat("keys"), 16_000);
    // Its connection is closed once it has read what was already in flight.
    let (_, _) = stuck.read_until_gone();
}
