//! Storage usage and chain limits.

use anyhow::{Result, ensure};
use imagestore::{Digest, Error, ImageId, ImageStorerExt, Metadata};

use super::{fresh, put};
use crate::tars::{Layer, gzip, stream};
use crate::{Ctx, expect_err};

/// Usage is the exact sum of the layers' sizes (the bytes received, where the backend keeps
/// raw layers), scratch excluded, and follows deletes.
pub async fn usage_counts_exact_bytes(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let raw = ctx.store.capabilities().raw_layers;
    let l1 = Layer::new().file("a", &vec![1u8; 10_000]).build();
    let l2 = gzip(&Layer::new().file("b", &vec![2u8; 50_000]).build());
    let a = put(ctx, &scratch, "u1", &l1).await?;
    let b = put(ctx, &a, "u2", &l2).await?;
    let total = ctx.store.image_storage_usage(&s).await?;
    let per_a = ctx.store.image_layer_storage_usage(&s, &a.id).await?;
    let per_b = ctx.store.image_layer_storage_usage(&s, &b.id).await?;
    ensure!(total == per_a + per_b, "{total} != {per_a} + {per_b}");
    if raw {
        ensure!(
            per_a == l1.len() as u64 && per_b == l2.len() as u64,
            "{per_a} {per_b}"
        );
    }
    ctx.store.delete_image(&b).await?;
    ensure!(ctx.store.image_storage_usage(&s).await? == per_a);
    ctx.store.delete_image(&a).await?;
    ensure!(ctx.store.image_storage_usage(&s).await? == 0);
    Ok(())
}

/// Per-layer usage answers for each image; scratch counts zero.
pub async fn layer_usage_per_image(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let small = put(
        ctx,
        &scratch,
        "small",
        &Layer::new().file("a", b"1").build(),
    )
    .await?;
    let big = put(
        ctx,
        &scratch,
        "big",
        &Layer::new().file("a", &vec![9u8; 300_000]).build(),
    )
    .await?;
    let us = ctx.store.image_layer_storage_usage(&s, &small.id).await?;
    let ub = ctx.store.image_layer_storage_usage(&s, &big.id).await?;
    ensure!(ub > us && us > 0, "{us} {ub}");
    ensure!(
        ctx.store
            .image_layer_storage_usage(&s, &ImageId::scratch())
            .await?
            == 0
    );
    expect_err!(
        ctx.store
            .image_layer_storage_usage(&s, &ImageId::new("none")?)
            .await,
        Error::NotFound { .. }
    );
    Ok(())
}

async fn chain(ctx: &Ctx, layers: u32) -> Result<(imagestore::StoreName, imagestore::Image)> {
    let (s, scratch) = fresh(ctx).await?;
    let mut top = scratch;
    for i in 0..layers {
        let layer = Layer::new()
            .file(&format!("l/{i:04}"), i.to_string().as_bytes())
            .build();
        top = put(ctx, &top, &format!("c{i:04}"), &layer).await?;
    }
    Ok((s, top))
}

/// A chain of 128 layers works, and its merged image holds every layer's file.
pub async fn chain_of_128_layers(ctx: &Ctx) -> Result<()> {
    let (s, top) = chain(ctx, 128).await?;
    ensure!(top.depth == 128);
    let tree = crate::tars::entries(
        ctx.store
            .export(&s, &top.id, None, &Default::default(), true)
            .await?,
    )
    .await?;
    for i in [0u32, 64, 127] {
        ensure!(
            crate::tars::find(&tree, &format!("l/{i:04}"))
                .is_some_and(|e| e.data == i.to_string().as_bytes())
        );
    }
    ensure!(ctx.store.chain(&s, &top.id).await?.len() == 129);
    Ok(())
}

/// One layer beyond the documented maximum is `LimitExceeded`.
pub async fn chain_depth_limit_enforced(ctx: &Ctx) -> Result<()> {
    let max = ctx.store.capabilities().max_chain_depth;
    let (s, scratch) = fresh(ctx).await?;
    let mut top = scratch;
    for i in 0..max {
        top = ctx
            .store
            .write_image(
                &top,
                &ImageId::new(format!("d{i}"))?,
                Metadata::new(),
                &Digest::empty_sha256(),
                stream(b""),
            )
            .await?;
    }
    ensure!(top.depth == max);
    expect_err!(
        ctx.store
            .write_image(
                &top,
                &ImageId::new("one-too-many")?,
                Metadata::new(),
                &Digest::empty_sha256(),
                stream(b"")
            )
            .await,
        Error::LimitExceeded { .. }
    );
    expect_err!(
        ctx.store
            .get_image(&s, &ImageId::new("one-too-many")?)
            .await,
        Error::NotFound { .. }
    );
    Ok(())
}
