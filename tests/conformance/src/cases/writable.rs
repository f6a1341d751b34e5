//! Writable layers and import.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use imagestore::{Error, FilterSpec, FilterType, ImageId, Metadata};

use super::{fresh, in_use_by, put};
use crate::tars::{Layer, entries, find, paths, read_all, stream, sum};
use crate::{Ctx, expect_err};

/// Import into a writable layer, export it, commit it into an image with a computed digest.
pub async fn writable_import_export_commit(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(
        ctx,
        &scratch,
        "wb",
        &Layer::new()
            .dir("etc")
            .file("etc/conf", b"v1")
            .file("etc/drop", b"d")
            .build(),
    )
    .await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw1")?)
        .await?;
    ensure!(w.parent == base.id && w.imports == 0);
    ctx.store
        .import(
            &s,
            &w.id,
            &FilterSpec::all(),
            stream(&Layer::new().file("etc/conf", b"v2").build()),
        )
        .await?;
    ctx.store
        .import(
            &s,
            &w.id,
            &FilterSpec::all(),
            stream(&Layer::new().file("new", b"n").whiteout("etc/drop").build()),
        )
        .await?;
    ensure!(ctx.store.get_writable(&s, &w.id).await?.imports == 2);
    let tree = entries(
        ctx.store
            .export(&s, &w.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    ensure!(find(&tree, "etc/conf").is_some_and(|e| e.data == b"v2"));
    ensure!(find(&tree, "new").is_some() && find(&tree, "etc/drop").is_none());
    let diff = entries(
        ctx.store
            .export(&s, &w.id, Some(&base.id), &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    let ps: BTreeSet<&str> = paths(&diff).into_iter().collect();
    ensure!(
        ps == BTreeSet::from(["etc/conf", "etc/.wh.drop", "new"]),
        "{ps:?}"
    );

    let mut meta = Metadata::new();
    meta.insert("by".into(), b"commit".to_vec());
    let img = ctx
        .store
        .commit_writable(&s, &w.id, &ImageId::new("committed")?, meta.clone())
        .await?;
    ensure!(img.parent.as_ref() == Some(&base.id) && img.metadata == meta);
    expect_err!(
        ctx.store.get_writable(&s, &w.id).await,
        Error::NotFound { .. }
    );
    let after = entries(
        ctx.store
            .export(&s, &img.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    ensure!(
        find(&after, "etc/conf").is_some_and(|e| e.data == b"v2")
            && find(&after, "etc/drop").is_none()
    );
    if ctx.store.capabilities().raw_layers {
        let raw = read_all(ctx.store.export_raw(&s, &img.id).await?).await?;
        ensure!(
            img.sum == Some(sum(&raw)),
            "the committed digest is the digest of the stored layer"
        );
    }
    Ok(())
}

/// A writable layer is a child of its parent: the parent is in use until it is gone.
pub async fn writable_layer_puts_parent_in_use(ctx: &Ctx) -> Result<()> {
    let (_, scratch) = fresh(ctx).await?;
    let base = put(ctx, &scratch, "wp", &Layer::new().file("a", b"a").build()).await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw2")?)
        .await?;
    let err = ctx
        .store
        .delete_image(&base)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("deleted a parent of a writable layer"))?;
    in_use_by(&err, "rw2")?;
    expect_err!(
        ctx.store.create_writable(&base, &w.id).await,
        Error::AlreadyExists { .. }
    );
    expect_err!(
        put(ctx, &base, "rw2", &Layer::new().build())
            .await
            .map_err(super::images::into_core),
        Error::Conflict { .. }
    );
    ctx.store.delete_writable(&base.store, &w.id).await?;
    ctx.store.delete_image(&base).await?;
    Ok(())
}

/// Import applies whiteouts and opaque markers, and filters (strip, rebase, exclude).
pub async fn import_applies_whiteouts_and_filters(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(
        ctx,
        &scratch,
        "wi",
        &Layer::new()
            .dir("d")
            .file("d/a", b"a")
            .dir("data")
            .file("data/old", b"o")
            .build(),
    )
    .await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw3")?)
        .await?;
    let f = FilterSpec::from_types([
        ("/src", FilterType::Strip),
        ("/data", FilterType::Rebase),
        ("/src/skip", FilterType::Exclude),
    ])?;
    let tar = Layer::new()
        .dir("src")
        .file("src/one", b"1")
        .file("src/skip", b"s")
        .opaque("src")
        .build();
    ctx.store.import(&s, &w.id, &f, stream(&tar)).await?;
    ctx.store
        .import(
            &s,
            &w.id,
            &FilterSpec::all(),
            stream(&Layer::new().whiteout("d/a").build()),
        )
        .await?;
    let tree = entries(
        ctx.store
            .export(&s, &w.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    ensure!(
        find(&tree, "data/one").is_some_and(|e| e.data == b"1"),
        "{:?}",
        paths(&tree)
    );
    ensure!(find(&tree, "data/skip").is_none() && find(&tree, "src/one").is_none());
    ensure!(
        find(&tree, "data/old").is_none(),
        "the rebased opaque marker hid data/old"
    );
    ensure!(find(&tree, "d/a").is_none() && find(&tree, "d").is_some());
    Ok(())
}

/// Committed images never change: importing into a writable child leaves the parent as it was.
pub async fn committed_images_never_change(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(
        ctx,
        &scratch,
        "imm",
        &Layer::new().file("f", b"orig").build(),
    )
    .await?;
    let before = read_all(
        ctx.store
            .export(&s, &base.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw4")?)
        .await?;
    ctx.store
        .import(
            &s,
            &w.id,
            &FilterSpec::all(),
            stream(&Layer::new().file("f", b"changed").whiteout("etc").build()),
        )
        .await?;
    let after = read_all(
        ctx.store
            .export(&s, &base.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    ensure!(before == after);
    ensure!(ctx.store.get_image(&s, &base.id).await? == base);
    Ok(())
}

/// A hostile tar is refused as a whole by import and changes nothing.
pub async fn import_refuses_hostile_tar(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(ctx, &scratch, "ih", &Layer::new().file("f", b"x").build()).await?;
    let w = ctx
        .store
        .create_writable(&base, &ImageId::new("rw5")?)
        .await?;
    let before = read_all(
        ctx.store
            .export(&s, &w.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    for h in crate::corpus::all()
        .into_iter()
        .filter(|h| h.name.contains("symlink") || h.name.contains("escape"))
    {
        expect_err!(
            ctx.store
                .import(&s, &w.id, &FilterSpec::all(), stream(&h.bytes))
                .await,
            Error::BadArchive { .. }
        );
    }
    // A truncated tar is a bad archive too, with a filter (which rewrites the stream first)
    // or without.
    let strip = FilterSpec::from_types([("f", FilterType::Strip)])?;
    for filter in [FilterSpec::all(), strip] {
        expect_err!(
            ctx.store
                .import(&s, &w.id, &filter, stream(b"\x1f\x8b\x08"))
                .await,
            Error::BadArchive { .. }
        );
    }
    ensure!(ctx.store.get_writable(&s, &w.id).await?.imports == 0);
    let after = read_all(
        ctx.store
            .export(&s, &w.id, None, &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    ensure!(before == after);
    Ok(())
}
