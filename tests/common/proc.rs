//! What `/proc` says about a process (resident memory, open descriptors, open-file
//! limits), and raising this process's own open-file limit. Linux only, as the tests
//! that need these are.
//!
//! Raising a limit has no std API, so this file calls libc and is exempt from the
//! crate's `unsafe_code` lint, as `src/sys.rs` is.
#![allow(unsafe_code)]

use std::fs;

/// How many file descriptors process `pid` has open.
pub fn open_descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc/<pid>/fd").count()
}

/// True when every thread of process `pid` is stopped (state `T`, as SIGSTOP leaves
/// it). A signal stops each thread on its way back to user space, so a thread that
/// was running may still finish a `send` after `kill` returns: wait for this first.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T")
    })
}

/// The resident set size of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had since it started (`VmHWM`), in
/// bytes: a peak no poll could miss.
pub fn peak_rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` figure given in kB, such as `VmRSS:`, in bytes.
fn status_bytes(pid: u32, name: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|line| line.starts_with(name)).expect("the figure in /proc/<pid>/status");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of kB");
    kib * 1024
}

/// The soft and hard open-file limits of process `pid`.
pub fn file_limits_of(pid: u32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/<pid>/limits");
    let line = limits.lines().find(|line| line.starts_with("Max open files")).expect("Max open files");
    let mut numbers = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|n| if n == "unlimited" { libc::RLIM_INFINITY } else { n.parse().unwrap() });
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// The soft limit on open files for this process, raised toward the hard limit if it
/// is below `wanted` (as any process may do for itself). Returns the soft limit.
pub fn open_file_limit_of_at_least(wanted: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    limit.rlim_cur
}
