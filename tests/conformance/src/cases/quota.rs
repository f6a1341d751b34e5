//! Quotas: a store's limit on the bytes its images occupy, checked at every commit.

use anyhow::{Result, bail, ensure};
use imagestore::{Error, FilterSpec, Image, ImageId, Metadata, StoreName};

use super::{fresh, put};
use crate::tars::{Layer, stream};
use crate::{Ctx, expect_err, unique};

/// A layer of `len` bytes of file data.
fn layer(name: &str, len: usize) -> Vec<u8> {
    Layer::new().file(name, &vec![6u8; len]).build()
}

/// Writes `body` as image `id` on `parent`, keeping the store's error.
async fn write(ctx: &Ctx, parent: &Image, id: &str, body: &[u8]) -> imagestore::Result<Image> {
    ctx.store
        .write_image(
            parent,
            &ImageId::new(id)?,
            Metadata::new(),
            &crate::tars::sum(body),
            stream(body),
        )
        .await
}

/// Fails unless `r` is `QuotaExceeded` for store `s` with these numbers.
fn over_quota(r: imagestore::Result<Image>, s: &StoreName, usage: u64, quota: u64) -> Result<u64> {
    match r {
        Err(Error::QuotaExceeded {
            store,
            usage: u,
            size,
            quota: q,
        }) => {
            ensure!(store == s.as_str(), "{store}");
            ensure!(
                u == usage && q == quota,
                "usage {u} quota {q}, expected {usage} {quota}"
            );
            ensure!(u + size > q, "{u} + {size} fits under {q}");
            Ok(size)
        }
        other => bail!("expected QuotaExceeded, got {other:?}"),
    }
}

/// A quota is set, read back (on another instance too), changed and removed; a store without
/// one has none; a missing store has no quota to set.
pub async fn quota_round_trip(ctx: &Ctx) -> Result<()> {
    let (s, _) = fresh(ctx).await?;
    ensure!(ctx.store.quota(&s).await?.is_none());
    ctx.store.set_quota(&s, Some(12_345)).await?;
    ensure!(ctx.store.quota(&s).await? == Some(12_345));
    ensure!(ctx.reopen().await?.quota(&s).await? == Some(12_345));
    ctx.store.set_quota(&s, Some(0)).await?;
    ensure!(ctx.store.quota(&s).await? == Some(0));
    ctx.store.set_quota(&s, Some(u64::MAX)).await?;
    ensure!(ctx.store.quota(&s).await? == Some(u64::MAX));
    ctx.store.set_quota(&s, None).await?;
    ensure!(ctx.store.quota(&s).await?.is_none());
    ensure!(ctx.reopen().await?.quota(&s).await?.is_none());
    expect_err!(
        ctx.store.set_quota(&unique("missing"), Some(1)).await,
        Error::NotFound { .. }
    );
    Ok(())
}

/// A write that brings the usage exactly to the quota succeeds; one that would pass it by a
/// single byte is `QuotaExceeded` and leaves nothing (no image, usage unchanged, the id
/// writable again once the quota is raised). What a layer costs is learnt from the backend.
pub async fn quota_exact_fit_and_one_byte_over(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(ctx, &scratch, "base", &layer("base", 5000)).await?;
    let body = layer("q", 30_000);
    let probe = put(ctx, &base, "q", &body).await?;
    let cost = ctx.store.image_layer_storage_usage(&s, &probe.id).await?;
    ensure!(cost == probe.size && cost > 0, "{cost} {}", probe.size);
    ctx.store.delete_image(&probe).await?;
    let usage = ctx.store.image_storage_usage(&s).await?;
    ensure!(usage == base.size);
    let before = ctx.store.list_images(&s, &[]).await?;

    ctx.store.set_quota(&s, Some(usage + cost - 1)).await?;
    let size = over_quota(
        write(ctx, &base, "q", &body).await,
        &s,
        usage,
        usage + cost - 1,
    )?;
    ensure!(
        size == cost,
        "the refusal counts {size} bytes, the layer costs {cost}"
    );
    ensure!(ctx.store.list_images(&s, &[]).await? == before);
    ensure!(ctx.store.image_storage_usage(&s).await? == usage);
    expect_err!(
        ctx.store.get_image(&s, &ImageId::new("q")?).await,
        Error::NotFound { .. }
    );

    ctx.store.set_quota(&s, Some(usage + cost)).await?;
    let q = put(ctx, &base, "q", &body).await?;
    ensure!(q.size == cost, "{} != {cost}", q.size);
    ensure!(ctx.store.image_storage_usage(&s).await? == usage + cost);
    // Full: even a small write is refused now.
    over_quota(
        write(ctx, &q, "more", &layer("m", 1)).await,
        &s,
        usage + cost,
        usage + cost,
    )?;
    ensure!(ctx.store.image_storage_usage(&s).await? == usage + cost);
    ensure!(ctx.store.list_images(&s, &[]).await?.len() == 2);
    Ok(())
}

/// A quota below the current usage is allowed: what is stored stays readable and deletable,
/// but every write is refused until enough is deleted or the quota raised.
pub async fn quota_below_usage_refuses_writes(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a", &layer("a", 20_000)).await?;
    let b = put(ctx, &scratch, "b", &layer("b", 20_000)).await?;
    let usage = a.size + b.size;
    ctx.store.set_quota(&s, Some(a.size)).await?;
    ensure!(ctx.store.quota(&s).await? == Some(a.size));
    ensure!(ctx.store.image_storage_usage(&s).await? == usage);
    over_quota(
        write(ctx, &a, "c", &layer("c", 10)).await,
        &s,
        usage,
        a.size,
    )?;
    ensure!(ctx.store.get_image(&s, &b.id).await? == b);
    // Deleting is always allowed; at the quota there is still no room.
    ctx.store.delete_image(&b).await?;
    over_quota(
        write(ctx, &a, "c", &layer("c", 10)).await,
        &s,
        a.size,
        a.size,
    )?;
    ctx.store.set_quota(&s, Some(a.size * 3)).await?;
    let c = put(ctx, &a, "c", &layer("c", 10)).await?;
    ensure!(ctx.store.image_storage_usage(&s).await? == a.size + c.size);
    Ok(())
}

/// Removing the quota (`None`) lets refused writes through, on every instance.
pub async fn quota_removed_allows_writes(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    ctx.store.set_quota(&s, Some(0)).await?;
    let other = ctx.reopen().await?;
    let body = layer("a", 1000);
    let id = ImageId::new("a")?;
    let write = |store: std::sync::Arc<dyn imagestore::ImageStorer>| {
        let (scratch, id, body) = (scratch.clone(), id.clone(), body.clone());
        async move {
            store
                .write_image(
                    &scratch,
                    &id,
                    Metadata::new(),
                    &crate::tars::sum(&body),
                    stream(&body),
                )
                .await
        }
    };
    over_quota(write(other.clone()).await, &s, 0, 0)?;
    ensure!(other.list_images(&s, &[]).await?.is_empty());
    ctx.store.set_quota(&s, None).await?;
    let a = write(other.clone()).await?;
    ensure!(ctx.store.list_images(&s, &[]).await? == vec![a.clone()]);
    ensure!(ctx.store.image_storage_usage(&s).await? == a.size);
    ensure!(other.quota(&s).await?.is_none());
    Ok(())
}

/// Committing a writable layer over the quota is `QuotaExceeded`: no image appears, the
/// writable layer stays as it was, and the commit succeeds once the quota allows it.
pub async fn quota_refuses_commit_keeps_writable(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let base = put(ctx, &scratch, "base", &layer("base", 1000)).await?;
    let w = ImageId::new("w")?;
    ctx.store.create_writable(&base, &w).await?;
    let all = FilterSpec::all();
    ctx.store
        .import(&s, &w, &all, stream(&layer("new", 30_000)))
        .await?;
    ctx.store.set_quota(&s, Some(base.size)).await?;
    let new = ImageId::new("committed")?;
    over_quota(
        ctx.store
            .commit_writable(&s, &w, &new, Metadata::new())
            .await,
        &s,
        base.size,
        base.size,
    )?;
    expect_err!(ctx.store.get_image(&s, &new).await, Error::NotFound { .. });
    ensure!(ctx.store.image_storage_usage(&s).await? == base.size);
    let kept = ctx.store.get_writable(&s, &w).await?;
    ensure!(kept.imports == 1 && kept.parent == base.id, "{kept:?}");
    ctx.store.set_quota(&s, None).await?;
    let img = ctx
        .store
        .commit_writable(&s, &w, &new, Metadata::new())
        .await?;
    ensure!(img.parent.as_ref() == Some(&base.id));
    ensure!(ctx.store.image_storage_usage(&s).await? == base.size + img.size);
    Ok(())
}
