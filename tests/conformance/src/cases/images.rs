//! Writing, reading and deleting images; owners.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use imagestore::{
    Digest, Error, ImageId, ImageStorerExt, Metadata, ObjectKind, OwnerName, byte_stream,
};

use super::{fresh, in_use_by, put};
use crate::tars::{Layer, Untouchable, gzip, stream, sum, zstd};
use crate::{Ctx, expect_err, unique_id};

/// A written image has the parent, sum, metadata, depth and links it was written with.
pub async fn write_and_get_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new()
        .dir("app")
        .file("app/run", b"#!/bin/sh\n")
        .build();
    let mut meta = Metadata::new();
    meta.insert("metaData".into(), br#"{"id":"x"}"#.to_vec());
    let id = ImageId::new("layer1")?;
    let img = ctx
        .store
        .write_image(&scratch, &id, meta.clone(), &sum(&layer), stream(&layer))
        .await?;
    ensure!(img.id == id && img.store == s && img.parent == Some(ImageId::scratch()));
    ensure!(img.sum == Some(sum(&layer)) && img.metadata == meta && img.depth == 1);
    ensure!(img.self_link().to_string() == format!("/storage/{s}/layer1"));
    ensure!(img.parent_link().map(|l| l.to_string()) == Some(format!("/storage/{s}/scratch")));
    ensure!(ctx.store.get_image(&s, &id).await? == img);
    let child = put(ctx, &img, "layer2", &Layer::new().file("b", b"2").build()).await?;
    ensure!(child.depth == 2 && child.parent == Some(id));
    let chain: Vec<String> = ctx
        .store
        .chain(&s, &child.id)
        .await?
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    ensure!(chain == ["scratch", "layer1", "layer2"], "{chain:?}");
    Ok(())
}

/// Writing on a parent that does not exist is `NotFound` and creates nothing.
pub async fn write_needs_existing_parent(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut ghost = scratch.clone();
    ghost.id = ImageId::new("ghost")?;
    let layer = Layer::new().file("a", b"1").build();
    expect_err!(
        put(ctx, &ghost, "orphan", &layer).await.map_err(into_core),
        Error::NotFound {
            kind: ObjectKind::Image,
            ..
        }
    );
    expect_err!(
        ctx.store.get_image(&s, &ImageId::new("orphan")?).await,
        Error::NotFound { .. }
    );
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    Ok(())
}

/// Converts an anyhow error carrying an imagestore error back to it (for `expect_err!`).
pub(crate) fn into_core(e: anyhow::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => e,
        Err(e) => Error::invalid(e.to_string()),
    }
}

/// A wrong sum is `DigestMismatch` naming both sums, and nothing is visible.
pub async fn wrong_sum_is_mismatch_and_invisible(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"payload").build();
    let wrong = Digest::sha256_of(b"something else");
    let id = ImageId::new("bad")?;
    match ctx
        .store
        .write_image(&scratch, &id, Metadata::new(), &wrong, stream(&layer))
        .await
    {
        Err(Error::DigestMismatch { expected, actual }) => {
            ensure!(expected == wrong && actual == sum(&layer))
        }
        other => anyhow::bail!("expected a digest mismatch, got {other:?}"),
    }
    expect_err!(ctx.store.get_image(&s, &id).await, Error::NotFound { .. });
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    ensure!(ctx.store.image_storage_usage(&s).await? == 0);
    Ok(())
}

/// VIC's TestBrokenPull: a bogus sum with an empty body fails; the same id with the right sum
/// and a real tar then succeeds.
pub async fn broken_pull_then_retry(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let id = ImageId::new("pulled")?;
    let bogus = Digest::parse(&format!("sha256:{}", "1".repeat(64)))?;
    expect_err!(
        ctx.store
            .write_image(&scratch, &id, Metadata::new(), &bogus, stream(b""))
            .await,
        Error::DigestMismatch { .. }
    );
    let layer = Layer::new().dir("dir0").file("dir0/f", b"x").build();
    let img = ctx
        .store
        .write_image(&scratch, &id, Metadata::new(), &sum(&layer), stream(&layer))
        .await?;
    ensure!(ctx.store.get_image(&s, &id).await? == img);
    Ok(())
}

/// The same id, sum and parent again returns the stored image without reading the body.
pub async fn same_id_same_sum_returns_existing_unread(ctx: &Ctx) -> Result<()> {
    let (_, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    let first = put(ctx, &scratch, "same", &layer).await?;
    let mut other_meta = Metadata::new();
    other_meta.insert("ignored".into(), b"x".to_vec());
    let again = ctx
        .store
        .write_image(
            &scratch,
            &first.id,
            other_meta,
            &sum(&layer),
            byte_stream(Untouchable),
        )
        .await?;
    ensure!(again == first, "the existing image comes back unchanged");
    Ok(())
}

/// The same id with another sum is a `Conflict`.
pub async fn same_id_other_sum_conflicts(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let first = put(ctx, &scratch, "dup", &Layer::new().file("a", b"1").build()).await?;
    let other = Layer::new().file("a", b"2").build();
    expect_err!(
        ctx.store
            .write_image(
                &scratch,
                &first.id,
                Metadata::new(),
                &sum(&other),
                stream(&other)
            )
            .await,
        Error::Conflict { .. }
    );
    ensure!(ctx.store.get_image(&s, &first.id).await? == first);
    Ok(())
}

/// The same id on another parent is a `Conflict`.
pub async fn same_id_other_parent_conflicts(ctx: &Ctx) -> Result<()> {
    let (_, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    let a = put(ctx, &scratch, "pa", &layer).await?;
    put(ctx, &scratch, "kid", &layer).await?;
    expect_err!(
        ctx.store
            .write_image(
                &a,
                &ImageId::new("kid")?,
                Metadata::new(),
                &sum(&layer),
                stream(&layer)
            )
            .await,
        Error::Conflict { .. }
    );
    Ok(())
}

/// An empty body with the sha256 of nothing is a valid, empty layer.
pub async fn empty_layer_is_valid(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = ctx
        .store
        .write_image(
            &scratch,
            &ImageId::new("empty")?,
            Metadata::new(),
            &Digest::empty_sha256(),
            stream(b""),
        )
        .await?;
    ensure!(img.sum == Some(Digest::empty_sha256()));
    let tree = crate::tars::entries(
        ctx.store
            .export(
                &s,
                &img.id,
                Some(&ImageId::scratch()),
                &Default::default(),
                true,
            )
            .await?,
    )
    .await?;
    ensure!(tree.is_empty(), "an empty layer changes nothing: {tree:?}");
    Ok(())
}

/// gzip and zstd layers are accepted; the sum is over the bytes as sent.
pub async fn compressed_layers_verify_raw_bytes(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let plain = Layer::new().file("z", &vec![3u8; 100_000]).build();
    let gz = gzip(&plain);
    let zs = zstd(&plain);
    let a = put(ctx, &scratch, "gz", &gz).await?;
    let b = put(ctx, &scratch, "zs", &zs).await?;
    ensure!(a.sum == Some(sum(&gz)) && b.sum == Some(sum(&zs)));
    expect_err!(
        ctx.store
            .write_image(
                &scratch,
                &ImageId::new("gz2")?,
                Metadata::new(),
                &sum(&plain),
                stream(&gz)
            )
            .await,
        Error::DigestMismatch { .. }
    );
    for id in [&a.id, &b.id] {
        let tree = crate::tars::entries(
            ctx.store
                .export(&s, id, Some(&ImageId::scratch()), &Default::default(), true)
                .await?,
        )
        .await?;
        ensure!(crate::tars::find(&tree, "z").is_some_and(|e| e.data == vec![3u8; 100_000]));
    }
    Ok(())
}

/// `scratch` cannot be written as an image id.
pub async fn scratch_id_is_reserved(ctx: &Ctx) -> Result<()> {
    let (_, scratch) = fresh(ctx).await?;
    expect_err!(
        ctx.store
            .write_image(
                &scratch,
                &ImageId::scratch(),
                Metadata::new(),
                &Digest::empty_sha256(),
                stream(b"")
            )
            .await,
        Error::InvalidArgument(_)
    );
    Ok(())
}

/// Bad metadata is refused before anything is stored.
pub async fn invalid_metadata_changes_nothing(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let before = ctx.hooks.fingerprint(&s).await?;
    let mut meta = Metadata::new();
    meta.insert("bad\nkey".into(), b"v".to_vec());
    let layer = Layer::new().file("a", b"1").build();
    expect_err!(
        ctx.store
            .write_image(
                &scratch,
                &ImageId::new("m")?,
                meta,
                &sum(&layer),
                stream(&layer)
            )
            .await,
        Error::InvalidArgument(_)
    );
    ensure!(ctx.hooks.fingerprint(&s).await? == before, "store changed");
    Ok(())
}

/// Binary metadata values and keys of every valid length come back byte for byte, after a
/// restart too.
pub async fn metadata_round_trips(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "metaData".to_owned(),
        br#"{"architecture":"amd64"}"#.to_vec(),
    );
    meta.insert("binary".to_owned(), (0u8..=255).collect());
    meta.insert("empty".to_owned(), Vec::new());
    // Keys of the longest valid length, plain and with characters a file name backend must
    // escape, are kept like any other.
    meta.insert("k".repeat(255), b"longest".to_vec());
    meta.insert(format!("{}/", "x y".repeat(84)), b"escaped".to_vec());
    let layer = Layer::new().file("a", b"1").build();
    let img = ctx
        .store
        .write_image(
            &scratch,
            &ImageId::new("meta")?,
            meta.clone(),
            &sum(&layer),
            stream(&layer),
        )
        .await?;
    ensure!(img.metadata == meta);
    let other = ctx.reopen().await?;
    ensure!(other.get_image(&s, &img.id).await?.metadata == meta);
    Ok(())
}

/// Listing returns every image but scratch, sorted by id.
pub async fn list_images_excludes_scratch(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    for id in ["c", "a", "b"] {
        put(ctx, &scratch, id, &layer).await?;
    }
    let ids: Vec<String> = ctx
        .store
        .list_images(&s, &[])
        .await?
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    ensure!(ids == ["a", "b", "c"], "{ids:?}");
    Ok(())
}

/// Listing by ids returns those that exist, in the order asked.
pub async fn list_images_by_ids(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    let mut written = Vec::new();
    for i in 1..=9 {
        written.push(put(ctx, &scratch, &format!("ID-{i}"), &layer).await?);
    }
    let ask = [
        ImageId::new("ID-3")?,
        ImageId::new("nope")?,
        ImageId::new("ID-1")?,
        ImageId::new("ID-7")?,
    ];
    let got = ctx.store.list_images(&s, &ask).await?;
    ensure!(got == vec![written[2].clone(), written[0].clone(), written[6].clone()]);
    Ok(())
}

/// A missing image is `NotFound`.
pub async fn get_missing_image_not_found(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    expect_err!(
        ctx.store.get_image(&s, &ImageId::new("garbage")?).await,
        Error::NotFound {
            kind: ObjectKind::Image,
            ..
        }
    );
    Ok(())
}

/// A leaf can be deleted; it is then gone and its id reusable.
pub async fn delete_leaf_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    let img = put(ctx, &scratch, "leaf", &layer).await?;
    let deleted = ctx.store.delete_image(&img).await?;
    ensure!(deleted == img);
    expect_err!(
        ctx.store.get_image(&s, &img.id).await,
        Error::NotFound { .. }
    );
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    let other = Layer::new().file("b", b"2").build();
    let again = put(ctx, &scratch, "leaf", &other).await?;
    ensure!(again.sum == Some(sum(&other)));
    Ok(())
}

/// An image with children is in use; deleting leaf first, then parent, works.
pub async fn delete_image_with_children_in_use(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let layer = Layer::new().file("a", b"1").build();
    let b = put(ctx, &scratch, "b", &layer).await?;
    let b10 = put(ctx, &b, "b10", &layer).await?;
    let b100 = put(ctx, &b, "b100", &layer).await?;
    let err = ctx
        .store
        .delete_image(&b)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("deleted a parent"))?;
    ensure!(imagestore::is_image_in_use(&err), "{err:?}");
    in_use_by(&err, "b10")?;
    ensure!(ctx.store.list_images(&s, &[]).await?.len() == 3);
    ctx.store.delete_image(&b100).await?;
    ctx.store.delete_image(&b10).await?;
    ctx.store.delete_image(&b).await?;
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    Ok(())
}

/// scratch cannot be deleted.
pub async fn delete_scratch_refused(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    expect_err!(
        ctx.store.delete_image(&scratch).await,
        Error::InvalidArgument(_)
    );
    ensure!(ctx.store.scratch(&s).await? == scratch);
    Ok(())
}

/// Deleting an image twice: the second is `NotFound`.
pub async fn delete_missing_image_not_found(ctx: &Ctx) -> Result<()> {
    let (_, scratch) = fresh(ctx).await?;
    let img = put(ctx, &scratch, "once", &Layer::new().file("a", b"1").build()).await?;
    ctx.store.delete_image(&img).await?;
    expect_err!(ctx.store.delete_image(&img).await, Error::NotFound { .. });
    Ok(())
}

/// A registered owner keeps an image from being deleted until released.
pub async fn owners_block_delete(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(
        ctx,
        &scratch,
        "owned",
        &Layer::new().file("a", b"1").build(),
    )
    .await?;
    let c1 = OwnerName::new("container-1")?;
    ctx.store.acquire(&s, &img.id, &c1).await?;
    ctx.store.acquire(&s, &img.id, &c1).await?;
    let err = ctx
        .store
        .delete_image(&img)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("deleted an owned image"))?;
    in_use_by(&err, "container-1")?;
    ctx.store.release(&s, &img.id, &c1).await?;
    ctx.store.delete_image(&img).await?;
    expect_err!(
        ctx.store.acquire(&s, &img.id, &c1).await,
        Error::NotFound { .. }
    );
    Ok(())
}

/// An owner registered with a lease protects the image until the lease expires, then no longer
/// (nor is it listed); a permanent owner on the same image still protects it.
pub async fn owner_lease_expires(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(
        ctx,
        &scratch,
        "leased",
        &Layer::new().file("a", b"1").build(),
    )
    .await?;
    let (short, forever) = (OwnerName::new("short")?, OwnerName::new("forever")?);
    ctx.store
        .acquire_lease(&s, &img.id, &short, Duration::from_millis(1200))
        .await?;
    let url = ctx.store.url(&s, &img.id).await?;
    ensure!(ctx.store.owners(&url).await? == vec![short.clone()]);
    let err = ctx
        .store
        .delete_image(&img)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("deleted an image under a live lease"))?;
    in_use_by(&err, "short")?;
    ctx.store.acquire(&s, &img.id, &forever).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(ctx.store.owners(&url).await? == vec![forever.clone()]);
    let err = ctx
        .store
        .delete_image(&img)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("deleted an image with an owner"))?;
    in_use_by(&err, "forever")?;
    ctx.store.release(&s, &img.id, &forever).await?;
    ctx.store.delete_image(&img).await?;
    Ok(())
}

/// Renewing a lease before it expires keeps the image protected past the first expiry; an
/// owner made permanent again (`acquire`) never expires.
pub async fn owner_lease_renewed_keeps_protecting(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(
        ctx,
        &scratch,
        "renewed",
        &Layer::new().file("a", b"1").build(),
    )
    .await?;
    let o = OwnerName::new("worker")?;
    ctx.store
        .acquire_lease(&s, &img.id, &o, Duration::from_millis(1200))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.store
        .acquire_lease(&s, &img.id, &o, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    expect_err!(ctx.store.delete_image(&img).await, Error::ImageInUse { .. });
    ctx.store.acquire(&s, &img.id, &o).await?;
    let url = ctx.store.url(&s, &img.id).await?;
    ensure!(ctx.store.owners(&url).await? == vec![o.clone()]);
    ctx.store.release(&s, &img.id, &o).await?;
    ctx.store.delete_image(&img).await?;
    Ok(())
}

/// `url` locates an image; `owners` of that URL lists its owners, on another instance too.
pub async fn owners_listed_by_url(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(
        ctx,
        &scratch,
        "located",
        &Layer::new().file("a", b"1").build(),
    )
    .await?;
    let url = ctx.store.url(&s, &img.id).await?;
    ensure!(url == img.locator, "{url} != {}", img.locator);
    ensure!(ctx.store.owners(&url).await?.is_empty());
    let (a, b) = (OwnerName::new("vm-a")?, OwnerName::new("vm-b")?);
    ctx.store.acquire(&s, &img.id, &b).await?;
    ctx.store.acquire(&s, &img.id, &a).await?;
    let other = ctx.reopen().await?;
    let owners = other.owners(&url).await?;
    ensure!(
        owners.contains(&a) && owners.contains(&b) && owners.len() == 2,
        "{owners:?}"
    );
    expect_err!(
        ctx.store.url(&s, &unique_id("nope")).await,
        Error::NotFound { .. }
    );
    Ok(())
}

/// Releasing an owner that was never registered is `NotFound`.
pub async fn release_unknown_owner_not_found(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let img = put(ctx, &scratch, "free", &Layer::new().file("a", b"1").build()).await?;
    expect_err!(
        ctx.store
            .release(&s, &img.id, &OwnerName::new("nobody")?)
            .await,
        Error::NotFound { .. }
    );
    Ok(())
}
