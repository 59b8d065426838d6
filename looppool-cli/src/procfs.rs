//! CPU and memory of a pool's local workers read from `/proc`, for pools
//! whose workers send no reports (reports are off by default): `top` runs
//! as the same user on the same machine, so it can read them itself.

use std::collections::HashMap;
use std::time::Instant;

/// CPU time a process used so far, in nanoseconds (the sum over its
/// threads of `/proc/<pid>/task/<tid>/schedstat`'s first field), if it is
/// a child of `parent`: a worker reached through a broker may run on
/// another machine, where its pid names some other local process.
pub(crate) fn cpu_ns(pid: u32, parent: u32) -> Option<u64> {
    if parent_of(pid)? != parent {
        return None;
    }
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Resident memory of a child of `parent`, in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32, parent: u32) -> Option<u64> {
    if parent_of(pid)? != parent {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(kib.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
}

/// The parent process of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, then the parent's pid.
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// CPU samples per pid, to turn CPU time into a percentage.
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    last: HashMap<u32, (Instant, u64)>,
}

impl CpuMeter {
    /// The CPU `pid` used since the last call for it, in percent of one
    /// core; `None` the first time, or when it cannot be read.
    pub(crate) fn percent(&mut self, pid: u32, parent: u32, now: Instant) -> Option<f64> {
        let used = cpu_ns(pid, parent)?;
        let before = self.last.insert(pid, (now, used));
        let (then, was) = before?;
        let wall = now.duration_since(then).as_nanos() as f64;
        (wall > 0.0).then(|| used.saturating_sub(was) as f64 / wall * 100.0)
    }

    /// Forgets the pids not in `alive`.
    pub(crate) fn keep(&mut self, alive: &[u32]) {
        self.last.retain(|pid, _| alive.contains(pid));
    }
}
