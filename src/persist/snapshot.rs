//! Writing a snapshot: a temporary file filled in chunks, then published atomically
//! (sync, rename, sync the folder), so a reader sees the old files or the whole new
//! snapshot, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::log::file_name;
use super::record::{self, FileKind, Op};
use super::sync_dir;
use crate::store::Partition;

/// Bytes of records gathered before a chunk is written.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A snapshot being written.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    seq: u64,
    tmp: PathBuf,
    file: File,
    len: u64,
}

impl SnapshotWriter {
    /// Starts snapshot `seq` in `dir` (it covers every segment before `seq`).
    pub fn create(dir: &Path, seq: u64) -> io::Result<Self> {
        let tmp = dir.join(format!("{}.tmp", file_name(seq, FileKind::Snapshot)));
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
        file.write_all(&record::header(FileKind::Snapshot))?;
        Ok(SnapshotWriter { dir: dir.to_path_buf(), seq, tmp, file, len: record::HEADER_LEN as u64 })
    }

    /// Appends encoded records.
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Syncs and renames it into place; returns its length.
    pub fn publish(self) -> io::Result<u64> {
        self.file.sync_all()?;
        fs::rename(&self.tmp, self.dir.join(file_name(self.seq, FileKind::Snapshot)))?;
        sync_dir(&self.dir)?;
        Ok(self.len)
    }
}

/// Appends the records that rebuild bucket `name`: a CREATE, then one PUT per pair
/// from arena offset `from`, up to about [`CHUNK_BYTES`]. Returns where to go on from.
pub fn bucket_records(
    partition: &Partition,
    name: &[u8],
    id: u64,
    from: Option<usize>,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let bucket = partition.bucket_with_id(name, id)?;
    let from = match from {
        Some(from) => from,
        None => {
            record::encode(&Op::Create { bucket: name }, out);
            0
        }
    };
    bucket.pairs_from(from, CHUNK_BYTES, |key, value| {
        record::encode(&Op::Put { bucket: name, key, value }, out);
    })
}

/// Writes a whole partition as snapshot `seq` of `dir` at once (at start-up, when no
/// one else holds it) and publishes it.
pub fn write_whole(dir: &Path, seq: u64, partition: &Partition) -> io::Result<u64> {
    let mut writer = SnapshotWriter::create(dir, seq)?;
    let mut chunk = Vec::new();
    for (name, id) in partition.bucket_ids() {
        let mut at = None;
        loop {
            let next = bucket_records(partition, &name, id, at, &mut chunk);
            writer.write(&chunk)?;
            chunk.clear();
            match next {
                Some(next) => at = Some(next),
                None => break,
            }
        }
    }
    writer.publish()
}
