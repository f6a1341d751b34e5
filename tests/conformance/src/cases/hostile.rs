//! The hostile-archive corpus against `write_image`.

use anyhow::{Result, bail, ensure};
use imagestore::{Error, FilterSpec, ImageId, Metadata};

use super::fresh;
use crate::Ctx;
use crate::corpus::{Expect, all};
use crate::tars::{Layer, entries, find, paths, stream, sum};

/// Every hostile archive gives its error, and the store is byte-for-byte unchanged after each.
pub async fn hostile_archives_rejected_unchanged(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    for h in all() {
        let before = ctx.hooks.fingerprint(&s).await?;
        let id = ImageId::new(format!("hostile-{}", h.name))?;
        let r = ctx
            .store
            .write_image(
                &scratch,
                &id,
                Metadata::new(),
                &sum(&h.bytes),
                stream(&h.bytes),
            )
            .await;
        match (&r, h.expect) {
            (Err(Error::BadArchive { reason, .. }), Expect::BadArchive(want))
                if reason.contains(want) => {}
            (Err(Error::LimitExceeded { what, .. }), Expect::Limit(want))
                if what.contains(want) => {}
            _ => bail!("{}: expected {:?}, got {r:?}", h.name, h.expect),
        }
        ensure!(
            ctx.hooks.fingerprint(&s).await? == before,
            "{}: the store changed",
            h.name
        );
        ensure!(
            ctx.store.get_image(&s, &id).await.is_err(),
            "{}: visible",
            h.name
        );
    }
    Ok(())
}

/// Writers that stop at an entry boundary without the two end-of-archive blocks are common;
/// such a layer is accepted whole, while a cut inside a header or data stays an error.
pub async fn archive_without_end_marker_accepted(ctx: &Ctx) -> Result<()> {
    let (s, scratch) = fresh(ctx).await?;
    let whole = Layer::new()
        .file("a", b"alpha")
        .file("b", &[7u8; 600])
        .build();
    // Two entries: 512 + 512 (a) and 512 + 1024 (b); the rest is the end marker.
    let cut = whole[..512 * 5].to_vec();
    let id = ImageId::new("no-end-marker")?;
    let img = ctx
        .store
        .write_image(&scratch, &id, Metadata::new(), &sum(&cut), stream(&cut))
        .await?;
    let out = entries(
        ctx.store
            .export(&s, &img.id, Some(&scratch.id), &FilterSpec::all(), true)
            .await?,
    )
    .await?;
    let ps = paths(&out);
    ensure!(ps == ["a", "b"], "{ps:?}");
    let b = find(&out, "b").ok_or_else(|| anyhow::anyhow!("b missing"))?;
    ensure!(b.data == [7u8; 600], "content of b");
    Ok(())
}
