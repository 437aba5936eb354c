//! Tests of `round.rs`, kept beside it so that the round itself stays one job: with
//! real worker threads and no sockets, replies in request order across workers, peers
//! and the connection's own answers, inline application, and groups gathered across
//! rounds and past their limit.

use super::*;
use crate::peer::Peers;
use crate::protocol::ErrorKind;
use std::thread::JoinHandle;

/// Real worker threads: their shared state, their inboxes (dropping which stops
/// them) and the threads.
struct Workers {
    shared: Vec<Arc<WorkerShared>>,
    inboxes: Vec<crossbeam_channel::Sender<Batch>>,
    threads: Vec<JoinHandle<()>>,
}

fn workers(count: usize) -> Workers {
    let mut shared = Vec::new();
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..count {
        let worker = Arc::new(WorkerShared::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let serving = worker.clone();
        threads.push(std::thread::spawn(move || {
            worker::run(&serving, &rx, None);
        }));
        shared.push(worker);
        inboxes.push(tx);
    }
    Workers { shared, inboxes, threads }
}

fn output(round: &mut Round<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    round.write_output(&mut out).unwrap();
    out
}

#[test]
fn a_round_makes_its_batches_at_its_first_request_for_a_worker() {
    let Workers { shared, inboxes, threads } = workers(2);
    let peers = Peers::none();
    let mut round = Round::new(&shared, inboxes.into(), Forwarder::new(&peers));
    round.set_dialect(Dialect::Resp2);
    round.push_local(Reply::Pong);
    round.flush();
    assert!(round.batches.is_empty() && round.replies.is_none(), "no batch for a local answer");
    round.push_worker(1, &crate::protocol::parse(b"CREATE b"));
    assert_eq!(round.batches.len(), 2);
    round.flush();
    // The batches were made in the dialect set before them.
    assert_eq!(output(&mut round), b"+PONG\r\n+OK\r\n");
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn replies_come_back_in_request_order_across_workers_and_local_answers() {
    let Workers { shared, inboxes, threads } = workers(2);
    let peers = Peers::none();
    let mut round = Round::new(&shared, inboxes.into(), Forwarder::new(&peers));
    round.push_worker(0, &crate::protocol::parse(b"CREATE a"));
    round.push_worker(1, &crate::protocol::parse(b"CREATE b"));
    round.push_local(Reply::Pong);
    round.push_worker(1, &crate::protocol::parse(b"PUT b k 2"));
    round.push_worker(0, &crate::protocol::parse(b"PUT a k 1"));
    round.push_local(Reply::Error(ErrorKind::LineTooLong));
    round.push_worker(0, &crate::protocol::parse(b"GET a k"));
    round.push_worker(1, &crate::protocol::parse(b"GET b k"));
    assert_eq!(round.order.len(), 8);
    round.flush();
    assert_eq!(round.order.len(), 0);
    assert_eq!(
        output(&mut round),
        b"OK\r\nOK\r\nPONG\r\nOK\r\nOK\r\nERROR line too long\r\n1\r\nOK\r\n2\r\nOK\r\n"
    );
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn inline_rounds_answer_the_same_as_worker_rounds() {
    let Workers { shared, inboxes, threads } = workers(1);
    let peers = Peers::none();
    let mut round = Round::new(&shared, inboxes.into(), Forwarder::new(&peers));
    let requests: [&[u8]; 4] = [b"CREATE a", b"PUT a k v", b"GET a k", b"DROP a"];
    for inline in [Inline::Never, Inline::IfFree, Inline::SmallRounds] {
        round.set_inline(inline);
        for line in requests {
            round.push_worker(0, &crate::protocol::parse(line));
        }
        round.flush();
        assert_eq!(output(&mut round), b"OK\r\nOK\r\nv\r\nOK\r\nOK\r\n", "inline {inline:?}");
    }
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn with_many_connections_only_one_request_rounds_are_applied_here() {
    // No worker thread: what reaches the inbox is never answered, so a reply
    // other than `worker unavailable` was applied on this thread.
    let shared = vec![Arc::new(WorkerShared::default())];
    let (tx, rx) = crossbeam_channel::unbounded();
    drop(rx);
    let peers = Peers::none();
    let mut round = Round::new(&shared, vec![tx].into(), Forwarder::new(&peers));
    round.set_inline(Inline::SmallRounds);
    round.push_worker(0, &crate::protocol::parse(b"CREATE a"));
    round.flush();
    assert_eq!(output(&mut round), b"OK\r\n");
    round.push_worker(0, &crate::protocol::parse(b"PUT a k v"));
    round.push_worker(0, &crate::protocol::parse(b"GET a k"));
    round.flush();
    assert_eq!(output(&mut round), b"ERROR worker unavailable\r\nERROR worker unavailable\r\n");
}

#[test]
fn a_worker_that_is_gone_answers_worker_unavailable() {
    let shared = vec![Arc::new(WorkerShared::default())];
    let (tx, rx) = crossbeam_channel::unbounded();
    drop(rx);
    let peers = Peers::none();
    let mut round = Round::new(&shared, vec![tx].into(), Forwarder::new(&peers));
    round.push_local(Reply::Ok);
    round.push_worker(0, &crate::protocol::parse(b"GET a k"));
    round.flush();
    assert_eq!(output(&mut round), b"OK\r\nERROR worker unavailable\r\n");
}

/// A RESP round over `shared`'s workers, with bucket `b` holding `k` = `value`.
fn resp_round_with<'a>(
    shared: &'a [Arc<WorkerShared>],
    inboxes: Inboxes,
    peers: &'a Peers,
    value: &[u8],
) -> Round<'a> {
    let mut round = Round::new(shared, inboxes, Forwarder::new(peers));
    round.set_dialect(Dialect::Resp2);
    round.push_worker(0, &Command::HSet { bucket: b"b", key: b"k", value });
    round.flush();
    assert_eq!(output(&mut round), b":1\r\n");
    round
}

#[test]
fn a_group_of_more_parts_than_a_round_holds_is_gathered_across_rounds() {
    let Workers { shared, inboxes, threads } = workers(1);
    let peers = Peers::none();
    let mut round = resp_round_with(&shared, inboxes.into(), &peers, b"v");
    let parts = 2 * MAX_REQUESTS_PER_ROUND + 88;
    round.push_local(Reply::Pong);
    round.push_group(parts, Gather::Array);
    for i in 0..parts {
        let key: &[u8] = if i % 3 == 0 { b"k" } else { b"nokey" };
        round.push_worker(0, &Command::HGet { bucket: b"b", key });
        assert!(round.order.len() < MAX_REQUESTS_PER_ROUND, "a round of {} requests", round.order.len());
    }
    round.push_local(Reply::Pong);
    round.flush();
    let mut expected = b"+PONG\r\n".to_vec();
    expected.extend_from_slice(format!("*{parts}\r\n").as_bytes());
    for i in 0..parts {
        expected.extend_from_slice(if i % 3 == 0 { b"$1\r\nv\r\n" } else { b"$-1\r\n" });
    }
    expected.extend_from_slice(b"+PONG\r\n");
    assert_eq!(output(&mut round), expected);
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

/// Regression: a group whose first part went to a peer whose exchange was full
/// flushed the round before that part, and the group was forgotten: each part
/// got its own reply, and every reply after them was out of step.
#[test]
fn a_group_whose_first_part_flushes_a_full_exchange_is_still_one_reply() {
    // The peer is a closed port: every forwarded request is answered with an error.
    let text = "me 127.0.0.1:1 a\nthem 127.0.0.1:9 b\n";
    let cluster = crate::router::Cluster::parse("test", text).unwrap();
    let peers = Peers::start(&cluster, 0, &crate::config::PeerConfig::default(), None).unwrap();
    let mut round = Round::new(&[], Vec::new().into(), Forwarder::new(&peers));
    round.set_dialect(Dialect::Resp2);
    let get = Command::HGet { bucket: b"s", key: b"k" };
    let mut singles = 0;
    while !round.forwarder.is_full_for(0, request_size(&get)) && singles < 100_000 {
        round.push_peer(0, &get);
        singles += 1;
    }
    round.push_group(2, Gather::Array);
    round.push_peer(0, &get);
    round.push_peer(0, &get);
    round.push_local(Reply::Pong);
    round.flush();
    let out = output(&mut round);
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), singles + 2, "{singles} singles, one group, one PONG");
    assert_eq!(lines[singles + 1], b"+PONG\r");
    assert!(lines[singles].starts_with(b"-ERR peer them"), "{}", String::from_utf8_lossy(lines[singles]));
}

#[test]
fn a_group_gathering_more_than_the_limit_is_answered_with_an_error_and_the_round_goes_on() {
    let Workers { shared, inboxes, threads } = workers(1);
    let value = vec![b'x'; 1024 * 1024];
    let peers = Peers::none();
    let mut round = resp_round_with(&shared, inboxes.into(), &peers, &value);
    // One part of any size is gathered whole.
    round.push_group(1, Gather::Array);
    round.push_worker(0, &Command::HGet { bucket: b"b", key: b"k" });
    round.flush();
    let whole = output(&mut round);
    assert!(whole.starts_with(b"*1\r\n$1048576\r\nx") && whole.len() == 14 + value.len() + 2);
    // Past the limit: an error in the group's place, and the next reply after it.
    let parts = MAX_GATHERED_BYTES / value.len() + 2;
    round.push_group(parts, Gather::Array);
    for _ in 0..parts {
        round.push_worker(0, &Command::HGet { bucket: b"b", key: b"k" });
    }
    round.push_local(Reply::Pong);
    round.flush();
    assert_eq!(output(&mut round), b"-ERR reply too large: over 64 MiB; ask for fewer keys\r\n+PONG\r\n");
    assert!(round.parts.is_empty() && round.gathering.is_none());
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn reads_count_against_the_reply_budget_as_the_longest_value_their_partition_holds() {
    let Workers { shared, inboxes, threads } = workers(1);
    let peers = Peers::none();
    let mut round = Round::new(&shared, inboxes.into(), Forwarder::new(&peers));
    round.limit_replies(1 << 20);
    let get = crate::protocol::parse(b"GET b k");
    round.push_worker(0, &crate::protocol::parse(b"CREATE b"));
    round.push_worker(0, &crate::protocol::parse(format!("PUT b k {}", "v".repeat(1000)).as_bytes()));
    // Small values: reads keep their full rounds.
    for _ in 0..200 {
        round.push_worker(0, &get);
    }
    assert_eq!(round.order.len(), 202, "no flush for 200 reads of 1,000 bytes");
    round.flush();
    let _ = output(&mut round);
    // A value of 1 MiB written in the round: the reads after it count as 1 MiB each.
    let big = format!("PUT b big {}", "v".repeat((1 << 20) - 16));
    round.push_worker(0, &crate::protocol::parse(big.as_bytes()));
    for _ in 0..20 {
        round.push_worker(0, &get);
    }
    assert!(round.order.len() < 20, "flushed at 16 MiB of possible replies: {}", round.order.len());
    round.flush();
    let _ = output(&mut round);
    // The partition holds it still: a new round counts its reads the same way.
    assert!(shared[0].stats.largest_value.load(Ordering::Relaxed) >= (1 << 20) - 16);
    for _ in 0..20 {
        round.push_worker(0, &get);
    }
    assert!(round.order.len() < 20, "flushed at 16 MiB of possible replies: {}", round.order.len());
    round.flush();
    let _ = output(&mut round);
    // Once it is deleted the figure falls back to the small value's size class, and
    // small reads have their full rounds again.
    round.push_worker(0, &crate::protocol::parse(b"DELETE b big"));
    round.flush();
    let _ = output(&mut round);
    assert_eq!(shared[0].stats.largest_value.load(Ordering::Relaxed), 1023);
    for _ in 0..200 {
        round.push_worker(0, &get);
    }
    assert_eq!(round.order.len(), 200, "no flush for 200 reads once the long value is gone");
    round.flush();
    drop(round);
    threads.into_iter().for_each(|t| t.join().unwrap());
}
