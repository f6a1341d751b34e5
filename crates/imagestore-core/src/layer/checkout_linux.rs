//! The Linux checkout (see the parent module): every path resolved by the kernel inside the
//! destination with `openat2(RESOLVE_IN_ROOT)`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};

use crate::error::{Error, Result};
use crate::layer::compose::EntryRef;
use crate::layer::content::{Checked, ContentPass, ContentSource};
use crate::layer::export::{First, Plan};
use crate::layer::path;
use crate::layer::sparse::write_segments;
use crate::layer::toc::{EntryKind, TocEntry};

use super::{CheckoutOptions, CheckoutReport, is_filtered_xattr};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

struct Checkout<'a> {
    root: OwnedFd,
    dest: &'a Path,
    pass: Box<dyn ContentPass + 'a>,
    rootless: bool,
    report: CheckoutReport,
    skipped_owners: bool,
}

impl Checkout<'_> {
    fn fail(&self, p: &str, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Backend {
            backend: "checkout",
            message: format!("{what} {}: {e}", self.dest.join(p).display()),
            retryable: false,
            source: None,
        }
    }

    /// A descriptor for directory `dir` (normalised), resolved inside the root.
    fn open_dir(&self, dir: &str) -> Result<OwnedFd> {
        let p = if dir.is_empty() { "." } else { dir };
        rfs::openat2(
            &self.root,
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| self.fail(dir, "opening directory", errno(e)))
    }

    fn skip(&mut self, what: String) {
        self.report.skipped.push(what);
    }

    fn owner(
        &mut self,
        p: &str,
        e: &TocEntry,
        apply: impl FnOnce(Option<rfs::Uid>, Option<rfs::Gid>) -> rustix::io::Result<()>,
    ) -> Result<()> {
        if self.rootless {
            if !self.skipped_owners
                && (e.uid != 0 || e.gid != 0 || !rustix::process::geteuid().is_root())
            {
                self.skipped_owners = true;
                self.skip("ownership of all entries (rootless)".to_owned());
            }
            return Ok(());
        }
        let uid = u32::try_from(e.uid).map_err(|_| self.fail(p, "owner of", "uid out of range"))?;
        let gid = u32::try_from(e.gid).map_err(|_| self.fail(p, "owner of", "gid out of range"))?;
        let (u, g) = (rfs::Uid::from_raw(uid), rfs::Gid::from_raw(gid));
        apply(Some(u), Some(g)).map_err(|err| {
            if err == rustix::io::Errno::PERM {
                self.fail(
                    p,
                    "setting the owner of",
                    "permission denied (run as root, or use rootless mode)",
                )
            } else {
                self.fail(p, "setting the owner of", errno(err))
            }
        })
    }

    fn xattrs(&mut self, p: &str, e: &TocEntry, fd: &OwnedFd) -> Result<()> {
        for (name, value) in &e.xattrs {
            if is_filtered_xattr(name) {
                continue;
            }
            if self.rootless && !name.starts_with("user.") {
                self.skip(format!("xattr {name} of {p} (rootless)"));
                continue;
            }
            match rfs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(err) if err == rustix::io::Errno::OPNOTSUPP => {
                    self.skip(format!(
                        "xattr {name} of {p} (not supported by the filesystem)"
                    ));
                }
                Err(err) => {
                    return Err(self.fail(p, &format!("setting xattr {name} on"), errno(err)));
                }
            }
        }
        Ok(())
    }

    fn times(e: &TocEntry) -> Timestamps {
        let t = Timespec {
            tv_sec: e.mtime,
            tv_nsec: i64::from(e.mtime_nsec),
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }

    fn mkdir(&mut self, p: &str) -> Result<()> {
        let parent = self.open_dir(path::parent(p))?;
        match rfs::mkdirat(&parent, path::base(p), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(err) if err == rustix::io::Errno::EXIST => {}
            Err(err) => return Err(self.fail(p, "creating directory", errno(err))),
        }
        self.report.entries += 1;
        Ok(())
    }

    fn finish_dir(&mut self, p: &str, entry: Option<&TocEntry>) -> Result<()> {
        let e = entry
            .cloned()
            .unwrap_or_else(|| TocEntry::new(p, EntryKind::Dir, 0o755));
        let fd = rfs::openat2(
            &self.root,
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|err| self.fail(p, "opening directory", errno(err)))?;
        self.owner(p, &e, |u, g| rfs::fchown(&fd, u, g))?;
        self.xattrs(p, &e, &fd)?;
        rfs::fchmod(&fd, Mode::from_raw_mode(e.mode & 0o7777))
            .map_err(|err| self.fail(p, "setting the mode of", errno(err)))?;
        rfs::futimens(&fd, &Self::times(&e))
            .map_err(|err| self.fail(p, "setting the times of", errno(err)))?;
        Ok(())
    }

    /// Creates a non-directory; false if it was skipped (a device node in rootless mode).
    fn file(&mut self, p: &str, content: EntryRef, e: &TocEntry) -> Result<bool> {
        let parent = self.open_dir(path::parent(p))?;
        let name = path::base(p);
        match e.kind {
            EntryKind::File => {
                let fd = rfs::openat(
                    &parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| self.fail(p, "creating", errno(err)))?;
                let mut file = std::fs::File::from(fd);
                if e.size > 0 {
                    let sparse = e.is_sparse_form();
                    let mut body = if sparse {
                        Checked::stored(self.pass.open_stored(p, content, e)?, e)?
                    } else {
                        Checked::new(self.pass.open(p, content, e)?, e)
                    };
                    let copied = match &e.sparse {
                        Some(map) if sparse => write_segments(&mut body, &mut file, map, e.size),
                        _ => copy_sparse(&mut body, &mut file),
                    };
                    if let Err(err) = copied {
                        if body.read_failed() {
                            body.finish()?;
                        }
                        return Err(Error::Backend {
                            backend: "checkout",
                            message: format!("writing {}: {err}", self.dest.join(p).display()),
                            retryable: false,
                            source: None,
                        });
                    }
                    body.finish()?;
                    self.report.bytes += e.stored_len();
                }
                let fd = OwnedFd::from(file);
                self.owner(p, e, |u, g| rfs::fchown(&fd, u, g))?;
                self.xattrs(p, e, &fd)?;
                rfs::fchmod(&fd, Mode::from_raw_mode(e.mode & 0o7777))
                    .map_err(|err| self.fail(p, "setting the mode of", errno(err)))?;
                rfs::futimens(&fd, &Self::times(e))
                    .map_err(|err| self.fail(p, "setting the times of", errno(err)))?;
            }
            EntryKind::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                rfs::symlinkat(target, &parent, name)
                    .map_err(|err| self.fail(p, "creating symlink", errno(err)))?;
                self.owner(p, e, |u, g| {
                    rfs::chownat(&parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                })?;
                rfs::utimensat(&parent, name, &Self::times(e), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.fail(p, "setting the times of", errno(err)))?;
            }
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let ft = match e.kind {
                    EntryKind::Char => FileType::CharacterDevice,
                    EntryKind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let is_device = e.kind != EntryKind::Fifo;
                if is_device && self.rootless {
                    // Like `umoci unpack --rootless`: an empty file with the node's mode holds
                    // the place (a runtime bind-mounts the host's device there).
                    let fd = rfs::openat(
                        &parent,
                        name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|err| self.fail(p, "creating", errno(err)))?;
                    rfs::fchmod(&fd, Mode::from_raw_mode(e.mode & 0o7777))
                        .map_err(|err| self.fail(p, "setting the mode of", errno(err)))?;
                    rfs::futimens(&fd, &Self::times(e))
                        .map_err(|err| self.fail(p, "setting the times of", errno(err)))?;
                    self.skip(format!(
                        "device node {p} written as an empty file (rootless)"
                    ));
                    self.report.entries += 1;
                    return Ok(true);
                }
                let (major, minor) = e.dev.unwrap_or((0, 0));
                let dev = if is_device {
                    rfs::makedev(major, minor)
                } else {
                    0
                };
                rfs::mknodat(&parent, name, ft, Mode::from_raw_mode(e.mode & 0o777), dev).map_err(
                    |err| {
                        if err == rustix::io::Errno::PERM {
                            self.fail(
                                p,
                                "creating device node",
                                "permission denied (run as root, or use rootless mode)",
                            )
                        } else {
                            self.fail(p, "creating", errno(err))
                        }
                    },
                )?;
                // The node was just created by us and is not a symlink; fix the mode the umask
                // trimmed through a descriptor that cannot follow anything.
                let node = rfs::openat(
                    &parent,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| self.fail(p, "opening", errno(err)))?;
                self.owner(p, e, |u, g| {
                    rfs::chownat(&node, "", u, g, AtFlags::EMPTY_PATH)
                })?;
                let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
                rfs::chmodat(
                    rfs::CWD,
                    proc.as_str(),
                    Mode::from_raw_mode(e.mode & 0o7777),
                    AtFlags::empty(),
                )
                .map_err(|err| self.fail(p, "setting the mode of", errno(err)))?;
                rfs::utimensat(&parent, name, &Self::times(e), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| self.fail(p, "setting the times of", errno(err)))?;
            }
            EntryKind::Dir | EntryKind::Hardlink | EntryKind::Whiteout | EntryKind::Opaque => {
                return Ok(false);
            }
        }
        self.report.entries += 1;
        Ok(true)
    }

    fn hardlink(&mut self, p: &str, first: &str) -> Result<()> {
        let from_dir = self.open_dir(path::parent(first))?;
        let to_dir = self.open_dir(path::parent(p))?;
        rfs::linkat(
            &from_dir,
            path::base(first),
            &to_dir,
            path::base(p),
            AtFlags::empty(),
        )
        .map_err(|err| self.fail(p, "creating hardlink", errno(err)))?;
        self.report.entries += 1;
        Ok(())
    }
}

/// Copies `body` into `file`, leaving holes for runs of zeros so sparse files stay sparse.
fn copy_sparse(body: &mut impl Read, file: &mut std::fs::File) -> io::Result<()> {
    use std::io::Seek;
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    let mut hole = false;
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if n == buf.len() && buf.iter().all(|b| *b == 0) {
            file.seek(io::SeekFrom::Current(n as i64))?;
            hole = true;
        } else {
            file.write_all(&buf[..n])?;
            hole = false;
        }
    }
    if hole {
        file.set_len(len)?;
    }
    Ok(())
}

/// Materialises a whole-image [`Plan`] into `dest`, which must be absent or an empty
/// directory.
///
/// The tree is built in a fresh sibling directory of `dest` and renamed into place at the end,
/// so a checkout that fails part-way leaves `dest` as it was (absent or empty) and removes what
/// it built; a retry starts clean.
pub fn checkout(
    plan: &Plan,
    source: &dyn ContentSource,
    dest: &Path,
    options: &CheckoutOptions,
) -> Result<CheckoutReport> {
    let io_fail = |what: &str, p: &Path, e: io::Error| Error::Backend {
        backend: "checkout",
        message: format!("{what} {}: {e}", p.display()),
        retryable: false,
        source: Some(Box::new(e)),
    };
    let existing = match std::fs::read_dir(dest) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(Error::invalid(format!(
                    "checkout destination {} is not empty",
                    dest.display()
                )));
            }
            Some(std::fs::metadata(dest).map_err(|e| io_fail("reading", dest, e))?)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_fail("reading", dest, e)),
    };
    // `.` and the like name a directory by no final component: use its real path.
    let dest_buf;
    let dest = if dest.file_name().is_none() && existing.is_some() {
        dest_buf = std::fs::canonicalize(dest).map_err(|e| io_fail("resolving", dest, e))?;
        dest_buf.as_path()
    } else {
        dest
    };
    let staging = staging_path(dest)?;
    std::fs::create_dir(&staging).map_err(|e| io_fail("creating", &staging, e))?;
    let built = build(plan, source, dest, &staging, options).and_then(|report| {
        if let Some(meta) = &existing {
            // The empty directory that is replaced keeps its permissions.
            std::fs::set_permissions(&staging, meta.permissions())
                .map_err(|e| io_fail("setting the mode of", &staging, e))?;
        }
        let flags = if existing.is_some() {
            rfs::RenameFlags::empty()
        } else {
            rfs::RenameFlags::NOREPLACE
        };
        rfs::renameat_with(rfs::CWD, &staging, rfs::CWD, dest, flags)
            .map_err(|e| io_fail("moving the checkout into", dest, errno(e)))?;
        Ok(report)
    });
    if built.is_err() {
        // Best effort: what is left is a dot-named sibling, never `dest` itself.
        let _ = remove_tree(&staging);
    }
    built
}

/// A fresh name beside `dest` for building its tree: `.<name>.checkout-<pid>-<n>`.
fn staging_path(dest: &Path) -> Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().ok_or_else(|| {
        Error::invalid(format!(
            "checkout destination {} has no final component",
            dest.display()
        ))
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let staged = format!(
        ".{}.checkout-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(dest.with_file_name(staged))
}

/// Removes a tree this checkout built, making its directories writable first (their final
/// modes may already be set). Symlinks are removed, never followed.
fn remove_tree(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(p)?;
    if !meta.is_dir() {
        return std::fs::remove_file(p);
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(p)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(p)
}

/// Builds the tree of `plan` in the empty directory `root` (errors name paths under `dest`).
fn build(
    plan: &Plan,
    source: &dyn ContentSource,
    dest: &Path,
    root: &Path,
    options: &CheckoutOptions,
) -> Result<CheckoutReport> {
    let root = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Backend {
        backend: "checkout",
        message: format!("opening {}: {}", root.display(), errno(e)),
        retryable: false,
        source: None,
    })?;
    let mut c = Checkout {
        root,
        dest,
        pass: source.pass()?,
        rootless: options.rootless,
        report: CheckoutReport::default(),
        skipped_owners: false,
    };
    let mut dirs = Vec::new();
    for item in &plan.first {
        if let First::Dir(p, e) = item {
            c.mkdir(p)?;
            dirs.push((p.as_str(), e.as_deref()));
        }
    }
    let mut emitted: HashMap<EntryRef, String> = HashMap::new();
    for node in &plan.rest {
        if let Some(first) = emitted.get(&node.content) {
            let first = first.clone();
            c.hardlink(&node.path, &first)?;
            continue;
        }
        let created = c.file(&node.path, node.content, &node.entry)?;
        if created && node.entry.kind != EntryKind::Symlink {
            emitted.insert(node.content, node.path.clone());
        }
    }
    for (p, e) in dirs.iter().rev() {
        c.finish_dir(p, *e)?;
    }
    Ok(c.report)
}

#[cfg(test)]
#[path = "checkout_tests.rs"]
mod tests;
