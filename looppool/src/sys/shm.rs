//! Sealed shared-memory files (memfd) and their mappings: how a blob's
//! bytes cross to another process without passing through a socket.

use std::io;
use std::os::fd::OwnedFd;

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};

/// The seals a blob's file carries once written: its size and contents
/// are final, and no seal can be taken away.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE)
    .union(SealFlags::SEAL);

/// The seals a received file must carry for a mapping of it to be safe to
/// read: nobody can shrink it under the mapping (a read past its end
/// would be a SIGBUS), grow it or change its bytes.
const NEEDED: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// A new, empty, unsealed memfd of `len` bytes, closed on exec.
pub(crate) fn create(len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "looppool-blob",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// Maps `fd`, a file made by [`create`] and not yet sealed or shared, for
/// writing.
pub(crate) fn map_mut(fd: &OwnedFd, len: usize) -> io::Result<MmapMut> {
    // SAFETY: the file was just created by this process and is in no other
    // hands yet: the mapping is the only way its bytes change, and its
    // size (set by `create`) changes only when the file is truncated,
    // which nothing does before the mapping is dropped (`seal` needs it
    // gone).
    let map = unsafe { MmapOptions::new().len(len).map_mut(fd) }?;
    // A process forked by another thread (a pool starting a worker) would
    // otherwise hold a copy of this writable mapping until it execs, and
    // sealing the file meanwhile fails with EBUSY.
    if len > 0 {
        map.advise(memmap2::Advice::DontFork)?;
    }
    Ok(map)
}

/// Seals `fd` (no writable mapping of it may remain): its size and
/// contents are final from here on.
pub(crate) fn seal(fd: &OwnedFd) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SEALS)?;
    Ok(())
}

/// Maps `fd` for reading after checking that it is a sealed file of
/// exactly `len` bytes; an error saying what is wrong otherwise.
pub(crate) fn map_sealed(fd: &OwnedFd, len: usize) -> Result<Mmap, String> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| format!("the descriptor is not a sealable memory file ({e})"))?;
    if !seals.contains(NEEDED) {
        return Err(format!(
            "the memory file is not sealed against writes and resizing (seals {seals:?})"
        ));
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat failed: {e}"))?;
    if u64::try_from(stat.st_size).ok() != Some(len as u64) {
        return Err(format!(
            "the memory file holds {} bytes, its frame announced {len}",
            stat.st_size
        ));
    }
    // SAFETY: the file is sealed against writes, shrinking and growing
    // (checked above, and seals cannot be removed), so its bytes never
    // change while mapped and the mapping never reaches past its end.
    unsafe { MmapOptions::new().len(len).map(fd) }
        .map_err(|e| format!("cannot map the memory file: {e}"))
}
