//! Loading one partition's folder at start: its newest snapshot, then every segment
//! begun since, in order.
//!
//! A torn tail (the newest segment ending inside a record, or in a record whose
//! checksum fails, with no run of whole records after it to the end) is what a crash
//! mid-write leaves: it is cut off with a warning, as Redis's `aof-load-truncated`
//! does, and the bytes cut off are kept in `<segment>.torn-<offset>`. Damage anywhere else is
//! refused, naming the file and offset, unless the operator asked to repair: then what
//! precedes the damage in that file is kept, the damaged file is moved aside (never
//! deleted), and loading goes on with the files after it, whose records are each right
//! about what they name. A damaged snapshot whose older files are still there is moved
//! aside whole, and those files loaded instead.
//!
//! Loading deletes nothing: the files a snapshot replaces are only listed, and removed
//! by the caller once every partition has loaded.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record::{self, FileKind, Op, Read};
use super::{LoadError, sync_dir};
use crate::store::Partition;

/// What loading a partition's folder found.
#[derive(Debug)]
pub struct Loaded {
    pub partition: Partition,
    /// The newest segment, to append to, and its good length.
    pub segment: u64,
    pub segment_len: u64,
    /// Bytes of every live file.
    pub total: u64,
    /// Warnings for the log: torn tails cut off, damage repaired.
    pub warnings: Vec<String>,
    /// Files the loaded ones replace (see [`files_to_load`]): removed by
    /// [`remove_leftovers`] once every partition has loaded, never before.
    pub leftovers: Vec<PathBuf>,
}

/// One file of a partition's folder.
#[derive(Debug, Clone)]
struct DataFile {
    seq: u64,
    kind: FileKind,
    path: PathBuf,
}

/// The snapshot and segments of `dir` to load, in order, and the files they replace:
/// those a finished compaction left behind, and unfinished `.tmp` snapshots. Deletes
/// nothing: the newest snapshot has not been read yet, and if it turns out damaged the
/// files it would replace are all that is left.
fn files_to_load(dir: &Path) -> Result<(Vec<DataFile>, Vec<PathBuf>), LoadError> {
    let mut files = Vec::new();
    let mut leftovers = Vec::new();
    let entries = fs::read_dir(dir).map_err(|error| LoadError::io(dir, error))?;
    for entry in entries {
        let path = entry.map_err(|error| LoadError::io(dir, error))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parsed = super::log::parse_file_name(&name);
        if parsed.is_none() && is_temporary(&name) {
            leftovers.push(path.clone());
        }
        if let Some((seq, kind)) = parsed {
            files.push(DataFile { seq, kind, path });
        }
    }
    let snapshot = files.iter().filter(|f| f.kind == FileKind::Snapshot).map(|f| f.seq).max();
    // The newest snapshot covers everything before the segment of its own number.
    let (mut keep, stale): (Vec<DataFile>, Vec<DataFile>) = files.into_iter().partition(|f| match snapshot {
        None => true,
        Some(snap) if f.kind == FileKind::Snapshot => f.seq == snap,
        Some(snap) => f.seq >= snap,
    });
    // A compaction published its snapshot and stopped before deleting these.
    leftovers.extend(stale.into_iter().map(|file| file.path));
    keep.sort_by_key(|f| (f.seq, f.kind == FileKind::Segment));
    Ok((keep, leftovers))
}

/// Whether `name` is a temporary file kv writes: `<snapshot>.tmp` (a compaction's, left
/// by a crash or a failure) or `NNNNNNNNNN.tmp` (a repair's). Never anything else.
fn is_temporary(name: &str) -> bool {
    name.strip_suffix(".tmp").is_some_and(|stem| {
        super::log::parse_file_name(stem).is_some()
            || (!stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Removes the files loading found replaced, once every partition has loaded; returns
/// a warning for each removal (and each that failed).
pub fn remove_leftovers(leftovers: &[PathBuf]) -> Vec<String> {
    leftovers
        .iter()
        .map(|path| match fs::remove_file(path) {
            Ok(()) => format!("removed {}, replaced by a snapshot", path.display()),
            Err(error) => format!("could not remove {}, replaced by a snapshot: {error}", path.display()),
        })
        .collect()
}

/// Most damaged snapshots `--repair` falls back from in one partition.
const MAX_FALLBACKS: usize = 64;

/// Loads the folder of one partition. Writes only to cut a torn tail (its bytes kept
/// aside), to repair when asked, or to start a first segment; deletes nothing.
pub fn load_partition(dir: &Path, repair: bool) -> Result<Loaded, LoadError> {
    let mut warnings = Vec::new();
    // Each round that does not finish moved a damaged snapshot aside, so the next one
    // finds one fewer.
    for _ in 0..MAX_FALLBACKS {
        if let Some(loaded) = load_once(dir, repair, &mut warnings)? {
            return Ok(loaded);
        }
    }
    Err(LoadError::io(dir, io::Error::other("too many damaged snapshots to fall back from")))
}

/// One attempt at loading `dir`; `None` when `--repair` moved a damaged snapshot aside
/// and the folder must be read again, to load the older files it would have replaced.
fn load_once(dir: &Path, repair: bool, warnings: &mut Vec<String>) -> Result<Option<Loaded>, LoadError> {
    let (files, leftovers) = files_to_load(dir)?;
    let gaps = gaps(&files);
    if !gaps.is_empty() && !repair {
        return Err(LoadError::Missing { path: dir.to_path_buf(), what: gaps.join(", ") });
    }
    // Older files the snapshot replaces are all still there: if it is damaged, they
    // are a better repair than the part of it before the damage.
    let mut partition = Partition::new();
    let mut total = 0;
    let newest_segment = files.iter().filter(|f| f.kind == FileKind::Segment).map(|f| f.seq).max();
    let mut segment_len = 0;
    for file in &files {
        let is_tail = file.kind == FileKind::Segment && Some(file.seq) == newest_segment;
        let fall_back = file.kind == FileKind::Snapshot && older_files_replace(&leftovers, file.seq);
        let Some(len) = load_file(&mut partition, file, is_tail, (repair, fall_back), warnings)? else {
            return Ok(None);
        };
        total += len;
        if is_tail {
            segment_len = len;
        }
    }
    let segment = match newest_segment {
        Some(seq) => seq,
        None => {
            // A new partition (segment 1), or (with --repair) one whose segments are
            // gone: the one a snapshot's number names comes next after it.
            let next = files.iter().map(|f| f.seq).max().unwrap_or(1);
            drop(super::log::create_segment(dir, next).map_err(|error| LoadError::io(dir, error))?);
            segment_len = record::HEADER_LEN as u64;
            total += segment_len;
            next
        }
    };
    let mut leftovers = leftovers;
    if !gaps.is_empty() {
        // Said only of the attempt that loads: one that fell back from a damaged
        // snapshot may have found a gap after it that the older files do not have.
        warnings
            .extend(gaps.iter().map(|gap| format!("{}: {gap}; loading goes on without them", dir.display())));
        total = close_gaps(dir, segment, &partition, &files, &mut leftovers)? + segment_len;
        warnings.push(format!(
            "{}: wrote snapshot {segment} of what was loaded, so that the next start finds no gap",
            dir.display()
        ));
    }
    let warnings = std::mem::take(warnings);
    Ok(Some(Loaded { partition, segment, segment_len, total, warnings, leftovers }))
}

/// True if `older` (files a compaction left behind) make a whole chain to load in
/// place of damaged snapshot `seq`: an older snapshot (or, with none, segment 1) and
/// every segment from it to the newest of them, without a gap. A crash while they
/// were being removed can leave only some of them, and loading those would drop more
/// than the damaged snapshot's part before its damage keeps. (Segments missing after
/// the chain's end, up to `seq`, are warned of when it loads.)
fn older_files_replace(older: &[PathBuf], seq: u64) -> bool {
    let parsed: Vec<(u64, FileKind)> = older
        .iter()
        .filter_map(|path| path.file_name()?.to_str().and_then(super::log::parse_file_name))
        .filter(|&(older_seq, _)| older_seq < seq)
        .collect();
    let base =
        parsed.iter().filter(|(_, kind)| *kind == FileKind::Snapshot).map(|&(n, _)| n).max().unwrap_or(1);
    let newest = parsed.iter().filter(|(_, kind)| *kind == FileKind::Segment).map(|&(n, _)| n).max();
    newest.is_some_and(|newest| (base..=newest).all(|n| parsed.contains(&(n, FileKind::Segment))))
}

/// The stretches of segments missing from `files`, which must run on without a gap
/// from where they start: segment 1 for a partition without a snapshot, segment N
/// after snapshot N (compaction starts it before writing the snapshot). A gap is a file
/// lost, and with it acknowledged writes, so it stops the load unless `--repair`.
fn gaps(files: &[DataFile]) -> Vec<String> {
    let Some(first) = files.first() else { return Vec::new() };
    let mut expected = if first.kind == FileKind::Snapshot { first.seq } else { 1 };
    let mut missing = Vec::new();
    for file in files.iter().filter(|f| f.kind == FileKind::Segment) {
        if file.seq > expected {
            missing.push(format!("segment(s) {expected} to {} missing", file.seq - 1));
        }
        expected = file.seq + 1;
    }
    if first.kind == FileKind::Snapshot && expected == first.seq {
        let snapshot = super::log::file_name(first.seq, FileKind::Snapshot);
        missing.push(format!("segment {expected}, the one after snapshot {snapshot}, missing"));
    }
    missing
}

/// After `--repair` loaded past a gap: writes what was loaded as snapshot `segment`
/// (the segment appended to from now on), so that the files before it, listed in
/// `leftovers` to be removed once every partition has loaded, no longer count and the
/// next start finds no gap; without it every start would be refused again until a
/// compaction. The segment's records are also in the snapshot, and replaying them on
/// top of it changes nothing: each sets what it names, as after a compaction. Returns
/// the snapshot's length.
fn close_gaps(
    dir: &Path,
    segment: u64,
    partition: &Partition,
    files: &[DataFile],
    leftovers: &mut Vec<PathBuf>,
) -> Result<u64, LoadError> {
    let written =
        super::snapshot::write_whole(dir, segment, partition).map_err(|error| LoadError::io(dir, error))?;
    leftovers.extend(files.iter().filter(|file| file.seq < segment).map(|file| file.path.clone()));
    Ok(written)
}

/// Whether `dir` holds any data file (a snapshot or a segment, current or replaced).
pub fn has_data_files(dir: &Path) -> Result<bool, LoadError> {
    let entries = fs::read_dir(dir).map_err(|error| LoadError::io(dir, error))?;
    for entry in entries {
        let name = entry.map_err(|error| LoadError::io(dir, error))?.file_name();
        if name.to_str().and_then(super::log::parse_file_name).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Replays one file into `partition`; returns its good length.
///
/// `repair` is `--repair`; with it and `fall_back`, a damaged snapshot is moved aside
/// whole and `None` returned, for the caller to load the older files instead.
fn load_file(
    partition: &mut Partition,
    file: &DataFile,
    is_tail: bool,
    (repair, fall_back): (bool, bool),
    warnings: &mut Vec<String>,
) -> Result<Option<u64>, LoadError> {
    let bytes = fs::read(&file.path).map_err(|error| LoadError::io(&file.path, error))?;
    let damage = match record::check_header(&bytes, file.kind) {
        Err(_) if is_tail && bytes.len() < record::HEADER_LEN => {
            // Created, then the crash came before its header was whole.
            Some((0, "a torn header".to_string(), true))
        }
        Err(why) => Some((0, why, false)),
        Ok(()) => replay(partition, &bytes[record::HEADER_LEN..])
            .map(|(offset, why, torn)| (offset + record::HEADER_LEN, why, torn)),
    };
    let Some((offset, why, torn)) = damage else { return Ok(Some(bytes.len() as u64)) };
    if torn && is_tail {
        let kept = keep_torn_bytes(&file.path, &bytes, offset)?;
        cut_tail(&file.path, offset)?;
        let dropped = bytes.len().saturating_sub(offset);
        let kept = kept.map_or(String::new(), |side| format!(", kept in {}", side.display()));
        warnings.push(format!(
            "{}: cut off a torn last record at offset {offset} ({dropped} bytes{kept})",
            file.path.display(),
        ));
        return Ok(Some(offset.max(record::HEADER_LEN) as u64));
    }
    if !repair {
        return Err(LoadError::Damaged { path: file.path.clone(), offset: offset as u64, why });
    }
    if fall_back {
        let aside = move_aside(&file.path)?;
        warnings.push(format!(
            "{}: {why} at offset {offset}; moved it to {} and loaded the older files it replaced",
            file.path.display(),
            aside.display()
        ));
        return Ok(None);
    }
    let aside = move_aside_keeping(&file.path, &bytes, offset, file.kind)?;
    warnings.push(format!(
        "{}: {why} at offset {offset}; kept the {offset} bytes before it, moved the damaged file to {}",
        file.path.display(),
        aside.display()
    ));
    Ok(Some(offset.max(record::HEADER_LEN) as u64))
}

/// Applies every record of `records` to `partition`. Returns where the first bad
/// record starts, why, and whether it is merely torn: the last thing in the file, as a
/// crash in the middle of a write leaves it.
fn replay(partition: &mut Partition, records: &[u8]) -> Option<(usize, String, bool)> {
    let mut at = 0;
    while let Some(read) = record::decode(&records[at..]) {
        let rest = &records[at..];
        let why = match read {
            Read::Record(op, len) => {
                apply(partition, op);
                at += len;
                continue;
            }
            Read::Torn => "a record longer than the rest of the file".to_string(),
            Read::Damaged(why) => why,
        };
        // A bad last record is what a torn write of it can leave, and so is a tail of
        // zeros (a file extended but not written before a crash). A record that
        // claims more bytes than follow is the last only if no run of whole records
        // follows it to the end: one flipped bit in a length must not pass for a crash,
        // and a value that holds a record, cut short by a crash, must not pass for one.
        let last = !has_record_after(rest) && !record::records_run_to_the_end(&rest[1..], SCAN_BUDGET);
        let torn = last || rest.iter().all(|&b| b == 0);
        let why = if torn { why } else { format!("{why}, with whole records after it") };
        return Some((at, why, torn));
    }
    None
}

/// Bytes of checksums [`replay`] may compute looking for a whole record after a bad
/// one; past it, the bad record is taken for damage, which `--repair` can still mend.
const SCAN_BUDGET: usize = 256 * 1024 * 1024;

/// True if bytes remain past the end that the damaged record at the start of `bytes`
/// claims: then it is not the last record, and the damage is not a torn tail.
fn has_record_after(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        return false;
    };
    8usize.checked_add(len).is_some_and(|end| end < bytes.len())
}

/// Replays one logged change. A change to a bucket that is not there is skipped: a
/// snapshot may already reflect a later state (see compaction in `persist/mod.rs`).
pub fn apply(partition: &mut Partition, op: Op<'_>) {
    let _ = match op {
        Op::Create { bucket } => {
            partition.create(bucket);
            Ok(())
        }
        Op::Put { bucket, key, value } => partition.put(bucket, key, value),
        Op::Delete { bucket, key } => partition.delete(bucket, key),
        Op::Drop { bucket } => partition.drop_bucket(bucket),
    };
}

/// Writes the bytes of a torn tail, `bytes[offset..]`, to `<segment>.torn-<offset>`
/// beside it (synced, and the folder too) before the segment is cut: a tail taken for
/// torn that was not is still there for an operator. Returns the side file's path,
/// `None` when there is nothing to keep (a segment created empty).
fn keep_torn_bytes(path: &Path, bytes: &[u8], offset: usize) -> Result<Option<PathBuf>, LoadError> {
    let tail = bytes.get(offset..).unwrap_or_default();
    if tail.is_empty() {
        return Ok(None);
    }
    let side = unused_sibling(path, &format!(".torn-{offset}"))?;
    let write = |mut file: fs::File| file.write_all(tail).and_then(|()| file.sync_all());
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&side)
        .and_then(write)
        .map_err(|error| LoadError::io(&side, error))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|error| LoadError::io(dir, error))?;
    }
    Ok(Some(side))
}

/// Cuts `path` (whose content is `bytes`) back to `offset`, or to a bare header.
fn cut_tail(path: &Path, offset: usize) -> Result<(), LoadError> {
    let file = fs::OpenOptions::new().write(true).open(path).map_err(|error| LoadError::io(path, error))?;
    if offset < record::HEADER_LEN {
        file.set_len(0).map_err(|error| LoadError::io(path, error))?;
        use std::io::Write;
        (&file).write_all(&record::header(FileKind::Segment)).map_err(|error| LoadError::io(path, error))?;
    } else {
        file.set_len(offset as u64).map_err(|error| LoadError::io(path, error))?;
    }
    file.sync_all().map_err(|error| LoadError::io(path, error))
}

/// `<file><suffix>`, or `<file><suffix>-<n>` if that name is taken: what kv keeps
/// aside (a damaged file, `.damaged`; a torn tail, `.torn-<offset>`) never replaces
/// what an earlier repair or restart kept.
fn unused_sibling(path: &Path, suffix: &str) -> Result<PathBuf, LoadError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    (0..1000)
        .map(|n| if n == 0 { format!("{name}{suffix}") } else { format!("{name}{suffix}-{n}") })
        .map(|sibling| path.with_file_name(sibling))
        .find(|sibling| !sibling.exists())
        .ok_or_else(|| {
            LoadError::io(path, io::Error::other(format!("a thousand {name}{suffix} files are kept already")))
        })
}

/// `--repair`: renames a damaged file aside (never over an earlier one); returns where.
fn move_aside(path: &Path) -> Result<PathBuf, LoadError> {
    let aside = unused_sibling(path, ".damaged")?;
    fs::rename(path, &aside).map_err(|error| LoadError::io(path, error))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|error| LoadError::io(dir, error))?;
    }
    Ok(aside)
}

/// `--repair`: moves the damaged file aside and writes what preceded the damage back
/// under its name; returns where the damaged file went.
fn move_aside_keeping(
    path: &Path,
    bytes: &[u8],
    offset: usize,
    kind: FileKind,
) -> Result<PathBuf, LoadError> {
    let aside = move_aside(path)?;
    let mut kept = bytes[..offset.max(record::HEADER_LEN).min(bytes.len())].to_vec();
    if kept.len() < record::HEADER_LEN {
        kept = record::header(kind).to_vec();
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &kept).map_err(|error| LoadError::io(&tmp, error))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|error| LoadError::io(&tmp, error))?;
    fs::rename(&tmp, path).map_err(|error| LoadError::io(path, error))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|error| LoadError::io(dir, error))?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(ops: &[Op<'_>]) -> Vec<u8> {
        let mut bytes = record::header(FileKind::Segment).to_vec();
        for op in ops {
            record::encode(op, &mut bytes);
        }
        bytes
    }

    #[test]
    fn replay_cut_at_every_offset_of_the_last_record_loads_what_precedes() {
        let ops = [
            Op::Create { bucket: b"b" },
            Op::Put { bucket: b"b", key: b"k", value: b"1" },
            Op::Put { bucket: b"b", key: b"k", value: b"22" },
        ];
        let whole = segment(&ops);
        let before_last = segment(&ops[..2]).len();
        for cut in before_last..whole.len() {
            let mut partition = Partition::new();
            let damage = replay(&mut partition, &whole[record::HEADER_LEN..cut]);
            if cut == before_last {
                assert!(damage.is_none());
            } else {
                let (offset, _, torn) = damage.expect("a cut record");
                assert_eq!(offset + record::HEADER_LEN, before_last, "cut at {cut}");
                assert!(torn, "cut at {cut} is a torn tail");
            }
            assert_eq!(partition.get(b"b", b"k"), Ok(Some(&b"1"[..])), "cut at {cut}");
        }
    }

    #[test]
    fn a_tail_of_zeros_is_torn() {
        let mut bytes = segment(&[Op::Create { bucket: b"b" }]);
        bytes.extend_from_slice(&[0; 100]);
        let mut partition = Partition::new();
        let (_, _, torn) = replay(&mut partition, &bytes[record::HEADER_LEN..]).unwrap();
        assert!(torn);
        assert!(partition.contains(b"b"));
    }

    #[test]
    fn damage_before_the_last_record_is_not_a_torn_tail() {
        let ops = [Op::Create { bucket: b"b" }, Op::Put { bucket: b"b", key: b"k", value: b"1" }];
        let mut bytes = segment(&ops);
        bytes[record::HEADER_LEN + 9] ^= 0xff;
        let mut partition = Partition::new();
        let (offset, _, torn) = replay(&mut partition, &bytes[record::HEADER_LEN..]).unwrap();
        assert_eq!(offset, 0);
        assert!(!torn);
    }

    #[test]
    fn a_flipped_length_bit_mid_file_is_damage_not_a_torn_tail() {
        let ops: Vec<Op<'_>> = std::iter::once(Op::Create { bucket: b"b" })
            .chain((0..20).map(|_| Op::Put { bucket: b"b", key: b"k", value: b"value" }))
            .collect();
        let whole = segment(&ops);
        let second = segment(&ops[..1]).len();
        // Bit 24 claims 16 MiB more than the file holds (read as cut short); bit 31
        // claims more than any record may (read as damaged): neither is the last record.
        for bit in [0x01, 0x80] {
            let mut bytes = whole.clone();
            bytes[second + 7] ^= bit;
            let mut partition = Partition::new();
            let (offset, why, torn) = replay(&mut partition, &bytes[record::HEADER_LEN..]).unwrap();
            assert_eq!(offset + record::HEADER_LEN, second, "bit {bit:#x}: {why}");
            assert!(!torn, "bit {bit:#x}: {why} taken for a torn tail, with 19 records after it");
        }
    }

    #[test]
    fn only_a_whole_chain_of_older_files_replaces_a_damaged_snapshot() {
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let complete = paths(&["0000000003.snap", "0000000003.log", "0000000004.log"]);
        assert!(older_files_replace(&complete, 5));
        assert!(older_files_replace(&paths(&["0000000001.log", "0000000002.log"]), 3));
        assert!(older_files_replace(&paths(&["0000000002.snap", "0000000002.log"]), 99));
        // A crash while they were removed left some of them only.
        assert!(!older_files_replace(&paths(&["0000000004.log"]), 5));
        assert!(!older_files_replace(&paths(&["0000000003.snap", "0000000004.log"]), 5));
        assert!(!older_files_replace(&paths(&["0000000003.snap"]), 5));
        assert!(!older_files_replace(&paths(&["0000000002.log"]), 3));
        assert!(!older_files_replace(&[], 5));
    }

    #[test]
    fn a_tail_torn_again_at_the_same_offset_is_kept_beside_the_first() {
        let dir = std::env::temp_dir().join(format!("kv-torn-twice-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let segment = dir.join("0000000001.log");
        let kept = [b"first tail".as_slice(), b"second tail"]
            .map(|tail| keep_torn_bytes(&segment, &[b"head".as_slice(), tail].concat(), 4).unwrap().unwrap());
        assert_ne!(kept[0], kept[1]);
        assert_eq!(fs::read(&kept[0]).unwrap(), b"first tail");
        assert_eq!(fs::read(&kept[1]).unwrap(), b"second tail");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_big_last_record_cut_short_is_torn_however_much_of_it_is_there() {
        let value = vec![0x5a; 64 * 1024];
        let ops = [Op::Create { bucket: b"b" }, Op::Put { bucket: b"b", key: b"k", value: &value }];
        let whole = segment(&ops);
        for cut in [whole.len() - 1, whole.len() - 30_000, segment(&ops[..1]).len() + 9] {
            let mut partition = Partition::new();
            let (_, _, torn) = replay(&mut partition, &whole[record::HEADER_LEN..cut]).unwrap();
            assert!(torn, "cut at {cut}");
        }
    }

    fn gaps_in(files: &[(u64, FileKind)]) -> Vec<String> {
        let files: Vec<DataFile> =
            files.iter().map(|&(seq, kind)| DataFile { seq, kind, path: PathBuf::new() }).collect();
        gaps(&files)
    }

    #[test]
    fn segments_missing_before_after_or_between_are_found() {
        use FileKind::{Segment as Log, Snapshot as Snap};
        for whole in [&[][..], &[(1, Log)], &[(1, Log), (2, Log)], &[(2, Snap), (2, Log), (3, Log)]] {
            assert_eq!(gaps_in(whole), Vec::<String>::new(), "{whole:?}");
        }
        let gappy: [(&[(u64, FileKind)], &str); 4] = [
            (&[(3, Log)], "segment(s) 1 to 2 missing"),
            (&[(1, Log), (4, Log)], "segment(s) 2 to 3 missing"),
            (&[(2, Snap), (3, Log)], "segment(s) 2 to 2 missing"),
            (&[(2, Snap)], "segment 2, the one after snapshot 0000000002.snap, missing"),
        ];
        for (files, said) in gappy {
            assert_eq!(gaps_in(files), vec![said.to_string()], "{files:?}");
        }
    }
}
