//! Writing a snapshot: a temporary file filled in chunks, then published atomically
//! (sync, rename, sync the folder), so a reader sees the old files or the whole new
//! snapshot, never half of one. A writer dropped unpublished (a write failed, the disk
//! is full, the server is stopping) removes its temporary file, so failed attempts do
//! not pile up and fill the disk again.

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
    /// Renamed into place: nothing to remove when dropped.
    published: bool,
}

impl SnapshotWriter {
    /// Starts snapshot `seq` in `dir` (it covers every segment before `seq`).
    pub fn create(dir: &Path, seq: u64) -> io::Result<Self> {
        let tmp = dir.join(format!("{}.tmp", file_name(seq, FileKind::Snapshot)));
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
        // Made before the header is written, so that a failure to write it removes the file.
        let mut writer = SnapshotWriter { dir: dir.to_path_buf(), seq, tmp, file, len: 0, published: false };
        writer.write(&record::header(FileKind::Snapshot))?;
        Ok(writer)
    }

    /// Appends encoded records.
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.len += records.len() as u64;
        Ok(())
    }

    /// Syncs and renames it into place; returns its length.
    pub fn publish(mut self) -> io::Result<u64> {
        self.file.sync_all()?;
        fs::rename(&self.tmp, self.dir.join(file_name(self.seq, FileKind::Snapshot)))?;
        self.published = true;
        sync_dir(&self.dir)?;
        Ok(self.len)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        match fs::remove_file(&self.tmp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                log::warn!("could not remove the unfinished snapshot {}: {error}", self.tmp.display())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of this test's own under the system's temporary one.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kv-snapshot-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_abandoned_before_it_is_published_leaves_no_temporary_file() {
        let dir = temp_dir("abandoned");
        let mut writer = SnapshotWriter::create(&dir, 7).unwrap();
        writer.write(&[0xab; 1000]).unwrap();
        assert_eq!(names_in(&dir), ["0000000007.snap.tmp"], "written while under way");
        // What a failed write (`?` in compaction) or a stop does: the writer goes away.
        drop(writer);
        assert!(names_in(&dir).is_empty(), "left behind: {:?}", names_in(&dir));

        let mut writer = SnapshotWriter::create(&dir, 8).unwrap();
        writer.write(&[0xab; 10]).unwrap();
        assert_eq!(writer.publish().unwrap(), (record::HEADER_LEN + 10) as u64);
        assert_eq!(names_in(&dir), ["0000000008.snap"], "a published snapshot stays");
        fs::remove_dir_all(&dir).unwrap();
    }
}
