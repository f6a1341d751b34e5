//! Small durable file-system steps: synced writes, atomic replacement, directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use imagestore_core::Result;

use crate::error::IoContext;

/// fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Creates `path` with `bytes` and fsyncs it (fails if it exists).
pub fn write_new_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

/// Replaces `path` with `bytes` atomically: write a temporary sibling, fsync, rename, fsync
/// the directory.
pub fn replace_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        nonce()
    ));
    write_new_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

/// Creates a directory (its parent must exist); an existing one is fine when `exist_ok`.
pub fn mkdir(path: &Path, exist_ok: bool) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if exist_ok && e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

/// Removes a file or a whole tree; a missing one is fine.
pub fn remove_all(path: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// Removes a file; a missing one is fine. True if it existed.
pub fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// True if `path` exists (without following a final symlink).
pub fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// Names in a directory, sorted; a missing directory has none.
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.at(dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A random suffix for staging names.
pub fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}
