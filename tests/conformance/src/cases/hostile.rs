//! The hostile-archive corpus against `write_image`.

use anyhow::{Result, bail, ensure};
use imagestore::{Error, ImageId, Metadata};

use super::fresh;
use crate::Ctx;
use crate::corpus::{Expect, all};
use crate::tars::{stream, sum};

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
