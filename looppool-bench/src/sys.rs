//! What the bench reads from or asks of the system: CPU affinity, resident
//! memory, CPU time, and a description of the machine.
//!
//! The only module with `unsafe`: `sched_setaffinity`, `getrusage` and
//! `kill`, which std does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sends `signal` to process `pid`; a process already gone is not looked
/// at.
pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// The thread ids of this process.
fn threads() -> io::Result<Vec<libc::pid_t>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

fn get_affinity(tid: libc::pid_t) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; the kernel
    // writes at most `size_of` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: the kernel only reads `size_of` bytes from a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every thread of this process pinned to one CPU until dropped, when they
/// get the mask the process had before back.
///
/// All threads, not just the caller: a child inherits the mask of the thread
/// that forks it, and looppool forks its workers from a spawner thread of its
/// own (made once, on the first pool's start), so pinning only the calling
/// thread would leave later workers unpinned.
#[derive(Debug)]
pub(crate) struct Pinned {
    saved: libc::cpu_set_t,
}

impl Pinned {
    /// Pins every thread of this process to `cpu`.
    pub(crate) fn all_threads_to(cpu: usize) -> io::Result<Pinned> {
        let saved = get_affinity(0)?;
        // SAFETY: CPU_ZERO and CPU_SET only write bits inside the set;
        // `cpu` is checked against the set's size first.
        let one = unsafe {
            if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
                return Err(io::Error::other(format!("no CPU {cpu}")));
            }
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(cpu, &mut set);
            set
        };
        for tid in threads()? {
            match set_affinity(tid, &one) {
                // The thread exited between the listing and now.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
        Ok(Pinned { saved })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Threads started while pinned are pinned too: restore all of them.
        for tid in threads().unwrap_or_default() {
            let _ = set_affinity(tid, &self.saved);
        }
    }
}

/// The CPUs this thread may run on.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = get_affinity(0)?;
    Ok((0..8 * std::mem::size_of::<libc::cpu_set_t>())
        // SAFETY: reading bits of a valid set, inside its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The first CPU this thread may run on.
pub(crate) fn first_allowed_cpu() -> io::Result<usize> {
    let set = get_affinity(0)?;
    (0..8 * std::mem::size_of::<libc::cpu_set_t>())
        // SAFETY: reading bits of a valid set, inside its size.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .ok_or_else(|| io::Error::other("no CPU in this thread's affinity mask"))
}

/// The CPUs a process may run on, as the kernel lists them (`0-1`).
pub(crate) fn cpus_allowed(pid: u32) -> Option<String> {
    status_field(pid, "Cpus_allowed_list:")
}

fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    Some(line[name.len()..].trim().to_owned())
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) this process has used so far, all threads.
pub(crate) fn own_cpu_time() -> Duration {
    let (user, system) = own_cpu_times();
    user + system
}

/// CPU time this process has used so far, all threads: (user, system).
pub(crate) fn own_cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid value.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// CPU time (user + system) of process `pid` from `/proc/<pid>/stat`, at
/// the kernel's tick resolution (usually 10 ms).
pub(crate) fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: state is the
    // first (field 3), utime field 14, stime field 15.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Busy time of the whole machine so far, all CPUs together, from
/// `/proc/stat` (user, nice, system, irq, softirq, steal).
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// CPU use over an interval: the whole machine's, and the bench's own
/// (this process and the given workers). Tells whether a figure was
/// limited by other processes on a shared machine.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    t0: Instant,
    machine0: Duration,
    own0: Duration,
    pids: Vec<u32>,
    workers0: Duration,
}

/// What a [`CpuMeter`] saw, in CPUs busy on average over the interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUse {
    pub(crate) machine: f64,
    pub(crate) bench: f64,
}

impl CpuMeter {
    pub(crate) fn start(pids: &[u32]) -> CpuMeter {
        let workers0 = pids.iter().filter_map(|&p| process_cpu_time(p)).sum();
        CpuMeter {
            t0: Instant::now(),
            machine0: machine_busy(),
            own0: own_cpu_time(),
            pids: pids.to_vec(),
            workers0,
        }
    }

    pub(crate) fn stop(&self) -> CpuUse {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let workers: Duration = self.pids.iter().filter_map(|&p| process_cpu_time(p)).sum();
        let bench = (own_cpu_time() - self.own0) + workers.saturating_sub(self.workers0);
        CpuUse {
            machine: (machine_busy().saturating_sub(self.machine0)).as_secs_f64() / wall,
            bench: bench.as_secs_f64() / wall,
        }
    }
}

/// Context switches of this process's main thread: (voluntary, when it
/// waited; involuntary, when it was preempted).
pub(crate) fn context_switches() -> (u64, u64) {
    let get = |name| {
        status_field(std::process::id(), name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        get("voluntary_ctxt_switches:"),
        get("nonvoluntary_ctxt_switches:"),
    )
}

/// The machine, in one line: CPUs, CPU model, load average.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) load: String,
    pub(crate) kernel: String,
}

impl Machine {
    pub(crate) fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            load: load_average(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The current time in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert!(process_cpu_time(std::process::id()).is_some());
        assert!(cpus_allowed(std::process::id()).is_some());
    }

    #[test]
    fn pinning_covers_every_thread_and_is_undone() {
        let before = cpus_allowed(std::process::id());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            // SAFETY: gettid takes nothing and touches no memory.
            ready_tx.send(unsafe { libc::gettid() }).unwrap();
            rx.recv().unwrap();
        });
        let tid = ready_rx.recv().unwrap();
        {
            let cpu = first_allowed_cpu().unwrap();
            let _pinned = Pinned::all_threads_to(cpu).unwrap();
            let set = get_affinity(tid).unwrap();
            // SAFETY: reading bits of a valid set.
            unsafe {
                assert!(libc::CPU_ISSET(cpu, &set));
                assert_eq!(libc::CPU_COUNT(&set), 1);
            }
        }
        assert_eq!(cpus_allowed(std::process::id()), before);
        tx.send(()).unwrap();
        other.join().unwrap();
    }
}
