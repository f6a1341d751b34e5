//! The cases, one `pub async fn(&Ctx) -> anyhow::Result<()>` each, grouped by topic.

mod blobs;
mod branch;
mod checkout;
mod concurrency;
mod content;
mod gc;
mod hostile;
mod images;
mod limits;
mod quota;
mod refs;
mod sparse;
mod stores;
mod usage;
mod writable;

pub use blobs::*;
pub use branch::*;
pub use checkout::*;
pub use concurrency::*;
pub use content::*;
pub use gc::*;
pub use hostile::*;
pub use images::*;
pub use limits::*;
pub use quota::*;
pub use refs::*;
pub use sparse::*;
pub use stores::*;
pub use usage::*;
pub use writable::*;

use anyhow::{Result, bail};
use imagestore::{Error, Image, ImageId, ImageStorerExt, Metadata, StoreName};

use crate::Ctx;
use crate::tars::{stream, sum};

/// Asserts that `r` failed with an error matching `pat`.
#[macro_export]
macro_rules! expect_err {
    ($r:expr, $pat:pat) => {
        match $r {
            Err($pat) => {}
            Err(other) => ::anyhow::bail!("expected {}, got error {other:?}", stringify!($pat)),
            Ok(v) => ::anyhow::bail!("expected {}, got Ok({v:?})", stringify!($pat)),
        }
    };
}

/// Writes a layer held in memory with its correct sum.
pub(crate) async fn put(ctx: &Ctx, parent: &Image, id: &str, layer: &[u8]) -> Result<Image> {
    let id = ImageId::new(id)?;
    Ok(ctx
        .store
        .write_image(parent, &id, Metadata::new(), &sum(layer), stream(layer))
        .await?)
}

/// A new store and its scratch image.
pub(crate) async fn fresh(ctx: &Ctx) -> Result<(StoreName, Image)> {
    let s = ctx.new_store().await?;
    let scratch = ctx.store.scratch(&s).await?;
    Ok((s, scratch))
}

/// Fails unless `err` is an `ImageInUse` naming `user`.
pub(crate) fn in_use_by(err: &Error, user: &str) -> Result<()> {
    match err {
        Error::ImageInUse { users, .. } if users.iter().any(|u| u.contains(user)) => Ok(()),
        other => bail!("expected image in use by {user}, got {other:?}"),
    }
}
