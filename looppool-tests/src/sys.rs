//! The only module of the test crate with `unsafe`: signals to processes
//! and the worker's raw connection, which std does not wrap.
#![allow(unsafe_code)]

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sends `signal` to process `pid`. A process that is already gone is no
/// error for a test: the result is not looked at.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// This process's current disposition of `signal`: its handler as a
/// number (`libc::SIG_DFL`, `libc::SIG_IGN` or a function's address).
pub fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is a valid value to be overwritten, and
    // with a null new action sigaction only reads the current one into it.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(signal, std::ptr::null(), &mut old);
        assert_eq!(rc, 0, "sigaction({signal}) failed");
        old.sa_sigaction
    }
}

/// The worker's connection to its pool, descriptor 3, as a stream. Panics
/// when called a second time: the stream owns the descriptor.
pub fn connection() -> UnixStream {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    assert!(
        !TAKEN.swap(true, Ordering::Relaxed),
        "descriptor 3 is taken already"
    );
    // SAFETY: the pool passed the connection as descriptor 3, open for
    // this process alone, and the check above makes this its only owner.
    unsafe { UnixStream::from_raw_fd(3) }
}

/// Writes `bytes` to the worker's connection to its parent (descriptor 3),
/// behind the runtime's back. Safe on the worker's single-threaded loop
/// while its writer is idle; the descriptor is non-blocking, so a full
/// socket is waited out.
pub(crate) fn write_connection(mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live buffer to a descriptor this process
        // owns; it touches no memory of ours.
        let n = unsafe { libc::write(3, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Forks this process without exec. The copy keeps every descriptor,
/// the connection (fd 3) among them, sleeps `linger` and `_exit`s; this
/// process gets the copy's pid.
pub(crate) fn fork_holding_connection(linger: Duration) -> std::io::Result<u32> {
    let sleep = libc::timespec {
        tv_sec: linger.as_secs() as libc::time_t,
        tv_nsec: linger.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the child makes only async-signal-safe calls (nanosleep,
    // _exit) on memory prepared before the fork, as a child forked from a
    // process with threads must.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            libc::nanosleep(&sleep, std::ptr::null_mut());
            libc::_exit(0)
        },
        pid => Ok(pid as u32),
    }
}

/// Writes a frame that carries blobs by descriptor straight to the
/// worker's connection, lying about them as `lie` says (see
/// [`Lie`](crate::shm::Lie)), after sending its descriptor, if any, on the
/// blob socket (descriptor 4), as the real sender does.
pub(crate) fn lie_about_blobs(lie: crate::shm::Lie) -> std::io::Result<()> {
    use crate::shm::Lie;
    use rustix::fs::{MemfdFlags, SealFlags};
    const SIZE: u64 = 4096;
    let memfd = |len: u64, sealed: bool| -> std::io::Result<std::os::fd::OwnedFd> {
        let fd = rustix::fs::memfd_create("lie", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len)?;
        if sealed {
            let all = SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL;
            rustix::fs::fcntl_add_seals(&fd, all)?;
        }
        Ok(fd)
    };
    // The output's payload: `ShmOut::Blob` holding shared blob 0, or
    // `ShmOut::Fds(1)`, which refers to no blob.
    let refers = vec![0, 1, 0];
    let (fd, seq, size, payload) = match lie {
        Lie::NoDescriptor => (None, 0, SIZE, refers),
        Lie::Unsealed => (Some(memfd(SIZE, false)?), 0, SIZE, refers),
        Lie::WrongSize => (Some(memfd(2 * SIZE, true)?), 0, SIZE, refers),
        Lie::Pipe => (Some(rustix::pipe::pipe()?.0), 0, SIZE, refers),
        Lie::WrongSequence => (Some(memfd(SIZE, true)?), 5, SIZE, refers),
        Lie::Unused => (Some(memfd(SIZE, true)?), 0, SIZE, vec![2, 1]),
        Lie::TooLarge => (None, 0, 1 << 30, refers),
    };
    if let Some(fd) = fd {
        send_descriptor(seq, &fd)?;
    }
    // WORKER_BLOBS, one blob of `size`, around an unsolicited OUTPUT.
    let mut body = vec![0x8d, 1];
    let mut v = size;
    while v >= 0x80 {
        body.push(v as u8 | 0x80);
        v >>= 7;
    }
    body.push(v as u8);
    body.extend_from_slice(&[0x84, 0]);
    body.extend_from_slice(&payload);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    write_connection(&frame)
}

/// Sends `fd` with sequence number `seq` on the blob socket (descriptor 4).
fn send_descriptor(seq: u64, fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::{AsFd, BorrowedFd};
    // SAFETY: the pool passed the blob socket as descriptor 4, and the
    // worker's runtime keeps it open for the process's life.
    let socket = unsafe { BorrowedFd::borrow_raw(4) };
    let seq = seq.to_le_bytes();
    let fds = [fd.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        socket,
        &[std::io::IoSlice::new(&seq)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}
