//! Layers at the edges of what Linux file systems hold, and layers that name a path twice:
//! every backend takes them and reads them back the same way (on the disk backends, through
//! the ext4 they were written to).

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, ensure};
use imagestore::layer::checkout::CheckoutOptions;
use imagestore::{FilterSpec, Image, ImageId, StoreName};

use super::{fresh, put};
use crate::Ctx;
use crate::tars::{Entry, Layer, entries, find};

async fn merged(ctx: &Ctx, s: &StoreName, img: &Image) -> Result<Vec<Entry>> {
    let scratch = ImageId::scratch();
    entries(
        ctx.store
            .export(s, &img.id, Some(&scratch), &FilterSpec::all(), true)
            .await?,
    )
    .await
}

fn entry<'a>(tree: &'a [Entry], p: &str) -> Result<&'a Entry> {
    find(tree, p).with_context(|| format!("{p} is missing from the export"))
}

/// A path named twice in one layer: the last entry wins, as tar extraction does, whether a
/// directory becomes a file, a file a directory, or a file is written twice.
pub async fn duplicate_paths_last_entry_wins(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .dir("d")
        .file("d", b"a file now")
        .file("f", b"was a file")
        .dir("f")
        .file("f/child", b"c")
        .file("same", b"one")
        .file("same", b"two")
        .build();
    let img = put(ctx, &scratch, "dup1", &layer).await?;
    let tree = merged(ctx, &s, &img).await?;
    let d = entry(&tree, "d")?;
    ensure!(d.kind == '0' && d.data == b"a file now", "d: {d:?}");
    ensure!(entry(&tree, "f")?.kind == '5');
    ensure!(entry(&tree, "f/child")?.data == b"c");
    ensure!(entry(&tree, "same")?.data == b"two");
    ensure!(tree.iter().filter(|e| e.path == "same").count() == 1);

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store
        .checkout(&s, &img.id, &dest, &CheckoutOptions { rootless: true })
        .await?;
    ensure!(std::fs::read(dest.join("d"))? == b"a file now");
    ensure!(std::fs::read(dest.join("f/child"))? == b"c");
    ensure!(std::fs::read(dest.join("same"))? == b"two");
    Ok(())
}

/// The longest names Linux allows read back: a 255-byte name, a 4,095-byte path and a
/// 4,095-byte symlink target.
pub async fn longest_names_read_back(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let name = "n".repeat(255);
    let deep = vec!["p".repeat(255); 16].join("/");
    ensure!(deep.len() == 4095);
    let target = "t".repeat(4095);
    let layer = Layer::new()
        .file(&name, b"name")
        .file(&deep, b"deep")
        .symlink("long-link", &target)
        .build();
    let img = put(ctx, &scratch, "long1", &layer).await?;
    let tree = merged(ctx, &s, &img).await?;
    ensure!(entry(&tree, &name)?.data == b"name");
    ensure!(entry(&tree, &deep)?.data == b"deep");
    ensure!(entry(&tree, "long-link")?.link.as_deref() == Some(target.as_str()));

    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store
        .checkout(&s, &img.id, &dest, &CheckoutOptions { rootless: true })
        .await?;
    ensure!(std::fs::read(dest.join(&name))? == b"name");
    ensure!(
        std::fs::read_link(dest.join("long-link"))?
            .as_os_str()
            .len()
            == 4095
    );
    Ok(())
}

/// Modification times across ext4's range (before 1970, past 2038, up to its last second in
/// 2446: 2^31 + 3 * 2^32 - 1) read back exactly.
pub async fn mtimes_across_ext4_range_read_back(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let times: [i64; 6] = [
        -(1 << 31),
        -1,
        0,
        1 << 31,
        (1 << 32) + 5,
        (1 << 31) + 3 * (1 << 32) - 1,
    ];
    let mut layer = Layer::new();
    for (i, t) in times.iter().enumerate() {
        layer = layer.file_mtime(&format!("t{i}"), b"t", *t);
    }
    let img = put(ctx, &scratch, "time1", &layer.build()).await?;
    let tree = merged(ctx, &s, &img).await?;
    for (i, t) in times.iter().enumerate() {
        let e = entry(&tree, &format!("t{i}"))?;
        ensure!(
            e.mtime == *t,
            "t{i}: exported mtime {}, written {t}",
            e.mtime
        );
    }
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    ctx.store
        .checkout(&s, &img.id, &dest, &CheckoutOptions { rootless: true })
        .await?;
    // Within what every host file system holds.
    for (i, t) in times.iter().enumerate().take(4) {
        let got = std::fs::symlink_metadata(dest.join(format!("t{i}")))?.mtime();
        ensure!(got == *t, "t{i}: checked out mtime {got}, written {t}");
    }
    Ok(())
}
