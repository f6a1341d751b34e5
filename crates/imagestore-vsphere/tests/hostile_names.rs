//! Layers that once smuggled commands into the debugfs script that wrote a layer's ext4 (a
//! line longer than debugfs reads whole, whose rest ran as a shell command (`!...`) or, cut
//! twice, wrote a host file (`dump ...`); line breaks and carriage returns in names and link
//! targets; extended attribute names read as options (`-f HOSTFILE`)). The writer is now a
//! library API without a command language: each layer is written as plain data or refused
//! with a typed error, no command runs, no file appears outside the store, and a refused
//! layer leaves the datastore unchanged. Names and targets with line breaks are checked
//! against `debugfs`'s own read-back of the disk.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use common::*;
use imagestore::{Digest, Error, ImageId, ImageStorerExt, Metadata, StoreName};
use imagestore_conformance::support;
use tar::{EntryType, Header};
use tokio::io::AsyncReadExt;

/// debugfs reads its command file in lines of at most 8,191 bytes: what follows is read as
/// the next line.
const DEBUGFS_LINE: usize = 8_191;

fn header(path_len_ok: bool, kind: EntryType, size: u64) -> Header {
    let mut h = if path_len_ok {
        Header::new_ustar()
    } else {
        Header::new_gnu()
    };
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h
}

/// A tar holding one symlink `path -> target`, written with PAX records so any bytes fit.
fn symlink_tar(path: &str, target: &str) -> Result<Vec<u8>> {
    symlinks_tar(&[(path, target)])
}

/// A tar holding symlinks `path -> target`, written with PAX records so any bytes fit.
fn symlinks_tar(links: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, target) in links {
        let pax = [("path", path.as_bytes()), ("linkpath", target.as_bytes())];
        b.append_pax_extensions(pax)?;
        let mut h = header(true, EntryType::Symlink, 0);
        h.set_path("placeholder")?;
        h.set_link_name("placeholder")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    Ok(b.into_inner()?)
}

/// A tar holding one empty file at `path` with one extended attribute.
fn xattr_tar(path: &str, name: &str, value: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let key = format!("SCHILY.xattr.{name}");
    b.append_pax_extensions([(key.as_str(), value)])?;
    let mut h = header(true, EntryType::Regular, 0);
    h.set_path(path)?;
    h.set_cksum();
    b.append(&h, std::io::empty())?;
    Ok(b.into_inner()?)
}

/// A path of about `len` bytes made of 200-byte directory names, ending in `leaf`.
fn long_path(len: usize, leaf: &str) -> String {
    let mut p = String::new();
    let mut i = 0;
    while p.len() + 201 + leaf.len() <= len {
        p.push_str(&format!("{:0>200}/", i));
        i += 1;
    }
    let pad = len.saturating_sub(p.len() + leaf.len() + 1);
    if pad > 0 {
        p.push_str(&"p".repeat(pad));
        p.push('/');
    }
    p.push_str(leaf);
    p
}

/// A symlink whose `symlink "/PATH" "TARGET"` line is longer than debugfs reads, with
/// `payload` starting exactly where debugfs starts its next line. The target is padded with
/// quotes, which the script doubles, so path and target stay within Linux's limits.
fn overflowing_symlink(payload: &str) -> Result<(String, String)> {
    let path = long_path(3000, "lnk");
    // `symlink "/` + path + `" "`, then the target with its quotes doubled.
    let before_target = "symlink \"/".len() + path.len() + "\" \"".len();
    let fill = DEBUGFS_LINE - before_target;
    if fill % 2 == 1 {
        // One plain byte, then quotes (two bytes each in the line).
        let target = format!("x{}{payload}", "\"".repeat((fill - 1) / 2));
        return Ok((path, target));
    }
    Ok((path, format!("{}{payload}", "\"".repeat(fill / 2))))
}

fn snapshot(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            if e.file_type()?.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

async fn layers_that_smuggled_commands_are_plain_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("ds");
    let work = dir.path().join("work");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside)?;
    let marker = outside.join("ran");
    let dumped = outside.join("dumped");
    let store = imagestore::open(&format!(
        "vmdk://{}?capacity_kib=65536&work={}",
        ds.display(),
        work.display()
    ))
    .await?;
    let s = StoreName::new("inject")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;

    let shell = format!("!touch {} #", marker.display());
    let dump = format!("dump /etc/hostname {}", dumped.display());
    // (what, layer, must be accepted)
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    let (p, t) = overflowing_symlink(&shell)?;
    cases.push((
        "line overflow into a shell command",
        symlink_tar(&p, &t)?,
        true,
    ));
    let (p, t) = overflowing_symlink(&format!("{dump:<DEBUGFS_LINE$}x"))?;
    // Its target is longer than Linux holds: refused by the engine on every backend.
    cases.push(("line overflow into dump", symlink_tar(&p, &t)?, false));
    let broken = format!("x\n{shell}");
    cases.push((
        "line break in a link target",
        symlink_tar("l", &broken)?,
        true,
    ));
    let cr = format!("x\r{shell}");
    cases.push((
        "carriage return in a link target",
        symlink_tar("l", &cr)?,
        true,
    ));
    let name = format!("n\n{shell}");
    cases.push(("line break in a name", symlink_tar(&name, "t")?, true));
    let host = outside.join("secret");
    std::fs::write(&host, b"host secret")?;
    let opt = format!("-f{}", host.display());
    cases.push((
        "xattr name read as an option",
        xattr_tar("f", &opt, b"v")?,
        false,
    ));
    cases.push((
        "xattr name with a line break",
        xattr_tar("f", &format!("user.a\n{shell}"), b"v")?,
        false,
    ));

    for (n, (what, tar, must_accept)) in cases.into_iter().enumerate() {
        let before = snapshot(&ds)?;
        let sum = Digest::sha256_of(&tar);
        let id = ImageId::new(format!("evil-{n}"))?;
        let r = store
            .write_image(
                &scratch,
                &id,
                Metadata::new(),
                &sum,
                imagestore::byte_stream(std::io::Cursor::new(tar)),
            )
            .await;
        if marker.exists() {
            bail!("{what}: a shell command ran");
        }
        if dumped.exists() {
            bail!("{what}: a host file was written");
        }
        let left: Vec<_> = std::fs::read_dir(&outside)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        if left.len() != 1 {
            bail!("{what}: files appeared outside the store: {left:?}");
        }
        match r {
            Ok(_) => {
                // The image reads back: its changes export with their data.
                let mut tar = Vec::new();
                store
                    .export(&s, &id, None, &imagestore::FilterSpec::all(), true)
                    .await?
                    .read_to_end(&mut tar)
                    .await?;
            }
            Err(e) if !must_accept => {
                if !matches!(e, Error::InvalidArgument(_) | Error::BadArchive { .. }) {
                    bail!("{what}: not a typed refusal: {e:?}");
                }
                if snapshot(&ds)? != before {
                    bail!("{what}: the datastore changed");
                }
            }
            Err(e) => bail!("{what}: a legal layer was refused: {e:?}"),
        }
    }
    Ok(())
}

/// Names and link targets holding line breaks and quotes are stored byte for byte: the chain
/// passes `e2fsck` and `debugfs` reads back what the engine says the image holds.
fn names_with_line_breaks_read_back_through_debugfs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut chain = chain::Chain::new(dir.path(), 65536)?;
    let tar = symlinks_tar(&[
        ("d/n\nx", "t\r!touch /tmp/x"),
        ("d/q\"uote", "\"\"\""),
        ("d/-f", "-R"),
    ])?;
    chain.push("names", tar)?;
    Ok(())
}

/// A symlink and path far longer than a debugfs script line are written (they were refused
/// while the writer spoke debugfs' command language).
async fn paths_longer_than_a_debugfs_line_are_written() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("ds");
    let store = imagestore::open(&format!("vmdk://{}?capacity_kib=65536", ds.display())).await?;
    let s = StoreName::new("long")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let (p, t) = overflowing_symlink("tail")?;
    let tar = symlink_tar(&p, &t)?;
    store
        .write_image(
            &scratch,
            &ImageId::new("long")?,
            Metadata::new(),
            &Digest::sha256_of(&tar),
            imagestore::byte_stream(std::io::Cursor::new(tar)),
        )
        .await?;
    assert_eq!(store.list_images(&s, &[]).await?.len(), 1);
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![
        support::trial_async(
            "layers_that_smuggled_commands_are_plain_data",
            support::programs(&["debugfs", "qemu-img"]),
            2,
            |()| layers_that_smuggled_commands_are_plain_data(),
        ),
        support::trial(
            "names_with_line_breaks_read_back_through_debugfs",
            support::programs(&["debugfs", "e2fsck", "qemu-img"]),
            |()| names_with_line_breaks_read_back_through_debugfs(),
        ),
        support::trial_async(
            "paths_longer_than_a_debugfs_line_are_written",
            support::programs(&["qemu-img"]),
            2,
            |()| paths_longer_than_a_debugfs_line_are_written(),
        ),
    ])
}
