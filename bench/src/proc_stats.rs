//! Resident memory and CPU time of a process, read from Linux's /proc.

use std::path::PathBuf;

use crate::error::BenchError;

fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    }
}

/// Resident set size (`VmRSS`) in KiB of `pid`, or of this process.
pub(crate) fn rss_kib(pid: Option<u32>) -> Result<u64, BenchError> {
    let path = proc_dir(pid).join("status");
    let status = std::fs::read_to_string(&path).map_err(|error| {
        BenchError::new(format!(
            "cannot read {}: {error}; is --server-pid the server's process id?",
            path.display()
        ))
    })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::new(format!("{} has no VmRSS line", path.display())))
}

/// CPU time in nanoseconds used so far by every thread of `pid`, or of this process
/// (the first field of each `/proc/PID/task/TID/schedstat`). Threads that already exited
/// are not counted, which is fine for long-lived runtime workers.
pub(crate) fn cpu_ns(pid: Option<u32>) -> Result<u64, BenchError> {
    let dir = proc_dir(pid).join("task");
    let tasks = std::fs::read_dir(&dir)
        .map_err(|error| BenchError::new(format!("cannot list {}: {error}", dir.display())))?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading: skip it.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Resident memory of each process of `pids`, in order.
pub(crate) fn rss_each_kib(pids: &[u32]) -> Result<Vec<u64>, BenchError> {
    pids.iter().map(|&pid| rss_kib(Some(pid))).collect()
}

/// CPU time of every process of `pids` together.
pub(crate) fn cpu_ns_sum(pids: &[u32]) -> Result<u64, BenchError> {
    pids.iter().map(|&pid| cpu_ns(Some(pid))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        assert!(rss_kib(None).unwrap() > 0);
        assert!(cpu_ns(None).unwrap() > 0);
    }

    #[test]
    fn a_missing_process_is_a_clear_error() {
        let error = rss_kib(Some(u32::MAX)).unwrap_err();
        assert!(error.to_string().contains("--server-pid"));
    }
}
