//! The only module with `unsafe`: the few system calls std does not wrap.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// The descriptor number at which a worker finds its connection to the parent.
pub(crate) const WORKER_FD: RawFd = 3;

/// The descriptor number at which a worker finds the socket its blobs'
/// descriptors travel over, when the pool passed one.
pub(crate) const WORKER_BLOB_FD: RawFd = 4;

mod limits;
pub(crate) mod shm;

pub(crate) use limits::{limit_memory, online_cpus, restrict_cpus, MAX_CPUS};

/// Makes `cmd` hand `conn` to the child as [`WORKER_FD`], and `blobs` as
/// [`WORKER_BLOB_FD`].
///
/// `cmd` owns both descriptors from here on, and closes them when it is
/// dropped: a spawn finishes on the spawner thread even when the start
/// that asked for it is abandoned, and the numbers the child duplicates
/// must still be these descriptors then, not ones the process has since
/// opened under the same numbers.
pub(crate) fn pass_connection(cmd: &mut Command, conn: OwnedFd, blobs: OwnedFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `prepare_connection` makes only async-signal-safe system calls
    // and allocates nothing, as a pre_exec hook must.
    unsafe {
        cmd.pre_exec(move || prepare_connection(conn.as_raw_fd(), blobs.as_raw_fd()));
    }
}

/// Spawns `cmd` as a child tied to this process: it receives SIGKILL when
/// this process dies, however it dies, so it never outlives its parent.
///
/// The kernel delivers the parent-death signal when the *thread* that forked
/// the child exits, not the process, so the fork happens on a thread that
/// lives as long as the process.
pub(crate) async fn spawn_tied_child(mut cmd: Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent_pid = getpid();
    // SAFETY: `prepare_orphan_guard` makes only async-signal-safe system
    // calls and allocates nothing, as a pre_exec hook must. Hooks run in the
    // order they were added, so a connection passed before is in place.
    unsafe {
        cmd.pre_exec(move || prepare_orphan_guard(parent_pid));
    }
    on_spawner_thread(move || cmd.spawn(), abandon_child)
        .await
        .unwrap_or_else(|_| Err(io::Error::other("spawner thread gone")))
}

/// Ends a child whose spawn nobody waits for any more (the start that asked
/// for it timed out or was dropped while the spawner thread forked it): no
/// one else knows its pid, so it is killed with its group and reaped here,
/// or it would live on, or stay a zombie, for the rest of the process.
fn abandon_child(spawned: io::Result<std::process::Child>) {
    if let Ok(mut child) = spawned {
        // The group exists: `spawn` returns only after the child's exec,
        // and the child made its group before exec.
        kill_process_group(child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs in the forked child, between `fork` and `exec`: arranges for the
/// child to die with its parent.
///
/// # Safety
/// Must only be called from a `pre_exec` hook: it uses only async-signal-safe
/// calls and allocates nothing.
unsafe fn prepare_orphan_guard(parent_pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain system calls that touch no memory.
    unsafe {
        // Parent-death signal: the kernel kills the child when the thread
        // that forked it ends, so children are forked from a thread that lives
        // as long as the process (see `spawn_tied_child`).
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) == -1
        {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect: then no signal
        // will ever come, so leave at once.
        if libc::getppid() != parent_pid {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Runs in the forked child, between `fork` and `exec`: moves the connection
/// to [`WORKER_FD`] and the blob socket to [`WORKER_BLOB_FD`].
///
/// # Safety
/// Must only be called from a `pre_exec` hook: it uses only async-signal-safe
/// calls and allocates nothing.
unsafe fn prepare_connection(conn_fd: RawFd, blob_fd: RawFd) -> io::Result<()> {
    // SAFETY: plain system calls on descriptors this process owns; no memory
    // is touched, so they are safe between fork and exec.
    unsafe {
        // The blob socket goes out of the way first (to a number above 4):
        // either descriptor may sit at 3 or 4, where the other belongs.
        let blob = libc::fcntl(blob_fd, libc::F_DUPFD, WORKER_BLOB_FD + 1);
        if blob == -1 {
            return Err(io::Error::last_os_error());
        }
        if conn_fd == WORKER_FD {
            // dup2 onto itself would keep close-on-exec set; clear it instead.
            if libc::fcntl(WORKER_FD, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(conn_fd, WORKER_FD) == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(blob, WORKER_BLOB_FD) == -1 {
            return Err(io::Error::last_os_error());
        }
        libc::close(blob);
    }
    Ok(())
}

/// The memory limit the abort handler compares with, in bytes.
static ABORT_LIMIT: AtomicU64 = AtomicU64::new(0);
/// The exit code `on_abort` exits with.
static ABORT_EXIT_CODE: AtomicI32 = AtomicI32::new(1);

/// The page size, read before the handler may need it (sysconf is not
/// async-signal-safe).
static PAGE_SIZE: AtomicU64 = AtomicU64::new(4096);

/// Makes this process exit with `code` instead of dying of SIGABRT when it
/// aborts with its data segment near `limit`: when less than a quarter of
/// `limit` is left, outside a panic. Rust's handler for a failed allocation
/// prints "memory allocation of N bytes failed" and aborts; on stable Rust
/// nothing can run in between, so the abort itself is caught.
pub(crate) fn exit_on_abort_at_memory_limit(limit: u64, code: i32) {
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        PAGE_SIZE.store(page as u64, Ordering::Relaxed);
    }
    ABORT_LIMIT.store(limit, Ordering::Relaxed);
    ABORT_EXIT_CODE.store(code, Ordering::Relaxed);
    let handler: extern "C" fn(libc::c_int) = on_abort;
    // SAFETY: a zeroed `sigaction` is a valid empty one; we fill in the
    // handler (async-signal-safe, see `on_abort`) and flags, and sigaction
    // reads it through a valid pointer. SA_RESETHAND restores the default
    // action on entry, so an abort the handler lets pass still kills the
    // process with SIGABRT (abort raises it again).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
    }
}

/// The SIGABRT handler of a worker with a memory limit: exits with the
/// out-of-memory code when the data segment is within a quarter of the
/// limit and no panic is in progress; otherwise returns, and the abort
/// proceeds.
///
/// Async-signal-safe: atomics, `std::thread::panicking` (an atomic load
/// when no panic is in progress, and a thread-local read otherwise), and
/// the system calls open, read, close, write and _exit on stack buffers.
extern "C" fn on_abort(_signal: libc::c_int) {
    // A panic with panic = "abort" (or a panic while panicking) is a
    // panic, whatever the memory.
    if std::thread::panicking() {
        return;
    }
    let limit = ABORT_LIMIT.load(Ordering::Relaxed);
    let Some(data) = data_bytes() else { return };
    if data.saturating_add(limit / 4) < limit {
        return;
    }
    let message = b"looppool worker: aborted with its data segment at its memory limit; \
exiting as out of memory\n";
    // SAFETY: write reads from a static buffer; _exit ends the process
    // without running anything of ours.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(ABORT_EXIT_CODE.load(Ordering::Relaxed));
    }
}

/// This process's data segment in bytes (the `data` field of
/// `/proc/self/statm`: private writable mappings and the stack), read
/// without allocating.
fn data_bytes() -> Option<u64> {
    let mut buf = [0u8; 256];
    // SAFETY: open takes a NUL-terminated static path; read writes at most
    // `buf.len()` bytes into a live stack buffer; close ends our own
    // descriptor.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let text = buf.get(..usize::try_from(n).ok()?)?;
    // Fields: size resident shared text lib data dt, in pages.
    let field = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(5)?;
    let mut pages = 0u64;
    for &digit in field {
        if !digit.is_ascii_digit() {
            return None;
        }
        pages = pages
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    pages.checked_mul(PAGE_SIZE.load(Ordering::Relaxed))
}

/// Takes ownership of the connection descriptor the parent passed in.
pub(crate) fn inherited_stream() -> io::Result<std::os::unix::net::UnixStream> {
    // SAFETY: fstat on a descriptor number only reads; it tells whether the
    // descriptor is open before we claim it.
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    if unsafe { libc::fstat(WORKER_FD, stat.as_mut_ptr()) } == -1 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "descriptor 3 is not open: this process was not started by a looppool pool",
        ));
    }
    // SAFETY: the parent passed this descriptor for us alone and nothing else
    // in this process refers to it; we set close-on-exec so children of the
    // worker do not inherit it.
    unsafe {
        libc::fcntl(WORKER_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(std::os::unix::net::UnixStream::from_raw_fd(WORKER_FD))
    }
}

/// Takes ownership of the blob socket the parent passed in as
/// [`WORKER_BLOB_FD`]; an error unless it is an open socket.
pub(crate) fn inherited_blob_socket() -> io::Result<OwnedFd> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on a descriptor number only reads into a local.
    if unsafe { libc::fstat(WORKER_BLOB_FD, stat.as_mut_ptr()) } == -1 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "descriptor 4 (the blob socket) is not open",
        ));
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    let mode = unsafe { stat.assume_init() }.st_mode;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor 4 (the blob socket) is not a socket",
        ));
    }
    // SAFETY: the parent passed this descriptor for us alone and nothing else
    // in this process refers to it; close-on-exec keeps it from the worker's
    // own children.
    unsafe {
        libc::fcntl(WORKER_BLOB_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok(OwnedFd::from_raw_fd(WORKER_BLOB_FD))
    }
}

/// Registers `fd` with the current runtime's I/O driver for `interest` only.
pub(crate) fn register_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open and returns the same
    // one from `as_raw_fd` for its whole life, which is what registration
    // asks of its caller.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts().1)
}

/// Ignores SIGINT and SIGTERM, so that only the parent decides to stop the
/// pool, by message.
pub(crate) fn ignore_termination_signals() {
    // SAFETY: installing SIG_IGN has no handler code to run.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// Restores the default action of SIGINT and SIGTERM (the ignore disposition
/// is inherited across exec, so a parent that ignores them would pass that on).
pub(crate) fn default_termination_signals() {
    // SAFETY: restoring SIG_DFL has no handler code to run.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// Sets the calling thread's name as `top` shows it (at most 15 bytes).
pub(crate) fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: the pointer is to a NUL-terminated buffer that outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// This process's id as the kernel's type.
pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// This process's effective user id: the owner its control socket and
/// directory must have, and the only peer it answers.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Resident memory of process `pid`, in bytes (VmRSS).
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How many processes the kernel's OOM killer has killed since boot (the
/// `oom_kill` counter of `/proc/vmstat`, Linux 4.13 and later), if known.
pub(crate) fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

/// CPU time (user plus system) this process has used, all threads.
pub(crate) fn cpu_time() -> std::time::Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` through a valid pointer and
    // touches nothing else; on failure the zeroed value stays.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A short name for a signal number.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "other signal",
    }
}

/// Registers `stream` with the current runtime's I/O driver for `interest`
/// only (tokio's `UnixStream` always asks for both directions).
pub(crate) fn register_unix(
    stream: std::os::unix::net::UnixStream,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor, keeps it open, and returns
    // the same one from `as_raw_fd` for its whole life, which is what
    // registration asks of its caller.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(stream, interest) }
        .map_err(|e| e.into_parts().1)
}

/// Sends SIGKILL to every process in process group `pgid`. The caller must
/// hold the group's leader, process `pgid`, unreaped (a child it has not
/// waited for), so that the number names no other group. A group already
/// empty is no error.
pub(crate) fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        // 0 would be our own group, 1 init's: never ours to kill.
        return;
    }
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Whether child `pid` has exited, without reaping it (it stays a zombie,
/// its pid reserved, until it is waited for).
pub(crate) fn has_exited(pid: u32) -> io::Result<bool> {
    let pid = libc::id_t::from(pid);
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: waitid writes a `siginfo_t` through a valid pointer and
    // touches nothing else; WNOWAIT leaves the child unreaped.
    let done = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if done == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then filled in by waitid: initialised either way. With
    // WNOHANG and no exited child, waitid leaves `si_pid` zero.
    let exited = unsafe { info.assume_init().si_pid() } != 0;
    Ok(exited)
}

/// Notice of a child process's exit, from the process itself rather than
/// from its connection: a pidfd, readable once the process has exited
/// (whether or not it has been reaped yet).
pub(crate) struct ProcessExit {
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExit")
            .field("pidfd", &self.pidfd.get_ref().as_raw_fd())
            .finish()
    }
}

impl ProcessExit {
    /// Watches process `pid`, registered with the current runtime. The
    /// caller must hold `pid` unreaped (a child it has not waited for), so
    /// that the number cannot name another process yet.
    pub(crate) fn watch(pid: u32) -> io::Result<Self> {
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: pidfd_open takes a pid and flags and touches no memory of
        // ours; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just opened for us alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: the `OwnedFd` owns the descriptor, keeps it open and
        // returns the same one from `as_raw_fd` for its whole life, which
        // is what registration asks of its caller.
        let pidfd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(ProcessExit { pidfd })
    }

    /// Returns once the process has exited.
    pub(crate) async fn exited(&self) {
        // A pidfd stays readable once its process has exited: the readiness
        // is never cleared, so the first readable event is the answer. An
        // error (a runtime shutting down) is no exit: wait on.
        if self.pidfd.readable().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the spawner thread, which lives as long as the process, so
/// the children it forks die with the process, and only then. A result whose
/// receiver is gone by the time it is ready goes to `unclaimed`.
fn on_spawner_thread<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
    unclaimed: impl FnOnce(R) + Send + 'static,
) -> oneshot::Receiver<R> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("looppool-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the looppool spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        if let Err(result) = tx.send(job()) {
            unclaimed(result);
        }
    });
    // The thread never exits, so sending cannot fail.
    let _ = crate::sync::lock(sender).send(job);
    rx
}
