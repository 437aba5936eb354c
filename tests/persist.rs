//! Persistence (`kv serve --data-dir DIR`), seen from outside: real `kv` processes on
//! 127.0.0.1, each with a data directory of its own under the system temp directory,
//! stopped with SIGTERM or killed with SIGKILL and started again on the same directory.
//!
//! Covered: a round trip of buckets, overwrites, deletes and drops; every acknowledged
//! write surviving `kill -9` under concurrent writers (`--fsync always`, and `everysec`
//! for writes acknowledged more than 3 s before the kill); a torn tail cut off; damage
//! in the middle of a log refused, then repaired with `--repair`; compaction under
//! concurrent overwrites keeping the directory small and losing nothing, also across a
//! `kill -9`; a flipped length bit mid-log refused, not cut; a damaged `CURRENT`, a
//! manifest that disagrees with its partition folders and a bad newest snapshot each
//! refused with no file changed (and the snapshot's older files loaded by `--repair`);
//! only generations and leftovers kv names removed at start, each logged; `--workers` changed between runs; a directory in use, a file for a
//! directory and an unknown `--fsync` refused; a write the disk refuses (a file-size
//! limit) answered with an error while reads go on, and writes working again once the
//! limit is raised; a two-node cluster whose owner restarts; a worker crash in the
//! middle of a pipeline; and SUBSCRIBE streaming exactly what was applied.
//!
//! Waits poll STATS or the log against a deadline, never a bare sleep; every writer is
//! bounded in time and in count. Nothing asserts on speed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::lib_paths::{stored_seed, worker_for_seed};
use common::temp::TempDir;
use common::{
    ChildServer, Conn, DEADLINE, assert_same_bytes, assert_same_bytes_in, free_loopback_addr, kv_serve,
    run_to_end, show, stat_of, wait_until,
};
use common::{cluster_node_command, start_cluster_node};

const OK: &[u8] = b"OK\r\n";
const CRASHED: &[u8] = b"ERROR worker crashed\r\n";
/// What a write gets while the file-size limit is in force (EFBIG, Linux's words).
const TOO_LARGE: &[u8] = b"ERROR persistence failed: File too large (os error 27)\r\n";
/// What an applied write gets under `--fsync always` when its sync fails.
const NOT_SYNCED: &[u8] = b"ERROR applied but not synced to disk: injected by DEBUG FAILSYNC\r\n";

// ---------------------------------------------------------------------------------
// Starting, stopping and refusing.

/// `kv serve --port 0 --data-dir DIR` and `args`, started and listening.
fn serve(dir: &TempDir, args: &[&str]) -> ChildServer {
    let mut command = kv_serve(&["--data-dir", dir.arg()]);
    command.args(args);
    ChildServer::start(command)
}

/// SIGTERM, then the clean exit (status 0) it must lead to.
fn stop(mut server: ChildServer) {
    server.signal(libc::SIGTERM);
    let status = server.wait_for_exit(DEADLINE);
    assert!(
        status.is_some_and(|status| status.success()),
        "SIGTERM should end kv with status 0, got {status:?}; its log:\n{}",
        server.log_text()
    );
}

/// Runs `kv serve --port 0` with `args` expecting it to refuse to start; its exit
/// status and stderr.
fn refused(args: &[&str]) -> (ExitStatus, String) {
    let finished = run_to_end(kv_serve(args), b"");
    (finished.status, String::from_utf8_lossy(&finished.stderr).into_owned())
}

/// Every file under `dir` whose name ends with `suffix`, sorted by path.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    for _ in 0..10_000 {
        let Some(next) = stack.pop() else { break };
        for entry in fs::read_dir(&next).expect("list a data directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    files_ending(dir, "").iter().filter_map(|path| fs::metadata(path).ok()).map(|m| m.len()).sum()
}

// ---------------------------------------------------------------------------------
// A model of what the data should be, and checking a server against it.

/// Buckets and their keys as the acknowledged writes leave them.
#[derive(Default)]
struct Model(BTreeMap<String, BTreeMap<String, String>>);

impl Model {
    /// Applies one request line that was answered `OK`.
    fn apply(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["CREATE", bucket] => {
                self.0.entry(bucket.to_string()).or_default();
            }
            ["PUT", bucket, key, value] => {
                self.0
                    .get_mut(bucket)
                    .expect("PUT to a bucket the model has")
                    .insert(key.into(), value.into());
            }
            ["DELETE", bucket, key] => {
                self.0.get_mut(bucket).expect("DELETE in a bucket the model has").remove(key);
            }
            ["DROP", bucket] => {
                self.0.remove(bucket);
            }
            _ => panic!("the model does not know {line:?}"),
        }
    }

    /// Sends `lines` in one write, expects `OK` to each and applies them.
    fn write(&mut self, conn: &mut Conn, lines: &[String]) {
        let requests: String = lines.iter().map(|line| format!("{line}\r\n")).collect();
        let got = conn.pipeline(requests.into_bytes(), OK.len() * lines.len());
        assert_same_bytes_in(&got, &OK.repeat(lines.len()), "the replies to the writes");
        for line in lines {
            self.apply(line);
        }
    }

    /// The exact replies to `GET bucket key` for every bucket and key named.
    fn replies(&self, buckets: &[String], keys: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for bucket in buckets {
            for key in keys {
                match self.0.get(bucket) {
                    None => out.extend_from_slice(b"NOT FOUND\r\n"),
                    Some(pairs) => {
                        let value = pairs.get(key).map_or("", String::as_str);
                        out.extend_from_slice(format!("{value}\r\nOK\r\n").as_bytes());
                    }
                }
            }
        }
        out
    }

    /// Asserts the server answers every `GET bucket key` as the model says, and holds
    /// as many buckets and keys.
    fn assert_served_by(&self, conn: &mut Conn, buckets: &[String], keys: &[String]) {
        let mut requests = Vec::new();
        for bucket in buckets {
            for key in keys {
                requests.extend_from_slice(format!("GET {bucket} {key}\r\n").as_bytes());
            }
        }
        let expected = self.replies(buckets, keys);
        let got = conn.pipeline(requests, expected.len());
        assert_same_bytes_in(&got, &expected, "the data after the restart");
        let stats = conn.stats();
        assert_eq!(stat_of(&stats, "buckets"), self.0.len() as u64, "buckets: {stats:?}");
        let keys_held: usize = self.0.values().map(BTreeMap::len).sum();
        assert_eq!(stat_of(&stats, "keys"), keys_held as u64, "keys: {stats:?}");
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

// ---------------------------------------------------------------------------------
// The round trip.

/// Buckets (one left empty, one dropped, one dropped and created again), overwrites and
/// deletes, as one client would send them.
fn round_trip_writes() -> Vec<String> {
    let mut lines = Vec::new();
    for bucket in ["shopping", "empty", "gone", "again"] {
        lines.push(format!("CREATE {bucket}"));
    }
    for (key, value) in [("eggs", "3"), ("milk", "1"), ("bread", "2"), ("eggs", "12")] {
        lines.push(format!("PUT shopping {key} {value}"));
    }
    lines.push("DELETE shopping bread".into());
    lines.push("PUT gone k v".into());
    lines.push("PUT again old 1".into());
    lines.push("DROP gone".into());
    lines.push("DROP again".into());
    lines.push("CREATE again".into());
    lines.push("PUT again new 2".into());
    lines
}

#[test]
fn buckets_overwrites_deletes_and_drops_survive_sigterm_and_restart() {
    let dir = TempDir::new("roundtrip");
    let buckets: Vec<String> = ["shopping", "empty", "gone", "again", "never"].map(String::from).to_vec();
    let keys: Vec<String> = ["eggs", "milk", "bread", "k", "old", "new"].map(String::from).to_vec();
    let mut model = Model::default();

    let server = serve(&dir, &["--workers", "3"]);
    let mut conn = Conn::connect(server.addr());
    model.write(&mut conn, &round_trip_writes());
    conn.roundtrip(b"GET gone k\r\n", b"NOT FOUND\r\n");
    stop(server);

    // The first restart loads what the first run wrote, and appends to it...
    let server = serve(&dir, &["--workers", "3"]);
    let mut conn = Conn::connect(server.addr());
    model.assert_served_by(&mut conn, &buckets, &keys);
    let more =
        ["PUT shopping milk 2", "CREATE gone", "PUT gone k again", "DELETE shopping eggs", "DROP empty"];
    model.write(&mut conn, &more.map(String::from));
    stop(server);

    // ...so the second finds both runs' writes.
    let server = serve(&dir, &["--workers", "3"]);
    let mut conn = Conn::connect(server.addr());
    model.assert_served_by(&mut conn, &buckets, &keys);
    conn.roundtrip(b"GET empty eggs\r\n", b"NOT FOUND\r\n");
    conn.roundtrip(b"GET gone k\r\n", b"again\r\nOK\r\n");
    stop(server);
}

// ---------------------------------------------------------------------------------
// Concurrent writers, killed.

/// What a group of writers does: `writers` threads, each with its own connection and
/// bucket `w<i>`, cycling through `keys` keys, values `value_len` bytes long.
#[derive(Clone, Copy)]
struct Load {
    writers: usize,
    keys: u64,
    value_len: usize,
}

/// A writer's value for its write number `seq`: the number, then padding.
fn value_of(seq: u64, len: usize) -> String {
    format!("{seq:012}{}", "x".repeat(len.saturating_sub(12)))
}

/// The write number in a value read back.
fn seq_in(value: &[u8]) -> u64 {
    let digits = value.get(..12).unwrap_or_else(|| panic!("a writer's value, not {}", show(value)));
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("value {}", show(value)))
}

/// What one writer did: when each acknowledged write was answered, and the last write
/// it sent (answered or not). Write `seq` puts key `k<seq % keys>`.
struct Written {
    bucket: String,
    acked: Vec<(Instant, u64)>,
    last_sent: u64,
}

/// Most writes one writer makes, whatever else happens.
const MAX_WRITES: u64 = 200_000;

/// One writer: PUTs one request at a time until `stop`, a `MAX_WRITES` or `max_bytes`
/// of values, [`DEADLINE`], or the server going away (a kill ends it that way).
/// Anything but `OK` fails the test.
fn write_until_stopped(
    addr: SocketAddr,
    bucket: String,
    load: Load,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> Written {
    let mut stream = TcpStream::connect(addr).expect("connect a writer");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = Instant::now();
    let mut written = Written { bucket, acked: Vec::new(), last_sent: 0 };
    for seq in 1..=MAX_WRITES {
        if stop.load(Ordering::SeqCst) || started.elapsed() > DEADLINE {
            break;
        }
        let request =
            format!("PUT {} k{} {}\r\n", written.bucket, seq % load.keys, value_of(seq, load.value_len));
        written.last_sent = seq;
        let mut reply = [0u8; 4];
        if stream.write_all(request.as_bytes()).is_err() || stream.read_exact(&mut reply).is_err() {
            break;
        }
        assert_same_bytes_in(&reply, OK, &format!("the reply to write {seq} of {}", written.bucket));
        written.acked.push((Instant::now(), seq));
        acked.fetch_add(1, Ordering::SeqCst);
    }
    written
}

/// Runs `load` against `addr` until `until(acknowledged writes so far)` holds, then
/// calls `end` (a kill, or nothing) and stops the writers. Returns what they did and
/// the moment just before `end` was called.
fn run_writers(
    addr: SocketAddr,
    load: Load,
    until: &mut dyn FnMut(u64) -> bool,
    end: impl FnOnce(),
) -> (Vec<Written>, Instant) {
    let mut setup = Conn::connect(addr);
    for w in 0..load.writers {
        setup.roundtrip(format!("CREATE w{w}\r\n").as_bytes(), OK);
    }
    let (stop, acked) = (AtomicBool::new(false), AtomicU64::new(0));
    thread::scope(|scope| {
        let writers: Vec<_> = (0..load.writers)
            .map(|w| {
                let (stop, acked) = (&stop, &acked);
                scope.spawn(move || write_until_stopped(addr, format!("w{w}"), load, stop, acked))
            })
            .collect();
        // Stops the writers even if the wait below fails the test.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop_guard = StopOnDrop(&stop);
        wait_until("the writers have written enough", || until(acked.load(Ordering::SeqCst)));
        let ended_at = Instant::now();
        end();
        stop.store(true, Ordering::SeqCst);
        let written = writers.into_iter().map(|w| w.join().expect("a writer failed")).collect();
        (written, ended_at)
    })
}

/// Asserts that every key's value on the server is the last write to it acknowledged
/// at or before `cutoff`, or a later write that was sent. Returns how many keys had
/// such a write (a check of nothing proves nothing: callers assert it is not zero).
fn assert_acknowledged_writes_kept(
    conn: &mut Conn,
    written: &[Written],
    keys: u64,
    cutoff: Instant,
) -> usize {
    let mut checked = 0;
    for writer in written {
        let mut last_acked: BTreeMap<u64, u64> = BTreeMap::new();
        for &(_, seq) in writer.acked.iter().take_while(|(at, _)| *at <= cutoff) {
            last_acked.insert(seq % keys, seq);
        }
        for (&key, &acked) in &last_acked {
            conn.send(format!("GET {} k{key}\r\n", writer.bucket).as_bytes());
            let line = conn.read_line();
            assert_ne!(line, b"NOT FOUND\r\n", "bucket {} is gone", writer.bucket);
            conn.expect(OK);
            let seq = seq_in(&line);
            let what = format!("{} k{key}: acknowledged write {acked}, found write {seq}", writer.bucket);
            assert!(seq >= acked, "an acknowledged write was lost: {what}");
            assert!(seq <= writer.last_sent && seq % keys == key, "a write nobody sent: {what}");
            checked += 1;
        }
    }
    checked
}

/// 12 writers for `write_for`, `kill -9` in the middle of their writing, a restart;
/// then every write acknowledged more than `lost_at_most` before the kill is there.
fn kill_9_keeps_acknowledged_writes(fsync: &str, write_for: Duration, lost_at_most: Duration) {
    let dir = TempDir::new(&format!("kill9-{fsync}"));
    let args = ["--fsync", fsync, "--workers", "4"];
    let server = serve(&dir, &args);
    let load = Load { writers: 12, keys: 16, value_len: 40 };
    let started = Instant::now();
    let mut until = |acked: u64| acked >= load.writers as u64 && started.elapsed() >= write_for;
    let (written, killed_at) = run_writers(server.addr(), load, &mut until, || server.kill());
    for writer in &written {
        assert!(!writer.acked.is_empty(), "writer {} never got an answer", writer.bucket);
    }

    let server = serve(&dir, &args);
    let mut conn = Conn::connect(server.addr());
    let cutoff = killed_at.checked_sub(lost_at_most).expect("a monotonic clock past the run's start");
    let checked = assert_acknowledged_writes_kept(&mut conn, &written, load.keys, cutoff);
    assert!(checked >= load.writers, "only {checked} keys had a write acknowledged in time to check");
    stop(server);
}

#[test]
fn every_acknowledged_write_survives_kill_9_under_12_writers_with_fsync_always() {
    kill_9_keeps_acknowledged_writes("always", Duration::from_secs(2), Duration::ZERO);
}

#[test]
fn every_write_acknowledged_3_s_before_kill_9_survives_with_fsync_everysec() {
    kill_9_keeps_acknowledged_writes("everysec", Duration::from_secs(4), Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------
// Damage.

/// Writes `lines` (each answered `OK`) through a one-worker server on `dir` and stops
/// it with SIGTERM, so the data is in one partition's log.
fn write_and_stop(dir: &TempDir, model: &mut Model, lines: &[String]) {
    let server = serve(dir, &["--workers", "1"]);
    let mut conn = Conn::connect(server.addr());
    model.write(&mut conn, lines);
    stop(server);
}

#[test]
fn garbage_after_the_last_record_is_cut_off_and_the_data_loads_intact() {
    let dir = TempDir::new("torn");
    let mut model = Model::default();
    let mut lines: Vec<String> = vec!["CREATE torn".into()];
    lines.extend((0..50).map(|i| format!("PUT torn k{i} v{i}")));
    write_and_stop(&dir, &mut model, &lines);

    let newest = files_ending(dir.path(), ".log").pop().expect("a log file");
    let good_len = fs::metadata(&newest).unwrap().len();
    // What a crash in the middle of a write leaves: the start of a record, claiming
    // more bytes than follow.
    let mut torn = fs::OpenOptions::new().append(true).open(&newest).unwrap();
    torn.write_all(&[0xab; 100]).unwrap();
    drop(torn);

    let server = serve(&dir, &["--workers", "1"]);
    assert!(!server.log_lines_with("torn").is_empty(), "the cut is logged:\n{}", server.log_text());
    assert_eq!(fs::metadata(&newest).unwrap().len(), good_len, "the garbage is cut off");
    let mut side = newest.clone().into_os_string();
    side.push(format!(".torn-{good_len}"));
    assert_eq!(fs::read(&side).expect("the cut bytes, kept beside the segment"), [0xab; 100]);
    let cut = server.log_lines_with("torn");
    assert!(
        cut.iter().any(|line| line.contains(&*side.to_string_lossy())),
        "the warning says where: {cut:?}"
    );
    let mut conn = Conn::connect(server.addr());
    let (buckets, keys) = (names("torn", 1), names("k", 50));
    model.assert_served_by(&mut conn, &buckets, &keys);
    // Appending goes on where the good records end: the next run reads it back.
    model.write(&mut conn, &["PUT torn k0 after".into()]);
    stop(server);
    let server = serve(&dir, &["--workers", "1"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
}

/// Flips a byte of the first place `marker` appears in a `.log` file under `dir`;
/// returns that file and its bytes after the flip.
fn flip_byte_of(dir: &Path, marker: &[u8]) -> (PathBuf, Vec<u8>) {
    for path in files_ending(dir, ".log") {
        let mut bytes = fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|window| window == marker) {
            bytes[at + 2] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            return (path, bytes);
        }
    }
    panic!("no log under {} holds {}", dir.display(), show(marker));
}

#[test]
fn damage_mid_log_is_refused_naming_the_file_and_repair_keeps_what_precedes_it() {
    let dir = TempDir::new("damaged");
    let mut before = Model::default();
    let lines: Vec<String> = vec!["CREATE d".into(), "PUT d a 1".into(), "PUT d b 2".into()];
    write_and_stop(&dir, &mut before, &lines);
    // The second run's writes go to the same segment, after the first's.
    let mut after = Model::default();
    after.apply("CREATE d");
    let later: Vec<String> = ["PUT d c damaged-here", "PUT d e 5", "PUT d a 6"].map(String::from).to_vec();
    write_and_stop(&dir, &mut after, &later);

    let (damaged, bytes) = flip_byte_of(dir.path(), b"damaged-here");
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    let (status, stderr) = refused(&["--data-dir", dir.arg(), "--workers", "1"]);
    assert!(!status.success(), "kv started on a damaged log");
    assert!(stderr.contains(&name) && stderr.contains("--repair"), "stderr names {name}: {stderr}");

    let server = serve(&dir, &["--workers", "1", "--repair"]);
    let mut conn = Conn::connect(server.addr());
    let (buckets, keys) = (names("d", 1), ["a", "b", "c", "e"].map(String::from).to_vec());
    // What came before the damaged record, nothing from it on.
    before.assert_served_by(&mut conn, &buckets, &keys);
    let mut aside = damaged.into_os_string();
    aside.push(".damaged");
    assert_eq!(fs::read(&aside).expect("the damaged file, moved aside"), bytes);
    stop(server);

    // The repaired directory loads without --repair, and appending to it works.
    let server = serve(&dir, &["--workers", "1"]);
    let mut conn = Conn::connect(server.addr());
    before.write(&mut conn, &["PUT d e again".into()]);
    stop(server);
    let server = serve(&dir, &["--workers", "1"]);
    before.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
}

/// Every file under `dir`, by its path below `dir`, and what it holds: what a refused
/// start must leave exactly as it was.
fn contents_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_ending(dir, "")
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).expect("read a data file");
            (path.strip_prefix(dir).expect("a path under the directory").to_path_buf(), bytes)
        })
        .collect()
}

/// Starts kv with `args` on `dir` expecting a refusal whose stderr holds each of
/// `words`, and asserts it changed no file.
fn refused_leaving_all(dir: &TempDir, args: &[&str], words: &[&str]) {
    let before = contents_under(dir.path());
    let (status, stderr) = refused(&[&["--data-dir", dir.arg()], args].concat());
    assert!(!status.success(), "kv started on {:?}", before.keys().collect::<Vec<_>>());
    for word in words {
        assert!(stderr.contains(word), "stderr says {word:?}: {stderr}");
    }
    let after = contents_under(dir.path());
    assert!(
        before == after,
        "the refused start changed files: {:?} became {:?}",
        before.keys(),
        after.keys()
    );
}

/// Buckets `b0`..`b7` with a few keys each, written through `workers` workers (so
/// every partition has some) and stopped; the model of them.
fn populate(dir: &TempDir, workers: &str) -> (Model, Vec<String>, Vec<String>) {
    let (buckets, keys) = (names("b", 8), names("k", 3));
    let mut lines: Vec<String> = buckets.iter().map(|b| format!("CREATE {b}")).collect();
    for bucket in &buckets {
        lines.extend(keys.iter().map(|k| format!("PUT {bucket} {k} {bucket}-{k}")));
    }
    let mut model = Model::default();
    let server = serve(dir, &["--workers", workers]);
    model.write(&mut Conn::connect(server.addr()), &lines);
    stop(server);
    (model, buckets, keys)
}

#[test]
fn a_current_that_names_no_generation_here_is_refused_and_nothing_is_deleted() {
    let dir = TempDir::new("current");
    let (model, buckets, keys) = populate(&dir, "2");
    let current = dir.path().join("CURRENT");
    assert_eq!(fs::read_to_string(&current).unwrap(), "gen-0001\n");
    // One digit wrong, cut short, emptied, and a path out of the directory.
    for damaged in ["gen-0002\n", "gen-000", "", "../gen-0001\n"] {
        fs::write(&current, damaged).unwrap();
        refused_leaving_all(&dir, &["--workers", "2"], &["CURRENT", "gen-0001", "nothing was"]);
    }
    // The operator writes the right name back: everything is there.
    fs::write(&current, "gen-0001\n").unwrap();
    let server = serve(&dir, &["--workers", "2"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    stop(server);
}

/// Copies the files of folder `from` to `to`, sub-folders too.
fn copy_folder(from: &Path, to: &Path) {
    for (path, bytes) in contents_under(from) {
        let target = to.join(path);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(target, bytes).unwrap();
    }
}

#[test]
fn only_files_and_generations_named_as_kv_names_them_are_removed_and_each_removal_is_logged() {
    let dir = TempDir::new("leftovers");
    let (model, buckets, keys) = populate(&dir, "1");
    let root = dir.path();
    // An operator's copies, and what kv itself leaves: a switch to another generation
    // that never finished, and a compaction's unfinished snapshot.
    copy_folder(&root.join("gen-0001"), &root.join("gen-0001.bak"));
    copy_folder(&root.join("gen-0001"), &root.join("gen-7"));
    copy_folder(&root.join("gen-0001"), &root.join("gen-0002"));
    let partition = root.join("gen-0001/p000");
    fs::write(partition.join("0000000009.snap.tmp"), b"half a snapshot").unwrap();
    fs::write(partition.join("notes.tmp"), b"an operator's").unwrap();
    let kept = contents_under(&root.join("gen-0001.bak"));

    let server = serve(&dir, &["--workers", "1"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    assert!(!root.join("gen-0002").exists(), "the unfinished generation is removed");
    let removed = server.log_lines_with("removed");
    assert!(removed.iter().any(|line| line.contains("gen-0002")), "its removal is logged: {removed:?}");
    assert!(!partition.join("0000000009.snap.tmp").exists(), "the unfinished snapshot is removed");
    assert!(removed.iter().any(|line| line.contains("0000000009.snap.tmp")), "logged: {removed:?}");
    assert_eq!(contents_under(&root.join("gen-0001.bak")), kept, "the backup copy is left as it was");
    assert!(root.join("gen-7").is_dir(), "a name kv does not give is left alone");
    assert!(partition.join("notes.tmp").exists(), "a .tmp kv does not write is left alone");
    stop(server);
}

#[test]
fn partition_folders_that_disagree_with_the_manifest_are_refused_and_nothing_is_deleted() {
    let dir = TempDir::new("manifest");
    let (model, buckets, keys) = populate(&dir, "2");
    let generation = dir.path().join("gen-0001");
    let manifest = generation.join("MANIFEST");
    let original = fs::read_to_string(&manifest).unwrap();
    assert!(original.contains("partitions 2\n"), "{original}");
    // Fewer than there are would leave p001 unloaded; more would load an empty p002.
    for (count, named) in [("1", "p001"), ("3", "p002")] {
        fs::write(&manifest, original.replace("partitions 2", &format!("partitions {count}"))).unwrap();
        for workers in ["1", "2"] {
            refused_leaving_all(&dir, &["--workers", workers], &["MANIFEST", named, "nothing was"]);
        }
    }
    fs::write(&manifest, &original).unwrap();
    // A partition folder gone is refused too, not loaded as empty.
    fs::rename(generation.join("p001"), generation.join("p001.moved")).unwrap();
    refused_leaving_all(&dir, &["--workers", "2"], &["MANIFEST", "p001 is missing"]);
    fs::rename(generation.join("p001.moved"), generation.join("p001")).unwrap();

    let server = serve(&dir, &["--workers", "2"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    stop(server);
}

#[test]
fn a_bad_newest_snapshot_is_refused_keeping_the_files_it_would_replace_and_repair_loads_them() {
    let dir = TempDir::new("bad-snapshot");
    let (model, buckets, keys) = populate(&dir, "1");
    let partition = dir.path().join("gen-0001/p000");
    // A directory where a snapshot should be cannot even be read.
    fs::create_dir(partition.join("0000000003.snap")).unwrap();
    refused_leaving_all(&dir, &["--workers", "1"], &["0000000003.snap"]);
    fs::remove_dir(partition.join("0000000003.snap")).unwrap();
    // Garbage under a snapshot's name is damage, refused with the segments it would
    // replace still there...
    let garbage = partition.join("0000000099.snap");
    fs::write(&garbage, b"garbage").unwrap();
    refused_leaving_all(&dir, &["--workers", "1"], &["0000000099.snap", "--repair"]);
    // ...so that --repair loads them instead, and keeps the garbage aside.
    let server = serve(&dir, &["--workers", "1", "--repair"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    assert!(!server.log_lines_with("0000000099.snap.damaged").is_empty(), "{}", server.log_text());
    // The older files it loaded instead run without a gap: no warning says otherwise.
    assert!(server.log_lines_with("missing").is_empty(), "{}", server.log_text());
    stop(server);
    assert_eq!(fs::read(partition.join("0000000099.snap.damaged")).unwrap(), b"garbage");
    let server = serve(&dir, &["--workers", "1"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    stop(server);
}

#[test]
fn a_lost_segment_or_a_partition_without_files_is_refused_and_repair_loads_the_rest() {
    let dir = TempDir::new("lost-files");
    let (model, buckets, keys) = populate(&dir, "2");
    let generation = dir.path().join("gen-0001");
    // p000's only segment, renamed one further on: segment 1 is now lost, and with it
    // the writes it held (they are there under the new name, for the check below).
    let segments = files_ending(&generation.join("p000"), ".log");
    assert_eq!(segments.len(), 1, "{segments:?}");
    fs::rename(&segments[0], generation.join("p000/0000000002.log")).unwrap();
    refused_leaving_all(&dir, &["--workers", "2"], &["p000", "segment(s) 1 to 1 missing", "--repair"]);
    // --repair loads the rest and closes the gap, so the next start needs no --repair.
    let server = serve(&dir, &["--workers", "2", "--repair"]);
    assert!(!server.log_lines_with("wrote snapshot 2").is_empty(), "{}", server.log_text());
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    stop(server);
    let server = serve(&dir, &["--workers", "2"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
    stop(server);

    // p001 emptied while p000 keeps its files: refused before either writes a thing.
    fs::rename(generation.join("p001"), dir.path().join("p001-aside")).unwrap();
    fs::create_dir(generation.join("p001")).unwrap();
    refused_leaving_all(&dir, &["--workers", "2"], &["p001", "no data files", "--repair"]);
    // --repair loads the rest, and says what it went on without; the next start
    // needs no --repair either.
    let server = serve(&dir, &["--workers", "2", "--repair"]);
    assert!(!server.log_lines_with("p001 hold no data files").is_empty(), "{}", server.log_text());
    stop(server);
    let server = serve(&dir, &["--workers", "2"]);
    let mut conn = Conn::connect(server.addr());
    let mut still_there = |bucket: &String| {
        conn.send(format!("GET {bucket} {}\r\n", keys[0]).as_bytes());
        let found = conn.read_line() != b"NOT FOUND\r\n";
        if found {
            conn.expect(OK);
        }
        found
    };
    let on_p000: Vec<String> = buckets.iter().filter(|b| still_there(b)).cloned().collect();
    assert!(!on_p000.is_empty() && on_p000.len() < buckets.len(), "p000 holds some buckets: {on_p000:?}");
    for (bucket, key) in on_p000.iter().flat_map(|b| keys.iter().map(move |k| (b, k))) {
        conn.roundtrip(
            format!("GET {bucket} {key}\r\n").as_bytes(),
            format!("{bucket}-{key}\r\nOK\r\n").as_bytes(),
        );
    }
    stop(server);
}

#[test]
fn one_flipped_bit_in_a_length_mid_log_is_refused_as_damage_not_cut_off_as_a_torn_tail() {
    let dir = TempDir::new("length-bit");
    let mut model = Model::default();
    let mut lines: Vec<String> = vec!["CREATE l".into()];
    lines.extend((0..100).map(|i| format!("PUT l k{i} v{i}")));
    write_and_stop(&dir, &mut model, &lines);
    let segment = files_ending(dir.path(), ".log").pop().expect("a log file");
    let mut bytes = fs::read(&segment).unwrap();
    // Past the 16-byte header, the CREATE's length says where the first PUT starts;
    // bit 24 of the PUT's length makes it claim 16 MiB more than the file holds.
    let create_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    let put = 16 + 8 + create_len;
    bytes[put + 7] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();

    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    refused_leaving_all(&dir, &["--workers", "1"], &[&name, &format!("offset {put}"), "--repair"]);
    assert_eq!(fs::read(&segment).unwrap(), bytes, "the 99 records after the flipped bit stay");
}

// ---------------------------------------------------------------------------------
// Compaction.

/// `--compact-min-bytes` for the compaction tests: 1 MiB, so tens of MB of overwrites
/// pass it many times.
const COMPACT_MIN: &str = "1048576";

/// A fresh connection's STATS figure `name`.
fn stat(addr: SocketAddr, name: &str) -> u64 {
    Conn::connect(addr).stat(name)
}

/// Keys each compaction test bucket holds besides the one its writer overwrites: never
/// written again, so after a compaction only the snapshot has them, and enough of them
/// (with the overwritten key's garbage) that a snapshot reads the bucket in several
/// chunks while the overwrites move its records.
const STATIC_KEYS: usize = 150;

/// Creates buckets `w0`.. and fills each with [`STATIC_KEYS`] keys of 2 KiB values.
fn fill_static_keys(addr: SocketAddr, load: Load) -> Vec<u8> {
    let mut conn = Conn::connect(addr);
    let (mut writes, mut reads, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for w in 0..load.writers {
        writes.extend_from_slice(format!("CREATE w{w}\r\n").as_bytes());
        for i in 0..STATIC_KEYS {
            writes.extend_from_slice(format!("PUT w{w} s{i} {}\r\n", value_of(i as u64, 2048)).as_bytes());
            reads.extend_from_slice(format!("GET w{w} s{i}\r\n").as_bytes());
            values.extend_from_slice(format!("{}\r\nOK\r\n", value_of(i as u64, 2048)).as_bytes());
        }
    }
    let got = conn.pipeline(writes, OK.len() * load.writers * (STATIC_KEYS + 1));
    assert_same_bytes(&got, &OK.repeat(load.writers * (STATIC_KEYS + 1)));
    reads.extend(values);
    reads
}

/// Asserts the server still holds the static keys; `script` is what
/// [`fill_static_keys`] returned.
fn assert_static_keys(addr: SocketAddr, load: Load, script: &[u8]) {
    let reads_len = script.len() - load.writers * STATIC_KEYS * (2048 + 6);
    let (reads, values) = script.split_at(reads_len);
    let got = Conn::connect(addr).pipeline(reads.to_vec(), values.len());
    assert_same_bytes_in(&got, values, "the keys only the snapshot holds");
}

#[test]
fn compaction_under_concurrent_overwrites_keeps_the_directory_small_and_the_latest_values() {
    let dir = TempDir::new("compact");
    let args = ["--workers", "1", "--fsync", "no", "--compact-min-bytes", COMPACT_MIN];
    let server = serve(&dir, &args);
    let addr = server.addr();
    // Three writers overwriting one key each with 4 KiB values: 20 MB at least, until
    // three compactions have run while they write (1 GiB at most). The bound is in
    // bytes, not time: the compactor looks once a second, and a fast server wrote the
    // 80 MB this used to stop at before its first look.
    let load = Load { writers: 3, keys: 1, value_len: 4096 };
    let static_keys = fill_static_keys(addr, load);
    let writes_for = |megabytes: u64| megabytes * 1024 * 1024 / load.value_len as u64;
    let mut stats = Conn::connect(addr);
    let mut until =
        |acked: u64| acked >= writes_for(1024) || (acked >= writes_for(20) && stats.stat("compactions") >= 3);
    let (written, _) = run_writers(addr, load, &mut until, || ());
    let compactions = stat(addr, "compactions");
    assert!(compactions >= 1, "no compaction while writing: {:?}", Conn::connect(addr).stats());

    // With the writers gone, the next compaction leaves the snapshot and a short log;
    // what is on disk is about what STATS says: no superseded file is left.
    wait_until("the log is compacted", || stat(addr, "log_bytes") < 3 * 1024 * 1024);
    let on_disk = bytes_under(dir.path());
    assert!(
        on_disk < 8 * 1024 * 1024,
        "{on_disk} bytes in the data directory: {:?}",
        files_ending(dir.path(), "")
    );
    let latest: Vec<Vec<u8>> =
        written.iter().map(|w| value_of(w.last_sent, load.value_len).into_bytes()).collect();
    let check = |addr: SocketAddr| {
        let mut conn = Conn::connect(addr);
        for (writer, value) in written.iter().zip(&latest) {
            conn.roundtrip(
                format!("GET {} k0\r\n", writer.bucket).as_bytes(),
                &[&value[..], b"\r\n", OK].concat(),
            );
        }
        assert_static_keys(addr, load, &static_keys);
    };
    check(addr);
    stop(server);

    let server = serve(&dir, &args);
    check(server.addr());
}

#[test]
fn no_acknowledged_write_is_lost_across_compactions_and_kill_9() {
    let dir = TempDir::new("compact-kill9");
    let args = ["--workers", "2", "--fsync", "always", "--compact-min-bytes", COMPACT_MIN];
    let load = Load { writers: 4, keys: 64, value_len: 2048 };
    let mut server = serve(&dir, &args);
    // Two rounds: the kill lands at a different point of compaction each time, and the
    // second round starts from a directory a compaction and a kill left.
    for round in 0..2 {
        let addr = server.addr();
        let mut stats = Conn::connect(addr);
        let target = stats.stat("compactions") + 2;
        let mut until = |_| stats.stat("compactions") >= target;
        let (written, killed_at) = run_writers(addr, load, &mut until, || server.kill());
        server = serve(&dir, &args);
        let mut conn = Conn::connect(server.addr());
        let checked = assert_acknowledged_writes_kept(&mut conn, &written, load.keys, killed_at);
        assert!(checked >= load.writers, "round {round}: only {checked} keys checked");
        // The next round's writers number their writes from 1 again.
        conn.roundtrip(b"DROP w0\r\nDROP w1\r\nDROP w2\r\nDROP w3\r\n", &OK.repeat(4));
    }
    stop(server);
}

// ---------------------------------------------------------------------------------
// The directory between runs, and what is refused.

#[test]
fn data_survives_and_is_served_when_workers_change_between_runs() {
    let dir = TempDir::new("workers");
    let (buckets, keys) = (names("b", 24), names("k", 4));
    let mut model = Model::default();
    let mut lines: Vec<String> = buckets.iter().map(|b| format!("CREATE {b}")).collect();
    for bucket in &buckets {
        lines.extend(keys.iter().map(|k| format!("PUT {bucket} {k} {bucket}-{k}")));
    }
    let server = serve(&dir, &["--workers", "2"]);
    model.write(&mut Conn::connect(server.addr()), &lines);
    stop(server);

    // More workers, then fewer: every bucket moves to its new owner and is served.
    for (workers, write) in [("3", "PUT b0 k0 three"), ("1", "DROP b1")] {
        let server = serve(&dir, &["--workers", workers]);
        let mut conn = Conn::connect(server.addr());
        model.assert_served_by(&mut conn, &buckets, &keys);
        let stats = conn.stats();
        let held: u64 =
            (0..workers.parse().unwrap()).map(|w| stat_of(&stats, &format!("worker.{w}.keys"))).sum();
        assert_eq!(held, stat_of(&stats, "keys"), "every key is in some worker's partition: {stats:?}");
        model.write(&mut conn, &[write.to_string()]);
        stop(server);
    }
    let server = serve(&dir, &["--workers", "1"]);
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &keys);
}

#[test]
fn a_second_process_on_the_same_directory_is_refused() {
    let dir = TempDir::new("in-use");
    let first = serve(&dir, &[]);
    Conn::connect(first.addr()).roundtrip(b"CREATE mine\r\n", OK);
    let (status, stderr) = refused(&["--data-dir", dir.arg()]);
    assert!(!status.success(), "a second kv started on {}", dir.arg());
    assert!(stderr.contains("in use"), "stderr says the directory is in use: {stderr}");
    // An operator who deletes LOCK as litter does not let a second kv in: the
    // directory itself is locked too.
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    let (status, stderr) = refused(&["--data-dir", dir.arg()]);
    assert!(!status.success(), "a second kv started on {} once LOCK was deleted", dir.arg());
    assert!(stderr.contains("in use"), "stderr says the directory is in use: {stderr}");
    // The first goes on serving, and its data is its own.
    Conn::connect(first.addr()).roundtrip(b"GET mine k\r\n", b"\r\nOK\r\n");
    stop(first);
}

#[test]
fn a_file_given_as_the_data_directory_is_refused() {
    let dir = TempDir::new("not-a-dir");
    let file = dir.path().join("plain-file");
    fs::write(&file, b"not a directory\n").unwrap();
    let (status, stderr) = refused(&["--data-dir", file.to_str().unwrap()]);
    assert!(!status.success(), "kv started on a plain file");
    assert!(stderr.contains("not a directory"), "stderr: {stderr}");
    assert_eq!(fs::read(&file).unwrap(), b"not a directory\n", "the file is left as it was");
}

#[test]
fn an_unknown_fsync_policy_exits_2() {
    let dir = TempDir::new("fsync-policy");
    let (status, stderr) = refused(&["--data-dir", dir.arg(), "--fsync", "sometimes"]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("sometimes"), "stderr names the policy: {stderr}");
}

// ---------------------------------------------------------------------------------
// A write the disk refuses.

/// `kv serve` on `dir` with `args`, whose files may grow to `limit` bytes at most, and
/// which ignores SIGXFSZ so that a write past the limit fails with EFBIG instead of
/// killing it.
#[allow(unsafe_code)] // pre_exec has no safe form; see the SAFETY note.
fn serve_with_file_size_limit(dir: &TempDir, limit: u64, args: &[&str]) -> ChildServer {
    use std::os::unix::process::CommandExt;
    let mut command = kv_serve(&["--data-dir", dir.arg()]);
    command.args(args);
    // SAFETY: runs in the forked child before exec; setrlimit and signal are
    // async-signal-safe, and nothing here allocates.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ChildServer::start(command)
}

/// Lifts the file-size limit of the running process `pid`.
#[allow(unsafe_code)] // prlimit has no safe form; see the SAFETY note.
fn lift_file_size_limit(pid: u32) {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: prlimit reads the struct we pass and writes nothing (old limit: null).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &unlimited, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit({pid}) failed: {}", std::io::Error::last_os_error());
}

/// PUTs 1 KiB values to `full k<i>` until one is refused; returns the lines that were
/// answered `OK` (the rest of the file-size allowance is theirs).
fn fill_until_refused(conn: &mut Conn) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..1_000 {
        let line = format!("PUT full k{i} {}", value_of(i, 1024));
        conn.send(format!("{line}\r\n").as_bytes());
        let reply = conn.read_line();
        if reply == OK {
            acked.push(line);
            continue;
        }
        assert_same_bytes_in(&reply, TOO_LARGE, "the reply to a write past the file-size limit");
        return acked;
    }
    panic!("1,000 writes of 1 KiB fit under a 64 KiB file-size limit");
}

#[test]
fn a_write_the_disk_refuses_is_an_error_reads_go_on_and_writes_resume_when_the_cause_is_gone() {
    let dir = TempDir::new("fsize");
    let args = ["--workers", "1", "--fsync", "always"];
    let server = serve_with_file_size_limit(&dir, 64 * 1024, &args);
    let mut model = Model::default();
    let mut conn = Conn::connect(server.addr());
    model.write(&mut conn, &["CREATE full".into()]);
    let mut subscriber = Conn::connect(server.addr());
    subscriber.send(b"SUBSCRIBE full\r\n");
    wait_until("the subscription is registered", || conn.stat("subscribers") == 1);

    let acked = fill_until_refused(&mut conn);
    assert!(!acked.is_empty(), "not one write fitted under the limit");
    for line in &acked {
        model.apply(line);
    }
    let refused_key = format!("k{}", acked.len());
    let again = format!("PUT full {refused_key} {}\r\n", value_of(0, 1024));
    conn.roundtrip(again.as_bytes(), TOO_LARGE);
    // Reads are served; the refused writes were not applied, and are counted.
    conn.roundtrip(b"GET full k0\r\n", &[value_of(0, 1024).as_bytes(), b"\r\n", OK].concat());
    conn.roundtrip(format!("GET full {refused_key}\r\n").as_bytes(), b"\r\nOK\r\n");
    assert_eq!(conn.stat("persistence_errors"), 2);

    lift_file_size_limit(server.pid());
    model.write(&mut conn, &[format!("PUT full {refused_key} after")]);
    assert_eq!(conn.stat("persistence_errors"), 2);
    // The subscriber saw what was applied: not the refused writes.
    let mut stream = Vec::new();
    for (i, _) in acked.iter().enumerate() {
        stream.extend_from_slice(format!("k{i} SET TO {}\r\n", value_of(i as u64, 1024)).as_bytes());
    }
    stream.extend_from_slice(format!("{refused_key} SET TO after\r\n").as_bytes());
    subscriber.expect(&stream);
    stop(server);

    // The log holds exactly the acknowledged writes: no trace of the refused ones, and
    // no damage where they failed.
    let server = serve(&dir, &args);
    let keys = names("k", acked.len() + 2);
    model.assert_served_by(&mut Conn::connect(server.addr()), &names("full", 1), &keys);
}

#[test]
fn under_fsync_always_a_write_whose_sync_fails_is_not_answered_ok_and_stays_applied() {
    let dir = TempDir::new("failsync");
    // `--debug` sends every batch to its worker, whose syncer thread syncs it.
    let args = ["--workers", "1", "--fsync", "always", "--debug"];
    let server = serve(&dir, &args);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE a\r\nPUT a k before\r\n", &OK.repeat(2));

    // The next sync fails. The write it covers was applied and written, so it is
    // answered neither OK nor as not done; a read in the same round keeps its reply,
    // and so does a write that changed nothing (a PUT to a missing bucket).
    conn.roundtrip(b"DEBUG FAILSYNC\r\n", OK);
    let round = b"PUT a k during\r\nGET a k\r\nPUT nobucket k v\r\n";
    conn.roundtrip(round, &[NOT_SYNCED, b"during\r\nOK\r\n", b"NOT FOUND\r\n"].concat());
    conn.roundtrip(b"GET a k\r\n", b"during\r\nOK\r\n");
    assert_eq!(conn.stat("persistence_errors"), 1);
    // The log is compacted at once (it is far below --compact-min-bytes): a synced
    // snapshot replaces what the failed sync may have left short.
    wait_until("the partition is compacted after the failed sync", || conn.stat("compactions") >= 1);

    // The next syncs succeed, and the writes they cover are answered OK.
    conn.roundtrip(b"DELETE a gone\r\nPUT a k after\r\n", &OK.repeat(2));
    assert_eq!(conn.stat("persistence_errors"), 1);
    drop(conn);
    server.kill();

    // After kill -9, what was acknowledged is there.
    let server = serve(&dir, &args);
    Conn::connect(server.addr()).roundtrip(b"GET a k\r\n", b"after\r\nOK\r\n");
    stop(server);
}

#[test]
fn debug_failsync_needs_debug_and_a_data_directory() {
    let dir = TempDir::new("failsync-off");
    let server = serve(&dir, &[]);
    Conn::connect(server.addr()).roundtrip(b"DEBUG FAILSYNC\r\n", b"UNKNOWN COMMAND\r\n");
    stop(server);
    let server = ChildServer::start(kv_serve(&["--debug"]));
    let reply = b"ERROR persistence is off (no --data-dir)\r\n";
    Conn::connect(server.addr()).roundtrip(b"DEBUG FAILSYNC\r\n", reply);
    server.kill();
}

// ---------------------------------------------------------------------------------
// A cluster, a crash, a subscriber.

/// Starts node `name` of the cluster in `file` with its own data directory.
fn start_node(file: &Path, name: &str, addr: SocketAddr, dir: &TempDir) -> ChildServer {
    start_cluster_node(
        cluster_node_command(
            file,
            name,
            &["--peer-timeout", "1", "--peer-backoff-max", "0.5", "--data-dir", dir.arg()],
        ),
        addr,
    )
}

#[test]
fn a_restarted_owner_serves_its_data_to_reads_forwarded_by_the_other_node() {
    let (dir_a, dir_b, files) = (TempDir::new("node-a"), TempDir::new("node-b"), TempDir::new("cluster"));
    let (addr_a, addr_b) = (free_loopback_addr(), free_loopback_addr());
    let file = files.path().join("cluster.conf");
    fs::write(&file, format!("a {addr_a} a-m\nb {addr_b} n-z\n")).unwrap();
    let a = start_node(&file, "a", addr_a, &dir_a);
    let b = start_node(&file, "b", addr_b, &dir_b);

    // Written through b, stored by a.
    let mut through_b = Conn::connect(addr_b);
    through_b.roundtrip(b"CREATE apple\r\nPUT apple eggs 3\r\nPUT apple milk 1\r\n", &OK.repeat(3));
    through_b.roundtrip(b"DELETE apple milk\r\nCREATE nut\r\nPUT nut k v\r\n", &OK.repeat(3));
    stop(a);
    let a = start_node(&file, "a", addr_a, &dir_a);

    let mut got = Vec::new();
    wait_until("b forwards to the restarted a", || {
        let mut conn = Conn::connect(addr_b);
        got = conn.pipeline(b"GET apple eggs\r\n".to_vec(), 7);
        got == b"3\r\nOK\r\n"
    });
    through_b = Conn::connect(addr_b);
    through_b.roundtrip(b"GET apple milk\r\nGET nut k\r\n", b"\r\nOK\r\nv\r\nOK\r\n");
    // a's data is a's alone: b's directory never held apple.
    assert_eq!(stat(addr_b, "keys"), 1);
    assert_eq!(stat(addr_a, "keys"), 1);
    stop(b);
    stop(a);
}

/// A bucket name starting with `prefix` that worker `w` of `workers` owns in the kv
/// serving `dir`: it places buckets with the seed its data directory keeps, not with
/// this process's.
fn bucket_on(dir: &TempDir, w: usize, workers: usize, prefix: &str) -> String {
    let seed = stored_seed(dir.path()).expect("a served data directory keeps its placement seed");
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| worker_for_seed(seed, name.as_bytes(), workers) == w)
        .unwrap_or_else(|| panic!("no {prefix}<n> on worker {w}"))
}

#[test]
fn a_worker_crash_mid_pipeline_loses_exactly_the_crashed_request_across_a_restart() {
    let dir = TempDir::new("crash");
    let args = ["--workers", "2", "--debug", "--fsync", "always"];
    let server = serve(&dir, &args);
    let (crashy, calm) = (bucket_on(&dir, 0, 2, "crashy"), bucket_on(&dir, 1, 2, "calm"));
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(
        format!("CREATE {crashy}\r\nCREATE {calm}\r\nCREATE doomed\r\n").as_bytes(),
        &OK.repeat(3),
    );
    let mut model = Model::default();
    for bucket in [&crashy, &calm, "doomed"] {
        model.apply(&format!("CREATE {bucket}"));
    }

    // One write: writes to both workers, the crash among them, more writes after.
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(format!("PUT {crashy} k{i} v{i}"));
        lines.push(format!("PUT {calm} k{i} v{i}"));
        if i % 5 == 4 {
            lines.push(format!("DELETE {crashy} k{}", i - 2));
        }
        if i == 9 {
            lines.push(format!("DEBUG CRASH {crashy}"));
            lines.push("DROP doomed".into());
        }
    }
    let requests: String = lines.iter().map(|line| format!("{line}\r\n")).collect();
    let mut expected = Vec::new();
    for line in &lines {
        expected.extend_from_slice(if line.starts_with("DEBUG") { CRASHED } else { OK });
    }
    let got = conn.pipeline(requests.into_bytes(), expected.len());
    assert_same_bytes_in(&got, &expected, "the replies to the pipeline");
    for line in lines.iter().filter(|line| !line.starts_with("DEBUG")) {
        model.apply(line);
    }
    assert_eq!(conn.stat("worker_restarts"), 1);
    stop(server);

    let server = serve(&dir, &args);
    let buckets = vec![crashy, calm, "doomed".to_string()];
    model.assert_served_by(&mut Conn::connect(server.addr()), &buckets, &names("k", 21));
}

#[test]
fn subscribe_streams_exactly_what_was_applied_with_persistence_on() {
    let dir = TempDir::new("subscribe");
    let args = ["--workers", "2", "--fsync", "always"];
    let server = serve(&dir, &args);
    let mut writer = Conn::connect(server.addr());
    writer.roundtrip(b"CREATE s\r\nPUT s before 0\r\n", &OK.repeat(2));
    let mut subscriber = Conn::connect(server.addr());
    subscriber.send(b"SUBSCRIBE s\r\n");
    wait_until("the subscription is registered", || writer.stat("subscribers") == 1);

    // Changes to s, changes to another bucket (not streamed), writes that find no
    // bucket (not applied, not streamed) and the bucket dropped and made again.
    let requests = b"PUT s a 1\r\nCREATE o\r\nPUT o x 1\r\nDELETE s a\r\nPUT s b 2\r\nDROP o\r\n\
                     PUT o y 2\r\nPUT s c 3\r\nDELETE s nothing\r\nDROP s\r\nPUT s after-drop 4\r\n\
                     CREATE s\r\nPUT s d 5\r\n";
    let replies = [OK, OK, OK, OK, OK, OK, b"NOT FOUND\r\n", OK, OK, OK, b"NOT FOUND\r\n", OK, OK].concat();
    writer.roundtrip(requests, &replies);
    let stream: &[u8] =
        b"a SET TO 1\r\na DELETED\r\nb SET TO 2\r\nc SET TO 3\r\nnothing DELETED\r\nDROPPED\r\n";
    assert_same_bytes(&subscriber.read_to_close(), stream);
    stop(server);

    // The log replays to the same state, and a new subscription streams new writes.
    let server = serve(&dir, &args);
    let mut writer = Conn::connect(server.addr());
    writer.roundtrip(
        b"GET s before\r\nGET s d\r\nGET s b\r\nGET o x\r\n",
        b"\r\nOK\r\n5\r\nOK\r\n\r\nOK\r\nNOT FOUND\r\n",
    );
    let mut subscriber = Conn::connect(server.addr());
    subscriber.send(b"SUBSCRIBE s\r\n");
    wait_until("the subscription is registered", || writer.stat("subscribers") == 1);
    writer.roundtrip(b"PUT s e 6\r\n", OK);
    subscriber.expect(b"e SET TO 6\r\n");
}

// ---------------------------------------------------------------------------------
// --max-memory with persistence.

/// A write refused past `--max-memory` had its record logged ahead of it (the batch
/// logs before it applies); the state logged after the batch must undo it, so that a
/// restart does not bring back a write whose client was told `ERROR out of memory`.
#[test]
fn writes_refused_past_max_memory_stay_refused_after_a_restart() {
    let dir = TempDir::new("max-memory");
    let server = serve(&dir, &["--workers", "1", "--max-memory", "65536", "--fsync", "always"]);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE m\r\nPUT m keep 1\r\n", b"OK\r\nOK\r\n");
    // One pipeline: values of 1 KiB until the limit refuses them, each after the
    // first refusal overwriting `keep` too, so a replayed record would show.
    let value = "v".repeat(1024);
    let mut pipeline = String::new();
    for i in 0..200 {
        pipeline.push_str(&format!("PUT m k{i} {value}\r\nPUT m keep {i}\r\n"));
    }
    conn.send(pipeline.as_bytes());
    let mut acknowledged = BTreeMap::new();
    let mut refused = 0;
    for i in 0..200 {
        let big = conn.read_line();
        let small = conn.read_line();
        assert_eq!(small, b"OK\r\n", "the small overwrite of keep {i} fits");
        acknowledged.insert("keep".to_string(), i.to_string());
        match big.as_slice() {
            b"OK\r\n" => {
                acknowledged.insert(format!("k{i}"), value.clone());
            }
            b"ERROR out of memory\r\n" => refused += 1,
            other => panic!("PUT m k{i}: {}", show(other)),
        }
    }
    assert!(refused > 0, "the limit was never reached");
    stop(server);
    let server = serve(&dir, &["--workers", "1"]);
    let mut conn = Conn::connect(server.addr());
    for i in 0..200 {
        let key = format!("k{i}");
        let expected = match acknowledged.get(&key) {
            Some(value) => format!("{value}\r\nOK\r\n"),
            None => "\r\nOK\r\n".to_string(),
        };
        conn.roundtrip(format!("GET m {key}\r\n").as_bytes(), expected.as_bytes());
    }
    conn.roundtrip(b"GET m keep\r\n", b"199\r\nOK\r\n");
    stop(server);
}

/// A write refused past `--max-memory` and then a crash in the same batch: the crash
/// must not leave the refused write's record to be replayed, nor its bookkeeping to
/// trip the connection's next (shorter) batch.
#[test]
fn a_crash_after_a_refused_write_neither_replays_it_nor_crashes_the_next_batch() {
    let dir = TempDir::new("crash-after-refusal");
    let server = serve(&dir, &["--workers", "1", "--max-memory", "65536", "--debug", "--fsync", "always"]);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"CREATE m\r\n", b"OK\r\n");
    let value = "v".repeat(1024);
    let mut filled = 0;
    loop {
        conn.send(format!("PUT m fill{filled} {value}\r\n").as_bytes());
        match conn.read_line().as_slice() {
            b"OK\r\n" => filled += 1,
            b"ERROR out of memory\r\n" => break,
            other => panic!("filling: {}", show(other)),
        }
        assert!(filled < 1000, "the limit never bit");
    }
    // One batch: a refused write, its key's neighbour, then the crash.
    let batch = format!("PUT m refused {value}\r\nPUT m after 1\r\nDEBUG CRASH m\r\n");
    conn.send(batch.as_bytes());
    assert_same_bytes(&conn.read_line(), b"ERROR out of memory\r\n");
    let second = conn.read_line();
    assert!(second == b"OK\r\n" || second == b"ERROR out of memory\r\n", "{}", show(&second));
    assert_same_bytes(&conn.read_line(), CRASHED);
    // The next, shorter batch on the same connection is served, not crashed.
    conn.roundtrip(b"GET m refused\r\n", b"\r\nOK\r\n");
    assert_eq!(conn.stat("worker_restarts"), 1, "one crash, the injected one");
    stop(server);
    let server = serve(&dir, &["--workers", "1"]);
    let mut conn = Conn::connect(server.addr());
    conn.roundtrip(b"GET m refused\r\n", b"\r\nOK\r\n");
    let after: &[u8] = if second == b"OK\r\n" { b"1\r\nOK\r\n" } else { b"\r\nOK\r\n" };
    conn.roundtrip(b"GET m after\r\n", after);
    conn.roundtrip(
        format!("GET m fill{}\r\n", filled - 1).as_bytes(),
        format!("{value}\r\nOK\r\n").as_bytes(),
    );
    stop(server);
}
