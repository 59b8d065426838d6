//! The socket directory: where it is, making and checking it, naming
//! sockets, and removing those of processes that are gone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UnixListener;

/// Counts the control sockets this process made, so that two pools of one
/// name in one process get distinct sockets.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The longest pool name kept in a socket's name: a socket path must fit
/// `sun_path` (108 bytes) with the directory and the pid.
const MAX_NAME: usize = 40;

/// The directory where pools put their control sockets by default, and
/// where `looppool top` looks: `$XDG_RUNTIME_DIR/looppool` when
/// `XDG_RUNTIME_DIR` is an absolute path, else `/tmp/looppool-<uid>`
/// (`uid` the effective user id). It may not exist yet.
///
/// # Errors
/// None today; the `Result` leaves room for platforms where the directory
/// cannot be known.
pub fn default_dir() -> io::Result<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(runtime) if runtime.is_absolute() => Ok(runtime.join("looppool")),
        _ => Ok(PathBuf::from(format!(
            "/tmp/looppool-{}",
            crate::sys::euid()
        ))),
    }
}

/// A control socket found by [`sockets`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketInfo {
    /// The socket's path.
    pub path: PathBuf,
    /// The pool's name as the socket's name carries it (see
    /// [the naming](crate::control#where)).
    pub pool: String,
    /// The process id of the pool's process.
    pub pid: u32,
}

/// The control sockets in `dir`, by path, after removing those whose
/// process no longer exists and on which nothing listens (left by a
/// process killed before it could remove them). Files not named as control sockets are left alone.
///
/// # Errors
/// When `dir` is not a directory owned by the user with no access for
/// group or others (see [security](crate::control#security)), or cannot be
/// read. A directory that does not exist holds no sockets.
pub fn sockets(dir: &Path) -> io::Result<Vec<SocketInfo>> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
        Ok(_) => check_dir(dir)?,
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some((pool, pid)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_name)
        else {
            continue;
        };
        if !process_exists(pid) && !listening(&path) {
            remove_socket(&path);
            continue;
        }
        found.push(SocketInfo { path, pool, pid });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Makes (if needed) and checks `dir`, removes stale sockets in it, and
/// binds a new socket for pool `pool`, mode 0600.
pub(super) fn bind(dir: &Path, pool: &str) -> io::Result<(PathBuf, UnixListener)> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    check_dir(dir)?;
    // Removes the stale sockets as a side effect.
    sockets(dir)?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(
        "{}.{}.{seq}.sock",
        clean_name(pool),
        std::process::id()
    ));
    // Only a process that had this pid before could have left it.
    remove_socket(&path);
    let listener = UnixListener::bind(&path)?;
    // The directory already keeps others out between bind and chmod.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        remove_socket(&path);
        return Err(e);
    }
    Ok((path, listener))
}

/// Removes a socket file, if it is still there.
pub(super) fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove a control socket");
        }
    }
}

/// Checks that `dir` is a directory, not a symlink, owned by this user and
/// closed to group and others: otherwise another user could replace a
/// socket, or read the pool's figures.
fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !meta.file_type().is_dir() {
        return refuse(format!(
            "{} is not a directory (or is a symlink)",
            dir.display()
        ));
    }
    let me = crate::sys::euid();
    if meta.uid() != me {
        return refuse(format!(
            "{} is owned by uid {}, not by this user (uid {me})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "{} has mode {:o}: group and others must have no access (chmod 700)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A pool name as it goes into a socket's name: no separators, no dots
/// (they delimit the pid), bounded length.
fn clean_name(pool: &str) -> String {
    let mut name: String = pool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        name.push_str("pool");
    }
    name
}

/// The pool name and pid in a socket's name `<name>.<pid>.<n>.sock`.
fn parse_name(file: &str) -> Option<(String, u32)> {
    let stem = file.strip_suffix(".sock")?;
    let mut parts = stem.rsplitn(3, '.');
    let _seq: u64 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let name = parts.next().filter(|n| !n.is_empty())?;
    Some((name.to_owned(), pid))
}

/// Whether something listens on the socket at `path`: a pid this process
/// cannot see may belong to another pid namespace sharing the directory
/// (containers sharing `/tmp`), so a socket is stale only when its
/// process is gone and a connection is refused too.
fn listening(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::ConnectionRefused,
    }
}

/// Whether a process `pid` exists (as seen from this pid namespace).
fn process_exists(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(clean_name("my pool/v1.2"), "my_pool_v1_2");
        assert_eq!(clean_name(""), "pool");
        assert_eq!(clean_name(&"x".repeat(100)).len(), MAX_NAME);
        assert_eq!(
            parse_name("web_v1.1234.0.sock"),
            Some(("web_v1".into(), 1234))
        );
        assert_eq!(parse_name("web.1234.sock"), None);
        assert_eq!(parse_name(".1234.0.sock"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }
}
