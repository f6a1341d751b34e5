//! The `vmdk://` backend's files checked with the real tools: images written through the
//! `ImageStorer` land in VIC's layout, and after every layer the datastore's own disk passes
//! `qemu-img check`, `qemu-img info --backing-chain` names the chain, and the chain converted
//! to raw is an ext4 that `e2fsck -fn` finds clean and `debugfs` reads back. The image also
//! exports as one stream-optimized disk holding the same bytes.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, ensure};
use common::chain::TarB;
use common::*;
use imagestore::vsphere::VmdkExport;
use imagestore::{ImageStorerExt, Metadata, StoreName};
use imagestore_conformance::support;
use tokio::io::AsyncReadExt;

use common::store_chain::write_meta as write;

/// Checks the disk of image `id` and returns its chain as a raw image in `work`.
fn check_disk(root: &Path, work: &Path, id: &str, chain: &[&str]) -> Result<std::path::PathBuf> {
    let disk = root.join(format!("VIC/s1/images/{id}/{id}.vmdk"));
    qemu_check(&disk)?;
    let want: Vec<String> = chain.iter().rev().map(|c| format!("{c}.vmdk")).collect();
    ensure!(backing_chain(&disk)? == want, "chain of {id}");
    let raw = work.join(format!("{id}.raw"));
    to_raw(&disk, &raw)?;
    e2fsck_clean(&raw)?;
    Ok(raw)
}

async fn images_on_a_local_datastore() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("ds");
    let url = format!("vmdk://{}?capacity_kib=1048576", root.display());
    let store = imagestore::open(&url).await?;
    let s = StoreName::new("s1")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let raw = check_disk(&root, dir.path(), "scratch", &["scratch"])?;
    ensure!(debugfs(&raw, "ls /")?.contains(".tether"));

    let l1 = TarB::default()
        .dir("app", 0o755)?
        .file("app/a.txt", b"aaa\n")?
        .file("etc/motd", b"hi\n")?
        .done()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    gz.write_all(&l1)?;
    let mut meta = Metadata::new();
    meta.insert("metaData".to_owned(), br#"{"id":"l1"}"#.to_vec());
    let a = write(store.as_ref(), &scratch, "l1", gz.finish()?, meta).await?;
    let raw = check_disk(&root, dir.path(), "l1", &["scratch", "l1"])?;
    ensure!(debugfs(&raw, "cat /app/a.txt")? == "aaa\n");
    ensure!(debugfs(&raw, "cat /etc/motd")? == "hi\n");

    let l2 = TarB::default()
        .file("etc/.wh.motd", b"")?
        .file("app/b.txt", b"bbb\n")?
        .done()?;
    let b = write(store.as_ref(), &a, "l2", l2, Metadata::new()).await?;
    let raw = check_disk(&root, dir.path(), "l2", &["scratch", "l1", "l2"])?;
    ensure!(debugfs(&raw, "cat /app/a.txt")? == "aaa\n");
    ensure!(debugfs(&raw, "cat /app/b.txt")? == "bbb\n");
    ensure!(!debugfs(&raw, "ls /etc")?.contains("motd"));

    // VIC's layout: the disk, metadata files, the manifest; no layer tar is kept.
    let folder = root.join("VIC/s1/images/l1");
    for f in [
        "manifest",
        "l1.vmdk",
        "l1.toc",
        "image.json",
        "imageMetadata/metaData",
    ] {
        ensure!(folder.join(f).exists(), "{f}");
    }
    ensure!(!folder.join("l1.layer").exists());
    ensure!(std::fs::read(folder.join("imageMetadata/metaData"))? == br#"{"id":"l1"}"#);
    ensure!(b.locator.as_str().ends_with("/VIC/s1/images/l2/l2.vmdk"));

    // The image flattened into one stream-optimized disk holds the same bytes as the chain.
    // It is the disk backends' own operation, reached through their type.
    let disks = store
        .as_any()
        .downcast_ref::<imagestore::vsphere::DiskStore>()
        .ok_or_else(|| anyhow::anyhow!("vmdk:// is a DiskStore"))?;
    let mut flat = Vec::new();
    disks
        .export_vmdk(&s, &b.id)
        .await?
        .read_to_end(&mut flat)
        .await?;
    let so = dir.path().join("flat.vmdk");
    std::fs::write(&so, &flat)?;
    run(std::process::Command::new("qemu-img").arg("check").arg(&so))?;
    run(std::process::Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "vmdk"])
        .arg(&so)
        .arg(root.join("VIC/s1/images/l2/l2.vmdk")))?;
    ensure!(backing_chain(&so)?.len() == 1, "no parent");

    // A folder without manifest is invisible, and swept by the next instance.
    std::fs::remove_file(root.join("VIC/s1/images/l2/manifest"))?;
    let other = imagestore::open(&url).await?;
    ensure!(other.list_images(&s, &[]).await? == vec![a]);
    ensure!(!root.join("VIC/s1/images/l2").exists(), "swept");
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![support::trial_async(
        "images_on_a_local_datastore",
        support::programs(&["qemu-img", "e2fsck", "debugfs"]),
        2,
        |()| images_on_a_local_datastore(),
    )])
}
