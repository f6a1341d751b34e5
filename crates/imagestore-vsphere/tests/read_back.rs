//! The read-back before a disk commit (`verify::check_applied`) passes on what the writer
//! wrote and fails, naming the path and the field, when the filesystem differs from the
//! layer (changed with `debugfs` on a copy of the disk).

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use common::chain::inode_of;
use common::*;
use imagestore::Error;
use imagestore_conformance::support;
use imagestore_vsphere::disk::open_chain;
use imagestore_vsphere::ext4;
use imagestore_vsphere::fsread::FsContent;
use imagestore_vsphere::verify::check_applied;

fn content_of(disk: &std::path::Path) -> Result<FsContent> {
    let chain = Arc::new(open_chain(disk)?);
    Ok(FsContent::of_chain(chain, disk.display().to_string()))
}

/// `raw` converted to a standalone disk beside it.
fn to_vmdk(raw: &std::path::Path) -> Result<std::path::PathBuf> {
    let vmdk = raw.with_extension("vmdk");
    let _ = std::fs::remove_file(&vmdk);
    run(std::process::Command::new("qemu-img")
        .args(["convert", "-O", "vmdk"])
        .arg(raw)
        .arg(&vmdk))?;
    Ok(vmdk)
}

fn read_back_finds_what_the_filesystem_does_not_hold() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut chain = chain::Chain::new(dir.path(), 65536)?;
    let layer = chain::TarB::default()
        .file_as("app/file", b"hello", 0o644, 0, 0, &[("user.tag", b"v1")])?
        .dev("dev/c", tar::EntryType::Char, 1, 3)?
        .done()?;
    chain.push("layer", layer)?;
    let top = chain.tocs[0].clone();
    let lower = vec![Arc::new(ext4::skeleton())];
    let disk = chain.disks[1].clone();
    let checked = check_applied(&content_of(&disk)?, &lower, &top, &Default::default())?;
    if checked.bytes != 5 {
        bail!("read back {} bytes of file data, not 5", checked.bytes);
    }
    let raw = dir.path().join("top.raw");
    run(std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&disk)
        .arg(&raw))?;
    for (change, field) in [
        ("sif /app/file mode 0100600", "mode"),
        ("sif /app/file mtime @1600000001", "mtime"),
        ("rm /app/file", "missing"),
    ] {
        let changed = dir.path().join("changed.raw");
        std::fs::copy(&raw, &changed)?;
        run(std::process::Command::new("debugfs")
            .args(["-w", "-R", change])
            .arg(&changed))?;
        let vmdk = to_vmdk(&changed)?;
        match check_applied(&content_of(&vmdk)?, &lower, &top, &Default::default()) {
            Err(Error::InvalidArgument(m)) if m.contains("/app/file") && m.contains(field) => {}
            other => bail!("after {change}: expected a mismatch naming {field}, got {other:?}"),
        }
    }
    // The data itself, changed under the inode the writer names: read by inode, the digest
    // no longer matches.
    let ino: u32 = inode_of(&raw, "/app/file")?
        .trim_matches(|c| c == '<' || c == '>')
        .parse()?;
    let block: u64 = debugfs(&raw, "blocks /app/file")?.trim().parse()?;
    let changed = dir.path().join("changed.raw");
    std::fs::copy(&raw, &changed)?;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&changed)?;
        f.write_all_at(b"HELLO", block * 4096)?;
    }
    let vmdk = to_vmdk(&changed)?;
    let inodes = [("app/file".to_owned(), ino)].into_iter().collect();
    match check_applied(&content_of(&vmdk)?, &lower, &top, &inodes) {
        Err(Error::InvalidArgument(m)) if m.contains("/app/file") && m.contains("digest") => {}
        other => bail!("after changing the data: expected a digest mismatch, got {other:?}"),
    }
    // What ext4-view does not show, checked on the inodes the writer names.
    let dev: u32 = inode_of(&raw, "/dev/c")?
        .trim_matches(|c| c == '<' || c == '>')
        .parse()?;
    let inodes: std::collections::HashMap<String, u32> =
        [("app/file".to_owned(), ino), ("dev/c".to_owned(), dev)]
            .into_iter()
            .collect();
    check_applied(&content_of(&disk)?, &lower, &top, &inodes)?;
    for (change, path, field) in [
        ("ea_set /app/file user.tag v2", "/app/file", "xattr"),
        ("ea_rm /app/file user.tag", "/app/file", "xattr"),
        ("sif /dev/c block[0] 0x0104", "/dev/c", "device"),
    ] {
        let changed = dir.path().join("changed.raw");
        std::fs::copy(&raw, &changed)?;
        run(std::process::Command::new("debugfs")
            .args(["-w", "-R", change])
            .arg(&changed))?;
        match check_applied(&content_of(&to_vmdk(&changed)?)?, &lower, &top, &inodes) {
            Err(Error::InvalidArgument(m)) if m.contains(path) && m.contains(field) => {}
            other => bail!("after {change}: expected a mismatch naming {field}, got {other:?}"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![support::trial(
        "read_back_finds_what_the_filesystem_does_not_hold",
        support::programs(&["debugfs", "qemu-img"]),
        |()| read_back_finds_what_the_filesystem_does_not_hold(),
    )])
}
