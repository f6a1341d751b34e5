//! Branch delete (VIC's DeleteBranch): an image and each parent nothing else uses.

use anyhow::{Result, ensure};
use imagestore::{Error, Image, ImageId, ImageStorerExt, OwnerName};

use super::{fresh, put};
use crate::tars::Layer;
use crate::{Ctx, expect_err};

fn ids(images: &[Image]) -> Vec<String> {
    images.iter().map(|i| i.id.to_string()).collect()
}

/// VIC's TestDeleteBranch, on the tree scratch → {1 → 10 → 100, 2 → 20 → 200,
/// 3 → 30 → {300, 301}}.
pub async fn delete_branch_follows_vic(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let mut made = std::collections::BTreeMap::new();
    for (id, parent) in [
        ("1", None),
        ("10", Some("1")),
        ("100", Some("10")),
        ("2", None),
        ("20", Some("2")),
        ("200", Some("20")),
        ("3", None),
        ("30", Some("3")),
        ("300", Some("30")),
        ("301", Some("30")),
    ] {
        let p: &Image = match parent {
            Some(p) => &made[p],
            None => &scratch,
        };
        let layer = Layer::new().file(&format!("f{id}"), id.as_bytes()).build();
        let img = put(ctx, p, id, &layer).await?;
        made.insert(id, img);
    }
    let count = || async { Ok::<_, anyhow::Error>(ctx.store.list_images(&s, &[]).await?.len()) };

    // The root of a branch with children is in use: nothing is deleted.
    expect_err!(
        ctx.store.delete_branch(&made["1"], &[]).await,
        Error::ImageInUse { .. }
    );
    ensure!(count().await? == 10);

    let gone = ctx.store.delete_branch(&made["100"], &[]).await?;
    ensure!(ids(&gone) == ["100", "10", "1"], "{:?}", ids(&gone));
    ensure!(count().await? == 7);

    // 30 still has 301.
    let gone = ctx.store.delete_branch(&made["300"], &[]).await?;
    ensure!(ids(&gone) == ["300"], "{:?}", ids(&gone));
    ensure!(count().await? == 6);

    let keep = [ImageId::new("2")?];
    let gone = ctx.store.delete_branch(&made["200"], &keep).await?;
    ensure!(ids(&gone) == ["200", "20"], "{:?}", ids(&gone));
    ensure!(count().await? == 4);
    ensure!(ctx.store.get_image(&s, &made["2"].id).await?.id == made["2"].id);

    // Usage follows the deletes exactly.
    let left: u64 = ctx
        .store
        .list_images(&s, &[])
        .await?
        .iter()
        .map(|i| i.size)
        .sum();
    ensure!(ctx.store.image_storage_usage(&s).await? == left);
    Ok(())
}

/// The walk stops below a parent with an owner or a writable layer, and at one named in the
/// keep list; scratch and a kept image themselves are refused with nothing deleted.
pub async fn delete_branch_stops_at_users_and_keeps(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let a = put(ctx, &scratch, "a", &Layer::new().file("a", b"a").build()).await?;
    let b = put(ctx, &a, "b", &Layer::new().file("b", b"b").build()).await?;
    let c = put(ctx, &b, "c", &Layer::new().file("c", b"c").build()).await?;
    let d = put(ctx, &c, "d", &Layer::new().file("d", b"d").build()).await?;

    expect_err!(
        ctx.store.delete_branch(&scratch, &[]).await,
        Error::InvalidArgument { .. }
    );
    expect_err!(
        ctx.store
            .delete_branch(&d, std::slice::from_ref(&d.id))
            .await,
        Error::InvalidArgument { .. }
    );

    // An owner on b: deleting from d stops at b.
    let owner = OwnerName::new("container-1")?;
    ctx.store.acquire(&s, &b.id, &owner).await?;
    let gone = ctx.store.delete_branch(&d, &[]).await?;
    ensure!(ids(&gone) == ["d", "c"], "{:?}", ids(&gone));
    ctx.store.release(&s, &b.id, &owner).await?;

    // A writable layer on a: deleting from b stops at a.
    let w = ImageId::new("w-on-a")?;
    ctx.store.create_writable(&a, &w).await?;
    let gone = ctx.store.delete_branch(&b, &[]).await?;
    ensure!(ids(&gone) == ["b"], "{:?}", ids(&gone));
    ctx.store.delete_writable(&s, &w).await?;

    // Nothing in the way: a goes, scratch stays.
    let gone = ctx.store.delete_branch(&a, &[]).await?;
    ensure!(ids(&gone) == ["a"], "{:?}", ids(&gone));
    ensure!(ctx.store.list_images(&s, &[]).await?.is_empty());
    ensure!(ctx.store.image_storage_usage(&s).await? == 0);
    Ok(())
}
