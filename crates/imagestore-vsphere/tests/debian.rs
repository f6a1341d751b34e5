//! A real image as disks: the debootstrap rootfs layer, a file layer and a whiteout layer of
//! `cargo xtask fixture debian`, each checked with the real tools on the default 8,000,000 KiB
//! scratch disk; the filesystem of the top disk equals the local backend's checkout.

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::{Result, bail};
use common::chain::{Chain, compare};
use common::*;
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{Digest, ImageId, ImageStorerExt, Metadata, StoreName, byte_stream};
use imagestore_conformance::{debian_fixture, tree};
use imagestore_vsphere::layer::DEFAULT_CAPACITY_KIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_layers_as_delta_disks() -> Result<()> {
    let Some(fixture) = debian_fixture() else {
        return Ok(());
    };
    if !have(&["qemu-img", "e2fsck", "debugfs", "mke2fs"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut c = Chain::new(dir.path(), DEFAULT_CAPACITY_KIB)?;
    let local = imagestore::open(&format!("file://{}", dir.path().join("local").display())).await?;
    let s = StoreName::new("debian")?;
    local.create_image_store(&s).await?;
    let mut top = local.scratch(&s).await?;
    for i in 0..3 {
        let blob = fixture.join("layers").join(format!("{i}.tar.gz"));
        let gz = std::fs::read(&blob)?;
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain)?;
        let size = c.push(&format!("layer{i}"), plain)?;
        if i > 0 && size >= 4 << 20 {
            bail!("layer {i} made a {size}-byte delta disk");
        }
        top = local
            .write_image(
                &top,
                &ImageId::new(format!("layer{i}"))?,
                Metadata::new(),
                &Digest::sha256_of(&gz),
                byte_stream(tokio::fs::File::open(&blob).await?),
            )
            .await?;
    }
    let raw = c.root.join("top.raw");
    let ours = dir.path().join("ext4");
    std::fs::create_dir(&ours)?;
    debugfs(&raw, &format!("rdump / {}", ours.display()))?;
    let theirs = dir.path().join("local-checkout");
    local
        .checkout(&s, &top.id, &theirs, &CheckoutOptions { rootless: false })
        .await?;
    if tree::walk(&theirs)?.nodes.len() < 5000 {
        bail!("the local checkout is too small");
    }
    let only_ext4: BTreeSet<String> = ["lost+found".to_owned()].into_iter().collect();
    compare(&raw, &ours, &theirs, &only_ext4)?;
    if debugfs(&raw, "stat /etc/motd").is_ok_and(|s| s.contains("Inode:")) {
        bail!("/etc/motd was whited out");
    }
    if debugfs(&raw, "cat /etc/layer2.txt")? != "hello from layer 2\n" {
        bail!("/etc/layer2.txt");
    }
    Ok(())
}
