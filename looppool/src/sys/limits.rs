//! What the kernel enforces on a worker, set between fork and exec: its
//! data limit (`PoolBuilder::memory_limit`) and the CPUs it may run on
//! (`PoolBuilder::worker_cpus`).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The most CPUs a set can name (`CPU_SETSIZE`).
pub(crate) const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The CPUs that are online, as `/sys/devices/system/cpu/online` lists
/// them ("0-3,6", say); `None` where it cannot be read.
pub(crate) fn online_cpus() -> Option<Vec<usize>> {
    parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
}

/// Parses a kernel CPU list ("0-3,6").
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Makes `cmd`'s child run only on `cpus` (each below [`MAX_CPUS`], as the
/// builder checked), set between `fork` and `exec`. The set is built here,
/// so the hook only makes the system call.
pub(crate) fn restrict_cpus(cmd: &mut Command, cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes the
    // bit of an index below its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < MAX_CPUS) {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    };
    // SAFETY: `set_affinity` makes one async-signal-safe system call and
    // allocates nothing, as a pre_exec hook must.
    unsafe {
        cmd.pre_exec(move || set_affinity(&set));
    }
}

/// Runs in the forked child, between `fork` and `exec`: sets its CPUs.
///
/// # Safety
/// Must only be called from a `pre_exec` hook: it uses only async-signal-safe
/// calls and allocates nothing.
unsafe fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: sched_setaffinity reads the set through a valid reference.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child run with its data segment limited to `bytes`: the
/// soft and hard `RLIMIT_DATA`, which bounds the heap, anonymous private
/// mappings and writable data (not the stack, code or shared mappings), so
/// that an allocation past it fails. The child cannot raise it again
/// (unless it has `CAP_SYS_RESOURCE`).
pub(crate) fn limit_memory(cmd: &mut Command, bytes: u64) {
    // SAFETY: `set_data_limit` makes one async-signal-safe system call and
    // allocates nothing, as a pre_exec hook must.
    unsafe {
        cmd.pre_exec(move || set_data_limit(bytes));
    }
}

/// Runs in the forked child, between `fork` and `exec`: sets `RLIMIT_DATA`.
///
/// # Safety
/// Must only be called from a `pre_exec` hook: it uses only async-signal-safe
/// calls and allocates nothing.
unsafe fn set_data_limit(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a `rlimit` through a valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
