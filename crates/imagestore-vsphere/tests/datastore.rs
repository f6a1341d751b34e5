//! Images written onto a local datastore in VIC's layout: the scratch image and two layers
//! (a gzip one and a plain one with a whiteout), checked with qemu-img and e2fsck on the
//! datastore's own files; the image exports as one stream-optimized disk; a folder without
//! manifest is invisible.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use common::chain::TarB;
use common::*;
use imagestore_vsphere::images::{chain_ids, create_scratch, export_stream_optimized, write_layer};
use imagestore_vsphere::layout::{list_images, read_metadata};
use imagestore_vsphere::local_ds::LocalDatastore;

#[test]
fn layers_on_a_local_datastore() -> Result<()> {
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("ds");
    let ds = LocalDatastore::open(root.clone())?;
    create_scratch(&ds, "s1", 1 << 20)?;
    let scratch = root.join("VIC/s1/images/scratch/scratch.vmdk");
    qemu_check(&scratch)?;

    let l1 = TarB::default()
        .dir("app", 0o755)?
        .file("app/a.txt", b"aaa\n")?
        .file("etc/motd", b"hi\n")?
        .done()?;
    let gz = dir.path().join("l1.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, Default::default());
    enc.write_all(&l1)?;
    enc.finish()?;
    let mut meta = BTreeMap::new();
    meta.insert("author".to_owned(), b"me".to_vec());
    write_layer(&ds, "s1", "scratch", "l1", &gz, &meta)?;

    let l2 = TarB::default()
        .file("etc/.wh.motd", b"")?
        .file("app/b.txt", b"bbb\n")?
        .done()?;
    let plain = dir.path().join("l2.tar");
    std::fs::write(&plain, &l2)?;
    write_layer(&ds, "s1", "l1", "l2", &plain, &BTreeMap::new())?;

    let top = root.join("VIC/s1/images/l2/l2.vmdk");
    qemu_check(&top)?;
    assert_eq!(
        backing_chain(&top)?,
        vec!["l2.vmdk", "l1.vmdk", "scratch.vmdk"]
    );
    assert_eq!(chain_ids(&ds, "s1", "l2")?, vec!["scratch", "l1", "l2"]);
    let raw = dir.path().join("top.raw");
    to_raw(&top, &raw)?;
    e2fsck_clean(&raw)?;
    assert_eq!(debugfs(&raw, "cat /app/a.txt")?, "aaa\n");
    assert_eq!(debugfs(&raw, "cat /app/b.txt")?, "bbb\n");
    assert!(!debugfs(&raw, "ls /etc")?.contains("motd"));
    assert!(debugfs(&raw, "ls /")?.contains(".tether"));
    for f in ["manifest", "l2.layer", "l2.toc", "imageMetadata"] {
        assert!(root.join("VIC/s1/images/l2").join(f).exists(), "{f}");
    }
    assert_eq!(
        read_metadata(&ds, "s1", "l1")?.get("author"),
        Some(&b"me".to_vec())
    );
    assert_eq!(list_images(&ds, "s1")?, vec!["l1", "l2", "scratch"]);

    // The image flattened into one stream-optimized disk holds the same bytes as the chain.
    let so = dir.path().join("flat.vmdk");
    let stats = export_stream_optimized(&ds, "s1", "l2", "flat.vmdk", std::fs::File::create(&so)?)?;
    assert!(stats.grains > 0);
    run(std::process::Command::new("qemu-img").arg("check").arg(&so))?;
    run(std::process::Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "vmdk"])
        .arg(&so)
        .arg(&top))?;
    assert!(backing_chain(&so)?.len() == 1, "no parent");

    // A parent that is not committed is refused; the refused id leaves nothing behind.
    std::fs::remove_file(root.join("VIC/s1/images/l2/manifest"))?;
    assert_eq!(list_images(&ds, "s1")?, vec!["l1", "scratch"]);
    std::fs::write(&plain, &l2)?;
    assert!(write_layer(&ds, "s1", "l2", "l3", &plain, &BTreeMap::new()).is_err());
    assert!(!root.join("VIC/s1/images/l3").exists());
    Ok(())
}
