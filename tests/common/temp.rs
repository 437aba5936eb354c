//! Temporary directories and files under `std::env::temp_dir()`, named so that no other
//! test, test file or run uses the same one, and removed (with everything in them) when
//! dropped: a failing test cleans up too, as the guard drops while the panic unwinds.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `kv-<tag>-<pid>-<n>-<nanos>` in the system temp directory: a name no other test or
/// run uses.
fn unique_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.subsec_nanos());
    std::env::temp_dir().join(format!("kv-{tag}-{}-{unique}-{nanos}", std::process::id()))
}

/// A directory of the test's own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a directory of a name no other test uses.
    pub fn new(tag: &str) -> TempDir {
        let path = unique_path(tag);
        fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as text, for a command-line flag.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A file of the test's own (a cluster file, say), removed when dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a file of a name no other test uses.
    pub fn new(tag: &str, text: &str) -> TempFile {
        let path = unique_path(tag).with_extension("conf");
        fs::write(&path, text).expect("write a temporary file");
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
