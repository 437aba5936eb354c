//! Soak: many kinds of client against one server for a while, then proof that no
//! acknowledged write was lost.
//!
//! Writers pipeline (1, 16 or up to 200 requests at a time) PUTs, GETs and DELETEs on
//! keys of their own, and every so often leave mid-pipeline: after reading only some
//! replies, in the middle of a line, or with a QUIT followed by requests that must never
//! run. Others open and drop connections, or poll STATS and check it makes sense. Every
//! key is written by one session of one client only, so its fate is exact: the server
//! applies one connection's writes to a key in order, so the final value must be the
//! state after some prefix of that key's writes that includes every acknowledged one.
//! GETs inside a session must return exactly what the session wrote before them.
//!
//! `soak_briefly` runs a few seconds in every `cargo test`; `soak_for_a_minute` is the
//! same code for 60 s (or `KV_SOAK_SECS`), run with `cargo test --test soak -- --ignored`.

mod common;

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kv::Config;

use common::fuzzing::Rng;
use common::{Conn, assert_same_bytes_in, show, start_server_with, wait_for_connections};

#[test]
fn soak_briefly() {
    soak(Duration::from_secs(3), 0x50a6);
}

#[test]
#[ignore = "runs for a minute; run with `cargo test --test soak -- --ignored`"]
fn soak_for_a_minute() {
    let secs = std::env::var("KV_SOAK_SECS").ok().and_then(|secs| secs.parse().ok()).unwrap_or(60);
    soak(Duration::from_secs(secs), 0x50a7);
}

const BUCKETS: usize = 4;
const KEYS_PER_SESSION: usize = 24;

/// Everything one key went through.
struct KeyHistory {
    bucket: usize,
    key: String,
    /// `states[0]` is "never written"; `states[i]` the value after the i-th write
    /// sent whole (`None`: deleted). Once the session is over, trimmed to start at the
    /// state after the last acknowledged write.
    states: Vec<Option<Vec<u8>>>,
    /// How many of those writes were acknowledged (0 once trimmed).
    acked: usize,
}

/// How a pipeline ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every reply is read.
    Full,
    /// Some replies are read, then the client disconnects.
    DropAfterReading,
    /// The last request is cut in the middle of its line, then the client disconnects.
    CutMidLine,
    /// A QUIT in the middle: the requests after it must never run.
    Quit,
}

#[derive(Default, Debug)]
struct Tally {
    sessions: usize,
    requests_acked: u64,
    endings: [usize; 4],
}

/// Who is writing: names the values written and the failures reported.
#[derive(Debug, Clone, Copy)]
struct SessionId {
    client: usize,
    session: usize,
}

/// One pipeline, planned in full before any of it is sent.
struct Pipeline {
    ending: Ending,
    /// Requests planned, including any never sent whole.
    n: usize,
    /// The requests sent whole, then the bytes that follow them.
    requests: Vec<u8>,
    after: Vec<u8>,
    /// The reply to each request sent whole, and the write it makes (key index).
    replies: Vec<Vec<u8>>,
    writes: Vec<Option<usize>>,
    /// How many replies are read before the pipeline ends.
    to_read: usize,
}

/// One client: sessions one after another until `until`, pipelines of at most `depth`.
fn writer(
    addr: SocketAddr,
    client: usize,
    depth: usize,
    seed: u64,
    until: Instant,
) -> (Vec<KeyHistory>, Tally) {
    let mut rng = Rng::new(seed);
    let mut histories = Vec::new();
    let mut tally = Tally::default();
    let mut session = 0;
    while Instant::now() < until {
        session += 1;
        tally.sessions += 1;
        let bucket = rng.below(BUCKETS);
        let first = histories.len();
        histories.extend((0..KEYS_PER_SESSION).map(|k| KeyHistory {
            bucket,
            key: format!("c{client}s{session}k{k}"),
            states: vec![None],
            acked: 0,
        }));
        let id = SessionId { client, session };
        run_session(addr, id, depth, &mut rng, &mut histories[first..], &mut tally);
        // Only the states from the last acknowledged write on can still be seen.
        for history in &mut histories[first..] {
            history.states.drain(..history.acked);
            history.acked = 0;
        }
    }
    (histories, tally)
}

/// One session on one connection: pipelines on `keys` until the session's budget of
/// operations is spent, or a pipeline ends it early.
fn run_session(
    addr: SocketAddr,
    id: SessionId,
    depth: usize,
    rng: &mut Rng,
    keys: &mut [KeyHistory],
    tally: &mut Tally,
) {
    let mut conn = Conn::connect(addr);
    let mut op = 0;
    // Long enough sessions that connections come and go by the hundred per second,
    // not the thousand: each clean close leaves a TIME_WAIT port behind.
    let budget = rng.between(500, 5_000);
    // One deep pipeline in about twenty, one single request in about a hundred
    // and fifty, ends early.
    let early = if depth == 1 { 2 } else { 15 };
    loop {
        let pipeline = plan_pipeline(rng, keys, id, depth, early, &mut op);
        tally.endings[pipeline.ending as usize] += 1;
        let sending = send_in_background(&conn, &pipeline);
        read_replies(&mut conn, &pipeline, keys, id, tally);
        if !end_pipeline(&mut conn, pipeline.ending, sending, op >= budget) {
            break;
        }
    }
}

/// Draws how the next pipeline ends, how long it is, its requests (numbered on from
/// `op`), what follows them and how many replies to read, in that order.
fn plan_pipeline(
    rng: &mut Rng,
    keys: &mut [KeyHistory],
    id: SessionId,
    depth: usize,
    early: usize,
    op: &mut usize,
) -> Pipeline {
    let ending = match rng.below(1_000) {
        x if x < early => Ending::DropAfterReading,
        x if x < 2 * early => Ending::CutMidLine,
        x if x < 3 * early => Ending::Quit,
        _ => Ending::Full,
    };
    let n = rng.between(1, depth);
    let whole = match ending {
        Ending::CutMidLine | Ending::Quit => rng.below(n + 1),
        _ => n,
    };
    let mut pipeline = Pipeline {
        ending,
        n,
        requests: Vec::new(),
        after: Vec::new(),
        replies: Vec::new(),
        writes: Vec::new(),
        to_read: 0,
    };
    for _ in 0..whole {
        *op += 1;
        plan_request(rng, keys, id, *op, &mut pipeline);
    }
    pipeline.after = bytes_after_requests(rng, keys, ending, *op);
    pipeline.to_read = match ending {
        Ending::DropAfterReading => rng.below(n),
        Ending::CutMidLine => rng.below(whole + 1),
        Ending::Full | Ending::Quit => whole,
    };
    pipeline
}

/// Adds operation `op` to the pipeline: a PUT, GET or DELETE of a random key of the
/// session, with the reply it must get and the write it makes.
fn plan_request(rng: &mut Rng, keys: &mut [KeyHistory], id: SessionId, op: usize, pipeline: &mut Pipeline) {
    let SessionId { client, session } = id;
    let k = rng.below(KEYS_PER_SESSION);
    let history = &mut keys[k];
    let current = history.states.last().unwrap().clone();
    let name = format!("soak{} {}", history.bucket, history.key);
    match rng.below(100) {
        0..=44 => {
            let mut value = format!("v{client}.{session}.{op}").into_bytes();
            if rng.chance(1) {
                value.extend(std::iter::repeat_n(b'x', rng.between(1_000, 8_000)));
            }
            pipeline.requests.extend_from_slice(format!("PUT {name} ").as_bytes());
            pipeline.requests.extend_from_slice(&value);
            pipeline.requests.extend_from_slice(b"\r\n");
            history.states.push(Some(value));
            pipeline.replies.push(b"OK\r\n".to_vec());
            pipeline.writes.push(Some(k));
        }
        45..=79 => {
            pipeline.requests.extend_from_slice(format!("GET {name}\r\n").as_bytes());
            pipeline.replies.push([current.as_deref().unwrap_or(b""), b"\r\nOK\r\n"].concat());
            pipeline.writes.push(None);
        }
        _ => {
            pipeline.requests.extend_from_slice(format!("DELETE {name}\r\n").as_bytes());
            history.states.push(None);
            pipeline.replies.push(b"OK\r\n".to_vec());
            pipeline.writes.push(Some(k));
        }
    }
}

/// What follows the requests sent whole: part of a line for `CutMidLine`, a QUIT and
/// requests that must never run for `Quit`, nothing otherwise.
fn bytes_after_requests(rng: &mut Rng, keys: &[KeyHistory], ending: Ending, op: usize) -> Vec<u8> {
    let mut after = Vec::new();
    match ending {
        Ending::CutMidLine => {
            let line = format!("PUT soak{} {} never-{op}\r\n", keys[0].bucket, keys[0].key);
            after.extend_from_slice(&line.as_bytes()[..rng.below(line.len() - 1)]);
        }
        Ending::Quit => {
            after.extend_from_slice(if rng.chance(50) { b"QUIT\r\n" } else { b"quit\n" });
            for k in 0..rng.below(20) {
                let history = &keys[k % KEYS_PER_SESSION];
                let line = format!("PUT soak{} {} after-quit\r\n", history.bucket, history.key);
                after.extend_from_slice(line.as_bytes());
            }
        }
        Ending::Full | Ending::DropAfterReading => {}
    }
    after
}

/// Sends the whole pipeline from another thread, so that a pipeline larger than the
/// socket buffers cannot deadlock against our reading.
fn send_in_background(conn: &Conn, pipeline: &Pipeline) -> JoinHandle<io::Result<()>> {
    let mut stream = conn.try_clone_stream();
    let bytes = [pipeline.requests.as_slice(), pipeline.after.as_slice()].concat();
    thread::spawn(move || stream.write_all(&bytes))
}

/// Reads the replies the pipeline plans to read, each exactly as expected, and counts
/// every one read as acknowledged.
fn read_replies(
    conn: &mut Conn,
    pipeline: &Pipeline,
    keys: &mut [KeyHistory],
    id: SessionId,
    tally: &mut Tally,
) {
    let SessionId { client, session } = id;
    let n = pipeline.n;
    for (i, reply) in pipeline.replies.iter().take(pipeline.to_read).enumerate() {
        let got = conn.read_exact_bytes(reply.len());
        assert_same_bytes_in(&got, reply, &format!("client {client} session {session}: reply {i} of {n}"));
        tally.requests_acked += 1;
        if let Some(k) = pipeline.writes[i] {
            keys[k].acked += 1;
        }
    }
}

/// Ends the pipeline as planned once its replies are read; true if the session goes on
/// with another pipeline.
fn end_pipeline(
    conn: &mut Conn,
    ending: Ending,
    sending: JoinHandle<io::Result<()>>,
    budget_spent: bool,
) -> bool {
    match ending {
        Ending::Full => {
            sending.join().unwrap().expect("send a pipeline");
            // Once the budget is spent, a clean disconnect between pipelines.
            !budget_spent
        }
        Ending::Quit => {
            assert_eq!(show(&conn.read_exact_bytes(4)), "OK\\r\\n", "QUIT");
            assert_eq!(show(&conn.read_until_gone().0), "", "after QUIT");
            // The rest of the pipeline may meet a closed socket.
            let _ = sending.join().unwrap();
            false
        }
        Ending::DropAfterReading | Ending::CutMidLine => {
            // Unblocks the sender if the server stopped reading; closing our
            // last handle then resets the connection under the server.
            let _ = conn.try_clone_stream().shutdown(Shutdown::Both);
            let _ = sending.join().unwrap();
            false
        }
    }
}

/// Opens and drops connections: after a PING, in the middle of a line, or at once.
fn churner(addr: SocketAddr, seed: u64, until: Instant) -> usize {
    let mut rng = Rng::new(seed);
    let mut opened = 0;
    while Instant::now() < until {
        let mut conn = Conn::connect(addr);
        opened += 1;
        match rng.below(3) {
            0 => conn.roundtrip(b"PING\r\n", b"PONG\r\n"),
            1 => conn.send(b"PUT soak0 churn-never partial"),
            _ => {}
        }
        drop(conn);
        // Pacing: a hundred connections a second is churn enough, and leaves the
        // machine's ephemeral ports to everyone else.
        thread::sleep(Duration::from_millis(10));
    }
    opened
}

/// STATS every so often from one long-lived connection: well-formed, counters that
/// only grow, no worker restarts, no refused connections.
fn stats_poller(addr: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let mut conn = Conn::connect(addr);
    let mut last_commands = 0;
    let mut last_total = 0;
    let mut polls = 0;
    while !stop.load(Ordering::SeqCst) {
        let stats = conn.stats();
        polls += 1;
        let stat = |name| common::stat_of(&stats, name);
        assert!(stat("commands_total") >= last_commands, "commands_total went down");
        assert!(stat("connections_total") >= last_total, "connections_total went down");
        assert!(stat("connections") >= 1 && stat("connections") <= stat("connections_total"));
        assert_eq!(stat("worker_restarts"), 0);
        assert_eq!(stat("rejected_connections"), 0);
        assert_eq!(stat("buckets"), BUCKETS as u64);
        last_commands = stat("commands_total");
        last_total = stat("connections_total");
        // Pacing, so the poller does not compete with the load it watches.
        thread::sleep(Duration::from_millis(50));
    }
    polls
}

fn soak(duration: Duration, seed: u64) {
    let server = start_server_with(Config { port: 0, workers: 3, ..Config::default() });
    let addr = server.addr();
    let mut setup = Conn::connect(addr);
    for b in 0..BUCKETS {
        setup.roundtrip(format!("CREATE soak{b}\r\n").as_bytes(), b"OK\r\n");
    }
    let until = Instant::now() + duration;
    let mut rng = Rng::new(seed);
    let depths = [1, 1, 16, 16, 200, 200];
    let writers: Vec<_> = depths
        .iter()
        .enumerate()
        .map(|(client, &depth)| {
            let seed = rng.next_u64();
            thread::spawn(move || writer(addr, client, depth, seed, until))
        })
        .collect();
    let churn_seed = rng.next_u64();
    let churning = thread::spawn(move || churner(addr, churn_seed, until));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_polling = stop.clone();
    let polling = thread::spawn(move || stats_poller(addr, stop_polling));

    let mut histories = Vec::new();
    let mut tally = Tally::default();
    for writing in writers {
        let (keys, t) = writing.join().unwrap();
        histories.extend(keys);
        tally.sessions += t.sessions;
        tally.requests_acked += t.requests_acked;
        for (sum, n) in tally.endings.iter_mut().zip(t.endings) {
            *sum += n;
        }
    }
    let churned = churning.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let polls = polling.join().unwrap();

    // Every connection thread has finished its last round, so nothing is in flight.
    wait_for_connections(addr, 2);

    let mut check = Conn::connect(addr);
    let mut present = 0u64;
    let mut unacked_applied = 0;
    let mut unacked_writes = 0;
    for chunk in histories.chunks(1_000) {
        let mut requests = Vec::new();
        for history in chunk {
            requests.extend_from_slice(format!("GET soak{} {}\r\n", history.bucket, history.key).as_bytes());
        }
        check.send(&requests);
        for history in chunk {
            let line = check.read_line();
            let value = line.strip_suffix(b"\r\n").expect("a value line").to_vec();
            check.expect(b"OK\r\n");
            let got = if value.is_empty() { None } else { Some(value) };
            // The value after some prefix of this key's writes holding every acked one.
            let allowed = &history.states[history.acked..];
            let Some(position) = allowed.iter().position(|state| *state == got) else {
                panic!(
                    "{} {}: value {} is not the state after any prefix of its writes that includes \
                     the {} acknowledged ones (last acknowledged: {})",
                    history.bucket,
                    history.key,
                    show(got.as_deref().unwrap_or(b"<none>")),
                    history.acked,
                    show(history.states[history.acked].as_deref().unwrap_or(b"<none>")),
                );
            };
            unacked_writes += allowed.len() - 1;
            unacked_applied += position;
            present += u64::from(got.is_some());
        }
    }
    let stats = check.stats();
    assert_eq!(common::stat_of(&stats, "keys"), present, "STATS keys against the keys read back");
    assert_eq!(common::stat_of(&stats, "buckets"), BUCKETS as u64);
    assert_eq!(common::stat_of(&stats, "worker_restarts"), 0);
    assert!(common::stat_of(&stats, "commands_total") >= tally.requests_acked);
    assert!(common::stat_of(&stats, "connections_total") >= (tally.sessions + churned) as u64);
    eprintln!(
        "soak {duration:?}: {} sessions, {} requests acknowledged, endings {:?} \
         (full, drop after reading, cut mid-line, quit), {} keys of which {present} hold a value, \
         {unacked_applied} of {unacked_writes} unacknowledged writes applied, {churned} churned \
         connections, {polls} STATS polls",
        tally.sessions,
        tally.requests_acked,
        tally.endings,
        histories.len(),
    );
    setup.roundtrip(b"PING\r\n", b"PONG\r\n");
}
