//! Forensics: what a worker's threads are doing, read from `/proc`, for
//! the reports of a stuck loop, a passed deadline or an unresponsive
//! worker.

use std::path::Path;

/// What the threads of process `pid`, a child of this process, are doing,
/// from `/proc`: a line per thread with its id, name, state, `wchan` and
/// system call, then its kernel stack when readable (root). `None` when
/// `pid` is not a child of this one: a worker reached through a connector
/// may be a process elsewhere, whose pid names another one here.
pub(crate) fn thread_states(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
    if ppid != std::process::id() {
        return None;
    }
    threads_in(Path::new(&format!("/proc/{pid}")))
}

/// [`thread_states`] of this process: a worker describes itself (its
/// watchdog thread, while its loop is blocked).
pub(crate) fn own_thread_states() -> Option<String> {
    threads_in(Path::new("/proc/self"))
}

/// The thread lines of the process whose `/proc` directory is `proc`.
fn threads_in(proc: &Path) -> Option<String> {
    let mut tids: Vec<u32> = std::fs::read_dir(proc.join("task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let mut text = String::new();
    for tid in tids {
        let dir = proc.join("task").join(tid.to_string());
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let Some(stat) = read("stat") else { continue };
        let name = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "));
        let (name, state) = name.map_or(("?", "?"), |(n, r)| (n, r.get(..1).unwrap_or("?")));
        let wchan = read("wchan").unwrap_or_default();
        let wchan = if wchan.is_empty() || wchan == "0" {
            "-"
        } else {
            &wchan
        };
        let syscall = read("syscall").unwrap_or_default();
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        text.push_str(&format!(
            "thread {tid} ({name}): state {state}, wchan {wchan}, syscall {syscall}\n"
        ));
        for frame in read("stack").unwrap_or_default().lines() {
            text.push_str("    ");
            text.push_str(frame);
            text.push('\n');
        }
    }
    Some(text)
}
