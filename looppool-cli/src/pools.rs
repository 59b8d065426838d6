//! Finding the pools to show: one socket, or the sockets of a directory,
//! optionally one pool of them by name or pid.

use std::path::PathBuf;

use crate::args::Top;
use crate::model::PoolView;

/// The pools `top` names, in socket order.
///
/// # Errors
/// When the directory cannot be read (or is not the user's own), or no
/// pool matches the one asked for.
pub(crate) fn find(top: &Top) -> Result<Vec<PoolView>, String> {
    if let Some(socket) = &top.socket {
        let label = socket
            .file_name()
            .map_or("pool".into(), |n| n.to_string_lossy().into_owned());
        return Ok(vec![PoolView::new(socket.clone(), label)]);
    }
    let dir = directory(top)?;
    let found = looppool::control::sockets(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let views: Vec<PoolView> = found
        .into_iter()
        .filter(|s| match &top.pool {
            Some(wanted) => s.pool == *wanted || s.pid.to_string() == *wanted,
            None => true,
        })
        .map(|s| PoolView::new(s.path, s.pool))
        .collect();
    match &top.pool {
        Some(wanted) if views.is_empty() => Err(format!(
            "no pool named {wanted:?} (or of pid {wanted}) in {}",
            dir.display()
        )),
        _ => Ok(views),
    }
}

/// Where to look: `--dir`, or the default directory.
pub(crate) fn directory(top: &Top) -> Result<PathBuf, String> {
    match &top.dir {
        Some(dir) => Ok(dir.clone()),
        None => looppool::control::default_dir().map_err(|e| e.to_string()),
    }
}

/// `pools` brought up to date with `found`: pools that went away are
/// dropped, new ones added, the others keep their history.
pub(crate) fn merge(pools: Vec<PoolView>, found: Vec<PoolView>) -> Vec<PoolView> {
    let mut old = pools;
    found
        .into_iter()
        .map(|new| match old.iter().position(|p| p.path == new.path) {
            Some(i) => old.swap_remove(i),
            None => new,
        })
        .collect()
}
