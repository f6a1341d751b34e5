//! A store's chain of layers checked with the real tools after every layer, on any disk
//! backend whose datastore is a local folder (`vmdk://`, or vcsim's folder behind
//! `vsphere://`).

use std::path::Path;

use anyhow::{Result, ensure};
use imagestore::{
    Digest, Image, ImageId, ImageStorer, ImageStorerExt, Metadata, StoreName, byte_stream,
};
use imagestore_vsphere::vmdk::format::DiskFormat;

use super::chain::TarB;
use super::*;

/// Writes `layer` as image `id` on `parent`.
pub async fn write(
    store: &dyn ImageStorer,
    parent: &Image,
    id: &str,
    layer: Vec<u8>,
) -> Result<Image> {
    write_meta(store, parent, id, layer, Metadata::new()).await
}

/// Writes `layer` as image `id` on `parent` with metadata `meta`.
pub async fn write_meta(
    store: &dyn ImageStorer,
    parent: &Image,
    id: &str,
    layer: Vec<u8>,
    meta: Metadata,
) -> Result<Image> {
    let sum = Digest::sha256_of(&layer);
    Ok(store
        .write_image(
            parent,
            &ImageId::new(id)?,
            meta,
            &sum,
            byte_stream(std::io::Cursor::new(layer)),
        )
        .await?)
}

/// Writes three layers into a new store `chain` of `store` (whose datastore folder, holding
/// `VIC/`, is the local folder `root`) and checks the image's disk after each with the real
/// tools: `qemu-img check`, the backing chain's files and create types (deltas in `format`),
/// the chain as raw `e2fsck -fn` clean, and the files `debugfs` reads.
pub async fn layers_pass_the_real_tools(
    store: &dyn ImageStorer,
    root: &Path,
    format: DiskFormat,
) -> Result<()> {
    let s = StoreName::new("chain")?;
    store.create_image_store(&s).await?;
    let scratch = store.scratch(&s).await?;
    let layers = [
        TarB::default()
            .dir("app", 0o755)?
            .file("app/a.txt", b"aaa\n")?
            .file("etc/motd", b"hi\n")?
            .done()?,
        TarB::default()
            .file("app/b.txt", &vec![7u8; 300_000])?
            .done()?,
        TarB::default().file("etc/.wh.motd", b"")?.done()?,
    ];
    let mut top = scratch;
    let mut chain = vec!["scratch.vmdk".to_owned()];
    let mut types = vec![format.create_type().to_owned()];
    if format.is_native() {
        chain.push("scratch-base.vmdk".into());
        types.push("vmfs".into());
    }
    let scratch_disk = root.join("VIC/chain/images/scratch/scratch.vmdk");
    qemu_check(&scratch_disk)?;
    ensure!(
        create_types(&scratch_disk)? == types,
        "scratch's create types"
    );
    let work = tempfile::tempdir()?;
    for (i, layer) in layers.into_iter().enumerate() {
        let id = format!("l{i}");
        top = write(store, &top, &id, layer).await?;
        let disk = root.join(format!("VIC/chain/images/{id}/{id}.vmdk"));
        qemu_check(&disk)?;
        chain.insert(0, format!("{id}.vmdk"));
        ensure!(backing_chain(&disk)? == chain, "backing chain after {id}");
        types.insert(0, format.create_type().to_owned());
        ensure!(create_types(&disk)? == types, "create types after {id}");
        let raw = work.path().join(format!("{id}.raw"));
        to_raw(&disk, &raw)?;
        e2fsck_clean(&raw)?;
        ensure!(debugfs(&raw, "cat /app/a.txt")? == "aaa\n");
        if i == 2 {
            ensure!(!debugfs(&raw, "ls /etc")?.contains("motd"), "whited out");
            ensure!(debugfs(&raw, "stat /app/b.txt")?.contains("Size: 300000"));
        }
    }
    Ok(())
}
