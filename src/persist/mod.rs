//! Persistence: a data directory that gives a restarted node its buckets back.
//!
//! Each partition has a log of its own (no lock shared across workers): append-only
//! segments `NNNNNNNNNN.log` of checksummed records (`record.rs`), and now and then a
//! snapshot `NNNNNNNNNN.snap` that replaces every segment numbered below it. A change
//! is logged in the same critical section that applies it (`batch.rs` logs a stretch of
//! requests ahead, then `apply.rs` applies them),
//! and its `OK` goes out only after its record is written (`everysec`, `no`) or written
//! and synced (`always`; a sync that fails is logged and counted, and the replies still
//! go out: the writes are applied and written, only not known to be on disk).
//!
//! ```text
//! DIR, DIR/LOCK                 both locked by the running process (a second one refuses)
//! DIR/CURRENT                   the name of the live generation, replaced atomically
//! DIR/gen-0001/MANIFEST         "kv-data 1" and the number of partitions
//! DIR/gen-0001/p000/0000000003.snap, 0000000003.log, 0000000004.log
//! DIR/foreign/NNNNNNNNNN.snap    buckets this node no longer owns, kept, never loaded
//! ```
//!
//! Opening deletes nothing until the generation `CURRENT` names is there, its manifest
//! matches its partition folders and every partition has loaded; then it removes what
//! the loaded data replaces, and only files and generations named as kv names them.
//!
//! A generation fixes the number of partitions. Started with another `--workers`, kv
//! loads the old generation, moves every bucket to its new owner, writes a snapshot of
//! each new partition into a new generation, and switches `CURRENT` to it: one rename.
//!
//! Compaction (in `housekeeping.rs`, which can reach the workers' locks) relies on one
//! invariant: replaying a snapshot, then every segment from the one started just before
//! the snapshot began, in order, gives the current state. A snapshot is written in
//! chunks while writes go on, so it may hold a bucket's state from any moment after
//! that segment began; replaying the segment's records over it brings every bucket to
//! its final state, because each record sets what it names (a PUT the value, a DELETE
//! the key's absence, a DROP the bucket's), and changes to a bucket that is not there are
//! skipped on replay.

mod load;
mod log;
mod record;
mod snapshot;

#[cfg(test)]
pub(crate) use log::test_log;
pub use log::{LogSync, PartitionLog, parse_file_name};
pub use record::{FileKind, Op};
pub use snapshot::{CHUNK_BYTES, SnapshotWriter, bucket_records};

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::store::Partition;
use crate::sys;

/// When a logged change is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Before its `OK` goes out: one sync per round or per worker drain, never per
    /// request.
    Always,
    /// By a flusher thread, every second: a crash loses at most about two seconds.
    #[default]
    EverySec,
    /// When the kernel writes it back; at shutdown.
    No,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(format!("--fsync {text:?}: expected always, everysec or no")),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

/// Syncs a directory, so that a file created or renamed in it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why a data directory could not be opened or loaded. Its `Display` is what
/// `kv serve` prints before exiting.
#[derive(Debug)]
pub enum LoadError {
    /// A file or folder could not be read or written.
    Io { path: PathBuf, error: io::Error },
    /// Another process holds the directory.
    InUse(PathBuf),
    /// `--data-dir` is not a directory.
    NotADirectory(PathBuf),
    /// Damage that is not a torn tail; `--repair` keeps what precedes it.
    Damaged { path: PathBuf, offset: u64, why: String },
    /// Data files missing (a segment from a partition's sequence, or a partition's
    /// every file): the writes they held are lost; `--repair` loads the rest.
    Missing { path: PathBuf, what: String },
    /// A manifest this build cannot read.
    Manifest { path: PathBuf, why: String },
}

impl LoadError {
    fn io(path: &Path, error: io::Error) -> Self {
        LoadError::Io { path: path.to_path_buf(), error }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            LoadError::InUse(path) => {
                write!(f, "{}: the data directory is in use by another kv process", path.display())
            }
            LoadError::NotADirectory(path) => write!(f, "--data-dir {}: not a directory", path.display()),
            LoadError::Damaged { path, offset, why } => write!(
                f,
                "{}: {why} at offset {offset}; start with --repair to keep what precedes it \
                 (the damaged file is moved aside, not deleted)",
                path.display()
            ),
            LoadError::Manifest { path, why } => write!(f, "{}: {why}", path.display()),
            LoadError::Missing { path, what } => write!(
                f,
                "{}: {what}: the writes they held are lost; start with --repair to load the rest \
                 without them",
                path.display()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// How a data directory is opened.
#[derive(Debug, Clone)]
pub struct DataDirConfig {
    pub root: PathBuf,
    pub policy: FsyncPolicy,
    pub repair: bool,
    /// The bucket-placement seed written into a new generation's manifest.
    pub seed: u64,
}

/// An open data directory: the lock, and each partition's log and loaded data.
#[derive(Debug)]
pub struct Opened {
    pub logs: Vec<PartitionLog>,
    pub partitions: Vec<Partition>,
    /// How long loading took.
    pub load_time: Duration,
    /// Held for the process's life: a second process refuses the directory.
    pub lock: DirLock,
}

const MANIFEST_FIRST_LINE: &str = "kv-data 1";

/// Opens (creating if needed) the data directory, loads every partition and places
/// each bucket in partition `place(bucket)` of `partitions`, or, for `None` (a bucket
/// this node does not own), in a foreign snapshot kept beside the data. Warnings go to
/// the log.
pub fn open(
    config: &DataDirConfig,
    partitions: usize,
    place: &(dyn Fn(&[u8]) -> Option<usize> + Sync),
) -> Result<Opened, LoadError> {
    let started = Instant::now();
    let root = &config.root;
    if root.exists() && !root.is_dir() {
        return Err(LoadError::NotADirectory(root.clone()));
    }
    fs::create_dir_all(root).map_err(|error| LoadError::io(root, error))?;
    let lock = lock_dir(root)?;
    let (generation, stored) = current_generation(root, partitions, config.seed)?;
    let gen_dir = root.join(&generation);
    let loaded = load_all(&gen_dir, stored, config.repair)?;
    // Only now, with every partition loaded, is anything the live data replaces removed.
    for warning in load::remove_leftovers(&loaded.leftovers) {
        ::log::warn!("{warning}");
    }
    remove_other_generations(root, &generation);
    let mut placed: Vec<Partition> = (0..partitions).map(|_| Partition::new()).collect();
    let moved = place_buckets(root, loaded.partitions, stored == partitions, place, &mut placed)?;
    let logs = if moved {
        let next = next_generation(root, &generation, &placed, config.seed)?;
        open_logs(&root.join(next), partitions, config.policy)?
    } else {
        loaded
            .tails
            .iter()
            .enumerate()
            .map(|(p, tail)| tail.open(&partition_dir(&gen_dir, p), config.policy))
            .collect::<Result<_, _>>()?
    };
    Ok(Opened { logs, partitions: placed, load_time: started.elapsed(), lock })
}

/// What keeps a second kv out of a data directory while this one runs: a lock on the
/// directory itself, and one on its `LOCK` file. An operator can delete `LOCK` (it
/// looks like litter); the folder holding the data cannot be swapped from under kv
/// without moving the data too. The `LOCK` file's lock stays so that an older kv,
/// which takes only that one, is kept out as well. Both are released when kv exits.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    _file: File,
}

fn lock_dir(root: &Path) -> Result<DirLock, LoadError> {
    let dir = File::open(root).map_err(|error| LoadError::io(root, error))?;
    take_lock(&dir, root, root)?;
    let path = root.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| LoadError::io(&path, error))?;
    take_lock(&file, &path, root)?;
    Ok(DirLock { _dir: dir, _file: file })
}

/// Locks `file` (at `path`) for the data directory `root`.
fn take_lock(file: &File, path: &Path, root: &Path) -> Result<(), LoadError> {
    match sys::try_lock_exclusive(file) {
        Ok(true) => Ok(()),
        Ok(false) => Err(LoadError::InUse(root.to_path_buf())),
        Err(error) => Err(LoadError::io(path, error)),
    }
}

/// The folder of partition `p` in a generation.
fn partition_dir(gen_dir: &Path, p: usize) -> PathBuf {
    gen_dir.join(partition_name(p))
}

/// The name of partition `p`'s folder: `p000`, `p001`, ...
fn partition_name(p: usize) -> String {
    format!("p{p:03}")
}

/// Whether `name` is one kv itself gives a generation: `gen-` and its number in at
/// least four digits, no leading zero beyond those (`gen-0001`, `gen-12345`). Only
/// these are ever removed; `gen-0001.bak` is an operator's, and left alone.
fn is_generation_name(name: &str) -> bool {
    name.strip_prefix("gen-")
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .is_some_and(|number| generation_name(number) == name)
}

fn generation_name(number: u64) -> String {
    format!("gen-{number:04}")
}

/// The live generation's name and partition count, creating the first one for a new
/// directory. Deletes nothing: a `CURRENT` that names no generation here, a manifest
/// that cannot be read, or partition folders that do not match the manifest stop kv
/// with the file to look at, every generation left as it was.
fn current_generation(root: &Path, partitions: usize, seed: u64) -> Result<(String, usize), LoadError> {
    let current = root.join("CURRENT");
    let generation = match fs::read_to_string(&current) {
        Ok(text) => text.trim().to_string(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if let Some(existing) = any_generation(root) {
                // Data without the file that says which is live: starting afresh would
                // delete it. An operator restores CURRENT (the newest generation's name).
                return Err(LoadError::Manifest {
                    path: current,
                    why: format!(
                        "is missing, but {existing} is there; write its name into CURRENT to load it"
                    ),
                });
            }
            let name = generation_name(1);
            create_generation(root, &name, partitions, seed)?;
            // Every partition has its segment 1 before CURRENT names the generation: a
            // start cut short before that point begins again from nothing, and never
            // leaves some partitions with files and others without (which reads as a
            // partition whose files were lost).
            for p in 0..partitions {
                let dir = partition_dir(&root.join(&name), p);
                log::create_segment(&dir, 1).map_err(|error| LoadError::io(&dir, error))?;
            }
            switch_current(root, &name)?;
            name
        }
        Err(error) => return Err(LoadError::io(&current, error)),
    };
    check_named_generation(root, &current, &generation)?;
    let manifest = root.join(&generation).join("MANIFEST");
    let stored = read_manifest(&manifest)?;
    check_partition_dirs(&root.join(&generation), &manifest, stored)?;
    Ok((generation, stored))
}

/// Checks that `CURRENT` (at `current`) names a generation folder that is there.
fn check_named_generation(root: &Path, current: &Path, generation: &str) -> Result<(), LoadError> {
    let problem = if !is_generation_name(generation) {
        format!("names {generation:?}, not a generation (gen-NNNN)")
    } else if !root.join(generation).is_dir() {
        format!("names {generation}, but there is no folder {generation}")
    } else {
        return Ok(());
    };
    let mut here = generations_in(root);
    here.sort();
    let here = if here.is_empty() { "none".to_string() } else { here.join(", ") };
    Err(LoadError::Manifest {
        path: current.to_path_buf(),
        why: format!(
            "{problem}; nothing was loaded or deleted. Generations here: {here}. Write the live \
             generation's name into CURRENT to load it"
        ),
    })
}

/// The partition count a manifest states.
fn read_manifest(manifest: &Path) -> Result<usize, LoadError> {
    let text = fs::read_to_string(manifest).map_err(|error| LoadError::io(manifest, error))?;
    let mut lines = text.lines();
    let stored = match (lines.next(), lines.next().and_then(|l| l.strip_prefix("partitions "))) {
        (Some(MANIFEST_FIRST_LINE), Some(n)) => n.trim().parse::<usize>().ok().filter(|&n| n > 0),
        _ => None,
    };
    stored.ok_or_else(|| LoadError::Manifest {
        path: manifest.to_path_buf(),
        why: "not a kv manifest of this version".into(),
    })
}

/// Checks that the partition folders of `gen_dir` (named as [`partition_name`] names
/// them) are exactly `p000` up to the manifest's count: a count that says fewer would
/// leave some unloaded, one that says more would load empty partitions in their place.
fn check_partition_dirs(gen_dir: &Path, manifest: &Path, stored: usize) -> Result<(), LoadError> {
    let entries = fs::read_dir(gen_dir).map_err(|error| LoadError::io(gen_dir, error))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| LoadError::io(gen_dir, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(p) = partition_number(&name) {
            found.push(p);
        }
    }
    found.sort_unstable();
    let extra: Vec<String> = found.iter().filter(|&&p| p >= stored).map(|&p| partition_name(p)).collect();
    let missing: Vec<String> =
        (0..stored).filter(|p| found.binary_search(p).is_err()).take(10).map(partition_name).collect();
    if extra.is_empty() && missing.is_empty() {
        return Ok(());
    }
    let mut why = format!("says {stored} partition(s), but");
    if !missing.is_empty() {
        why.push_str(&format!(" {} is missing", missing.join(", ")));
    }
    if !extra.is_empty() {
        let and = if missing.is_empty() { "" } else { " and" };
        why.push_str(&format!("{and} {} is there too", extra.join(", ")));
    }
    why.push_str("; nothing was loaded or deleted. Correct the manifest or the folders to match");
    Err(LoadError::Manifest { path: manifest.to_path_buf(), why })
}

/// The number of a partition folder named as [`partition_name`] names them.
fn partition_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix('p')?;
    let number: usize = digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok())??;
    (partition_name(number) == name).then_some(number)
}

/// The name of some generation folder in `root`, if there is one.
fn any_generation(root: &Path) -> Option<String> {
    fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| is_generation_name(name))
}

/// The folders of `root` named as kv names generations.
fn generations_in(root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| is_generation_name(name))
        .collect()
}

/// Removes every generation but `live`, once `live` has loaded: superseded ones, and
/// a switch that never finished. Only folders named as kv names them; each removal is
/// logged.
fn remove_other_generations(root: &Path, live: &str) {
    for name in generations_in(root) {
        if name == live {
            continue;
        }
        let path = root.join(&name);
        match fs::remove_dir_all(&path) {
            Ok(()) => ::log::info!("removed {}, a generation {live} replaces", path.display()),
            Err(error) => ::log::warn!("could not remove {}, replaced by {live}: {error}", path.display()),
        }
    }
}

/// Creates generation `name` with `partitions` empty partition folders.
fn create_generation(root: &Path, name: &str, partitions: usize, seed: u64) -> Result<(), LoadError> {
    let dir = root.join(name);
    let _ = fs::remove_dir_all(&dir);
    for p in 0..partitions {
        let path = partition_dir(&dir, p);
        fs::create_dir_all(&path).map_err(|error| LoadError::io(&path, error))?;
    }
    let manifest = dir.join("MANIFEST");
    fs::write(&manifest, format!("{MANIFEST_FIRST_LINE}\npartitions {partitions}\nseed {seed}\n"))
        .and_then(|()| File::open(&manifest)?.sync_all())
        .and_then(|()| sync_dir(&dir))
        .and_then(|()| sync_dir(root))
        .map_err(|error| LoadError::io(&manifest, error))
}

/// Points `CURRENT` at generation `name`: write a temporary file, sync, rename, sync.
fn switch_current(root: &Path, name: &str) -> Result<(), LoadError> {
    let tmp = root.join("CURRENT.tmp");
    fs::write(&tmp, format!("{name}\n"))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, root.join("CURRENT")))
        .and_then(|()| sync_dir(root))
        .map_err(|error| LoadError::io(&tmp, error))
}

/// The bucket-placement seed the live generation of `root` was written with, if there
/// is one: set before loading, a restart finds every bucket where it was.
pub fn stored_seed(root: &Path) -> Option<u64> {
    let generation = fs::read_to_string(root.join("CURRENT")).ok()?;
    let manifest = fs::read_to_string(root.join(generation.trim()).join("MANIFEST")).ok()?;
    manifest.lines().find_map(|line| line.strip_prefix("seed ")?.trim().parse().ok())
}

/// Where a loaded partition's log goes on.
#[derive(Debug)]
struct Tail {
    segment: u64,
    segment_len: u64,
    total: u64,
}

impl Tail {
    fn open(&self, dir: &Path, policy: FsyncPolicy) -> Result<PartitionLog, LoadError> {
        PartitionLog::open(dir, self.segment, self.segment_len, self.total, policy)
            .map_err(|error| LoadError::io(dir, error))
    }
}

struct LoadedAll {
    partitions: Vec<Partition>,
    tails: Vec<Tail>,
    /// Files the loaded ones replace, for [`load::remove_leftovers`].
    leftovers: Vec<PathBuf>,
}

/// Loads every partition of a generation, in parallel.
fn load_all(gen_dir: &Path, partitions: usize, repair: bool) -> Result<LoadedAll, LoadError> {
    check_every_partition_has_files(gen_dir, partitions, repair)?;
    let results: Vec<Result<load::Loaded, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..partitions)
            .map(|p| {
                let dir = partition_dir(gen_dir, p);
                scope.spawn(move || load::load_partition(&dir, repair))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LoadError::io(gen_dir, io::Error::other("a loading thread panicked")))
                })
            })
            .collect()
    });
    let mut all = LoadedAll { partitions: Vec::new(), tails: Vec::new(), leftovers: Vec::new() };
    for result in results {
        let loaded = result?;
        for warning in &loaded.warnings {
            ::log::warn!("{warning}");
        }
        all.tails.push(Tail {
            segment: loaded.segment,
            segment_len: loaded.segment_len,
            total: loaded.total,
        });
        all.partitions.push(loaded.partition);
        all.leftovers.extend(loaded.leftovers);
    }
    Ok(all)
}

/// Every partition gets a segment at its first load: one without any, beside others
/// with theirs, lost its files. That stops the load (before any partition writes a
/// thing, so the next start sees the same) unless `--repair`, which warns and goes on.
fn check_every_partition_has_files(gen_dir: &Path, partitions: usize, repair: bool) -> Result<(), LoadError> {
    let mut empty = Vec::new();
    for p in 0..partitions {
        if !load::has_data_files(&partition_dir(gen_dir, p))? {
            empty.push(partition_name(p));
        }
    }
    if empty.is_empty() || empty.len() == partitions {
        return Ok(());
    }
    let what = format!("partition(s) {} hold no data files, though the others do", empty.join(", "));
    if !repair {
        return Err(LoadError::Missing { path: gen_dir.to_path_buf(), what });
    }
    ::log::warn!("{}: {what}; loading goes on without them", gen_dir.display());
    Ok(())
}

/// Moves every loaded bucket to `placed[place(bucket)]`. Buckets no partition owns go
/// to a foreign snapshot. Returns true if the data must be written anew (buckets moved
/// between partitions, or left the node), false if every bucket stayed where it was.
fn place_buckets(
    root: &Path,
    loaded: Vec<Partition>,
    same_count: bool,
    place: &dyn Fn(&[u8]) -> Option<usize>,
    placed: &mut [Partition],
) -> Result<bool, LoadError> {
    let mut foreign = Partition::new();
    let mut moved = false;
    for (p, mut partition) in loaded.into_iter().enumerate() {
        if same_count && partition.bucket_ids().iter().all(|(name, _)| place(name) == Some(p)) {
            placed[p] = partition;
            continue;
        }
        moved = true;
        for (name, bucket) in partition.take_buckets() {
            match place(&name) {
                Some(owner) => placed[owner].insert_bucket(name, bucket),
                None => foreign.insert_bucket(name, bucket),
            }
        }
    }
    if foreign.bucket_count() > 0 {
        keep_foreign(root, &foreign)?;
    }
    Ok(moved)
}

/// Writes buckets this node no longer owns to `DIR/foreign/<time>.snap`, and names them.
fn keep_foreign(root: &Path, foreign: &Partition) -> Result<(), LoadError> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let names: Vec<String> =
        foreign.bucket_ids().iter().take(10).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect();
    let dir = root.join("foreign");
    fs::create_dir_all(&dir).map_err(|error| LoadError::io(&dir, error))?;
    // A name no earlier start used, so that no foreign snapshot ever replaces another.
    let mut seq = stamp;
    while dir.join(log::file_name(seq, record::FileKind::Snapshot)).exists() {
        seq += 1;
    }
    snapshot::write_whole(&dir, seq, foreign).map_err(|error| LoadError::io(&dir, error))?;
    ::log::warn!(
        "{} bucket(s) in {} belong to other nodes under the cluster file and were not loaded \
         (kept in {}): {}{}",
        foreign.bucket_count(),
        root.display(),
        dir.display(),
        names.join(", "),
        if foreign.bucket_count() > names.len() { ", ..." } else { "" }
    );
    Ok(())
}

/// Writes `placed` as the next generation and switches to it; returns its name.
fn next_generation(root: &Path, current: &str, placed: &[Partition], seed: u64) -> Result<String, LoadError> {
    let number: u64 = current.trim_start_matches("gen-").parse().unwrap_or(0);
    let name = generation_name(number.saturating_add(1));
    create_generation(root, &name, placed.len(), seed)?;
    for (p, partition) in placed.iter().enumerate() {
        let dir = partition_dir(&root.join(&name), p);
        snapshot::write_whole(&dir, 1, partition).map_err(|error| LoadError::io(&dir, error))?;
        log::create_segment(&dir, 1).map_err(|error| LoadError::io(&dir, error))?;
    }
    switch_current(root, &name)?;
    remove_other_generations(root, &name);
    ::log::info!("wrote the data as {} partitions in {}", placed.len(), root.join(&name).display());
    Ok(name)
}

/// Opens the logs of a generation just written (snapshot 1, empty segment 1).
fn open_logs(gen_dir: &Path, partitions: usize, policy: FsyncPolicy) -> Result<Vec<PartitionLog>, LoadError> {
    (0..partitions)
        .map(|p| {
            let dir = partition_dir(gen_dir, p);
            let total = fs::read_dir(&dir)
                .map_err(|error| LoadError::io(&dir, error))?
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            let header = record::HEADER_LEN as u64;
            PartitionLog::open(&dir, 1, header, total, policy).map_err(|error| LoadError::io(&dir, error))
        })
        .collect()
}
