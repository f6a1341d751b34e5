//! A real image on `vmdk://`: the debootstrap rootfs layer, a file layer and a whiteout layer
//! of `cargo xtask fixture debian`, written through the store on the default 8,000,000 KiB
//! scratch disk. After every layer the datastore's disk passes `qemu-img check`, its backing
//! chain is the image chain, and the chain converted to raw is an ext4 `e2fsck -fn` finds
//! clean. At the end the filesystem `debugfs` dumps, and the store's own checkout, both equal
//! the local backend's checkout of the same layers.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use common::chain::compare;
use common::*;
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{Digest, ImageId, ImageStorerExt, Metadata, StoreName, byte_stream};
use imagestore_conformance::support;
use imagestore_conformance::tree;

async fn debian_layers_as_delta_disks(fixture: PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ds = dir.path().join("ds");
    let vmdk = imagestore::open(&format!("vmdk://{}", ds.display())).await?;
    let local = imagestore::open(&format!("file://{}", dir.path().join("local").display())).await?;
    let s = StoreName::new("debian")?;
    vmdk.create_image_store(&s).await?;
    local.create_image_store(&s).await?;
    let (mut top, mut local_top) = (vmdk.scratch(&s).await?, local.scratch(&s).await?);
    let mut chain = vec!["scratch.vmdk".to_owned()];
    let raw = dir.path().join("top.raw");
    for i in 0..3 {
        let blob = fixture.join("layers").join(format!("{i}.tar.gz"));
        let sum = Digest::sha256_of(&std::fs::read(&blob)?);
        let id = ImageId::new(format!("layer{i}"))?;
        for (store, parent) in [(&vmdk, &mut top), (&local, &mut local_top)] {
            *parent = store
                .write_image(
                    parent,
                    &id,
                    Metadata::new(),
                    &sum,
                    byte_stream(tokio::fs::File::open(&blob).await?),
                )
                .await?;
        }
        let disk = ds.join(format!("VIC/debian/images/{id}/{id}.vmdk"));
        qemu_check(&disk)?;
        chain.insert(0, format!("{id}.vmdk"));
        if backing_chain(&disk)? != chain {
            bail!("layer {i}: backing chain {:?}", backing_chain(&disk)?);
        }
        let size = std::fs::metadata(&disk)?.len();
        if i > 0 && size >= 4 << 20 {
            bail!("layer {i} made a {size}-byte delta disk");
        }
        let _ = std::fs::remove_file(&raw);
        to_raw(&disk, &raw)?;
        e2fsck_clean(&raw)?;
    }
    let theirs = dir.path().join("local-checkout");
    local
        .checkout(
            &s,
            &local_top.id,
            &theirs,
            &CheckoutOptions { rootless: false },
        )
        .await?;
    if tree::walk(&theirs)?.nodes.len() < 5000 {
        bail!("the local checkout is too small");
    }
    // The filesystem itself, read by e2fsprogs.
    let dumped = dir.path().join("ext4");
    std::fs::create_dir(&dumped)?;
    debugfs(&raw, &format!("rdump / {}", dumped.display()))?;
    let skeleton: BTreeSet<String> = ["lost+found".to_owned()].into_iter().collect();
    compare(&raw, &dumped, &theirs, &skeleton)?;
    if debugfs(&raw, "stat /etc/motd").is_ok_and(|s| s.contains("Inode:")) {
        bail!("/etc/motd was whited out");
    }
    if debugfs(&raw, "cat /etc/layer2.txt")? != "hello from layer 2\n" {
        bail!("/etc/layer2.txt");
    }
    // The store's checkout, its files read through the disk chain.
    let ours = dir.path().join("vmdk-checkout");
    vmdk.checkout(&s, &top.id, &ours, &CheckoutOptions { rootless: false })
        .await?;
    let d = tree::differences(&tree::walk(&ours)?, &tree::walk(&theirs)?, &BTreeSet::new());
    if !d.is_empty() {
        bail!("the vmdk checkout differs:\n{}", d.join("\n"));
    }
    Ok(())
}

fn main() -> ExitCode {
    support::run(vec![support::trial_async(
        "debian_layers_as_delta_disks",
        support::both(
            support::debian_fixture(),
            support::programs(&["qemu-img", "e2fsck", "debugfs"]),
        ),
        2,
        |(v, ())| debian_layers_as_delta_disks(v),
    )])
}
