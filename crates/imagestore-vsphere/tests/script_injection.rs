//! Layers that try to smuggle commands into the debugfs script that writes a layer's ext4:
//! a line longer than debugfs reads whole, whose rest would run as a shell command (`!...`)
//! or, cut twice, write a host file (`dump ...`) — both shapes ran on the debugfs script
//! writer before its lines were checked; line breaks, carriage returns and NULs in names and
//! link targets; extended attribute names read as options (`-f HOSTFILE`). Each is refused
//! with a typed error before debugfs starts; no command runs, no file appears outside the
//! work folder, and the datastore is unchanged.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use common::*;
use imagestore::{Digest, Error, ImageId, ImageStorerExt, Metadata, StoreName};
use tar::{EntryType, Header};

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
    let mut b = tar::Builder::new(Vec::new());
    let pax = [("path", path.as_bytes()), ("linkpath", target.as_bytes())];
    b.append_pax_extensions(pax)?;
    let mut h = header(true, EntryType::Symlink, 0);
    h.set_path("placeholder")?;
    h.set_link_name("placeholder")?;
    h.set_cksum();
    b.append(&h, std::io::empty())?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_injection_is_refused_before_debugfs_runs() -> Result<()> {
    if !have(&["debugfs", "mke2fs"]) {
        return Ok(());
    }
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
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let (p, t) = overflowing_symlink(&shell)?;
    cases.push(("line overflow into a shell command", symlink_tar(&p, &t)?));
    // A whole line of the target, quote-free, between two cuts: it parses cleanly.
    let (p, t) = overflowing_symlink(&format!("{dump:<DEBUGFS_LINE$}x"))?;
    cases.push(("line overflow into dump", symlink_tar(&p, &t)?));
    let broken = format!("x\n{shell}");
    cases.push(("line break in a link target", symlink_tar("l", &broken)?));
    let cr = format!("x\r{shell}");
    cases.push(("carriage return in a link target", symlink_tar("l", &cr)?));
    let name = format!("n\n{shell}");
    cases.push(("line break in a name", symlink_tar(&name, "t")?));
    let host = outside.join("secret");
    std::fs::write(&host, b"host secret")?;
    let opt = format!("-f{}", host.display());
    cases.push(("xattr name read as an option", xattr_tar("f", &opt, b"v")?));
    cases.push((
        "xattr name with a line break",
        xattr_tar("f", &format!("user.a\n{shell}"), b"v")?,
    ));

    let before = snapshot(&ds)?;
    for (what, tar) in cases {
        let sum = Digest::sha256_of(&tar);
        let err = match store
            .write_image(
                &scratch,
                &ImageId::new("evil")?,
                Metadata::new(),
                &sum,
                imagestore::byte_stream(std::io::Cursor::new(tar)),
            )
            .await
        {
            Ok(_) => bail!("{what}: the layer was accepted"),
            Err(e) => e,
        };
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
            bail!("{what}: files appeared outside the work folder: {left:?}");
        }
        if snapshot(&ds)? != before {
            bail!("{what}: the datastore changed");
        }
        if !matches!(err, Error::InvalidArgument(_) | Error::BadArchive { .. }) {
            bail!("{what}: not a typed refusal: {err:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_too_long_for_debugfs_is_an_invalid_argument() -> Result<()> {
    if !have(&["debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("ds");
    let store = imagestore::open(&format!("vmdk://{}?capacity_kib=65536", ds.display())).await?;
    let s = StoreName::new("long")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let (p, t) = overflowing_symlink("tail")?;
    let tar = symlink_tar(&p, &t)?;
    let err = store
        .write_image(
            &scratch,
            &ImageId::new("long")?,
            Metadata::new(),
            &Digest::sha256_of(&tar),
            imagestore::byte_stream(std::io::Cursor::new(tar)),
        )
        .await;
    match err {
        Err(Error::InvalidArgument(m)) if m.contains("debugfs line") => {}
        other => bail!("expected an InvalidArgument naming the line limit, got {other:?}"),
    }
    assert!(store.list_images(&s, &[]).await?.is_empty());
    Ok(())
}
