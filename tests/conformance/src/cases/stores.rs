//! Store lifecycle.

use anyhow::{Result, ensure};
use imagestore::{Error, ImageId, ImageStorerExt, ObjectKind};

use super::{fresh, put};
use crate::tars::{Layer, entries, find};
use crate::{Ctx, expect_err, unique};

/// A new store has a scratch root with VIC's skeleton, hidden from listings.
pub async fn create_store_makes_hidden_scratch(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    ensure!(scratch.id.is_scratch() && scratch.parent.is_none() && scratch.depth == 0);
    ensure!(scratch.self_link().to_string() == format!("/storage/{s}/scratch"));
    ensure!(
        ctx.store.list_images(&s, &[]).await?.is_empty(),
        "scratch is hidden"
    );
    ensure!(
        ctx.store.image_storage_usage(&s).await? == 0,
        "scratch is not counted"
    );
    let tree = entries(
        ctx.store
            .export(&s, &ImageId::scratch(), None, &Default::default(), true)
            .await?,
    )
    .await?;
    for d in ["etc", "lib/modules", "proc", "sys", "run", ".tether"] {
        ensure!(
            find(&tree, d).is_some_and(|e| e.kind == '5'),
            "missing dir {d}"
        );
    }
    ensure!(find(&tree, ".tether").is_some_and(|e| e.mode & 0o777 == 0o777));
    ensure!(find(&tree, "proc").is_some_and(|e| e.mode & 0o777 == 0o555));
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        ensure!(
            find(&tree, f).is_some_and(|e| e.kind == '0' && e.data.is_empty()),
            "missing file {f}"
        );
    }
    ensure!(
        find(&tree, "etc/mtab")
            .is_some_and(|e| e.kind == '2' && e.link.as_deref() == Some("/proc/mounts"))
    );
    Ok(())
}

/// Creating a store twice is `AlreadyExists`, and the first store is untouched.
pub async fn create_existing_store_already_exists(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    put(ctx, &scratch, "keep", &Layer::new().file("a", b"1").build()).await?;
    expect_err!(
        ctx.store.create_image_store(&s).await,
        Error::AlreadyExists {
            kind: ObjectKind::Store,
            ..
        }
    );
    ensure!(ctx.store.list_images(&s, &[]).await?.len() == 1);
    Ok(())
}

/// A missing store is `NotFound` everywhere.
pub async fn get_missing_store_not_found(ctx: &Ctx) -> Result<()> {
    let s = unique("missing");
    expect_err!(
        ctx.store.get_image_store(&s).await,
        Error::NotFound {
            kind: ObjectKind::Store,
            ..
        }
    );
    expect_err!(
        ctx.store.list_images(&s, &[]).await,
        Error::NotFound {
            kind: ObjectKind::Store,
            ..
        }
    );
    expect_err!(
        ctx.store.get_image(&s, &ImageId::scratch()).await,
        Error::NotFound { .. }
    );
    expect_err!(
        ctx.store.image_storage_usage(&s).await,
        Error::NotFound { .. }
    );
    Ok(())
}

/// Listing stores shows created ones, and their URLs end with the store name.
pub async fn list_stores_lists_created(ctx: &Ctx) -> Result<()> {
    let a = ctx.new_store().await?;
    let b = ctx.new_store().await?;
    let urls = ctx.store.list_image_stores().await?;
    let names: Vec<String> = urls
        .iter()
        .filter_map(|u| imagestore::image::store_name_of(u).ok())
        .map(|n| n.to_string())
        .collect();
    ensure!(
        names.contains(&a.to_string()) && names.contains(&b.to_string()),
        "{names:?}"
    );
    let url = ctx.store.get_image_store(&a).await?;
    ensure!(imagestore::image::store_name_of(&url)? == a);
    Ok(())
}

/// An empty store can be deleted, and is then gone.
pub async fn delete_empty_store(ctx: &Ctx) -> Result<()> {
    let s = ctx.new_store().await?;
    ctx.store.delete_image_store(&s).await?;
    expect_err!(ctx.store.get_image_store(&s).await, Error::NotFound { .. });
    // The name is free again.
    ctx.store.create_image_store(&s).await?;
    ctx.store.scratch(&s).await?;
    Ok(())
}

/// A store holding images is not deleted, and says why.
pub async fn delete_store_with_images_refused(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(ctx, &scratch, "img1", &Layer::new().file("a", b"1").build()).await?;
    match ctx.store.delete_image_store(&s).await {
        Err(Error::Conflict {
            kind: ObjectKind::Store,
            reason,
            ..
        }) => ensure!(reason.contains("img1"), "{reason}"),
        other => anyhow::bail!("expected a store conflict, got {other:?}"),
    }
    ensure!(ctx.store.get_image(&s, &img.id).await? == img);
    ctx.store.delete_image(&img).await?;
    ctx.store.delete_image_store(&s).await?;
    Ok(())
}

/// Deleting a missing store is `NotFound`.
pub async fn delete_missing_store_not_found(ctx: &Ctx) -> Result<()> {
    expect_err!(
        ctx.store.delete_image_store(&unique("gone")).await,
        Error::NotFound { .. }
    );
    Ok(())
}
