//! Garbage collection: deleting the images and blobs nothing needs any more, on any backend.
//!
//! **Roots** are the images that references name, the images that something pins
//! ([`References::pins`](crate::refs::References::pins): live owners, writable layers, writes in progress), the images of a
//! keep list, and images committed less than a grace period ago. Every root and every
//! ancestor of one stays; every other image is deleted, leaf first, and so are the blobs no
//! reference names that were last put more than the grace period ago.
//!
//! Collection is a plan and then ordinary deletes: each delete is the backend's atomic
//! [`ImageStorer::delete_image`] (in batches, [`ImageStorer::delete_images`]), which refuses an image that is in use at that moment (a
//! child committed, a write begun on it, a reference moved onto it, an owner registered
//! since the plan was made). Such an image is skipped, and so, because its child stays, is
//! every ancestor of it. A collection therefore never deletes an image an in-flight write
//! names as its parent, on any backend and from any host; `docs/decisions/0019-garbage-collection.md`
//! gives the argument. The grace period covers the one gap deletes cannot see: between an
//! image's commit (or a blob's put) and the reference set on it right after.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::names::{ImageId, StoreName};
use crate::storer::ImageStorer;

/// Images handed to [`ImageStorer::delete_images`] at once: a file-like backend holds its
/// store lock for one batch, so writers wait at most that long.
const BATCH: usize = 512;

/// How to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Only plan: report what would go, delete nothing.
    pub dry_run: bool,
    /// Images committed and blobs put less than this long ago stay.
    pub grace: Duration,
    /// Images that stay, with their ancestors.
    pub keep: Vec<ImageId>,
}

impl Default for GcOptions {
    /// A real run with a grace period of one hour and no keep list.
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            keep: Vec::new(),
        }
    }
}

/// An image that was to be deleted but stayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The image.
    pub id: ImageId,
    /// Why: the delete's error (usually "in use by ...", something that appeared after the
    /// plan was made).
    pub reason: String,
}

/// What a collection deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// True if nothing was deleted because only a plan was asked for.
    pub dry_run: bool,
    /// The images deleted (planned), leaf first.
    pub images: Vec<Image>,
    /// The blobs deleted (planned).
    pub blobs: Vec<Digest>,
    /// Bytes the deleted images and blobs occupied.
    pub freed_bytes: u64,
    /// Images of the plan that stayed because something used them by the time of their
    /// delete (never in a dry run).
    pub skipped: Vec<Skipped>,
    /// Images the collection kept: roots and their ancestors, scratch excluded.
    pub kept: usize,
}

/// The plan of a collection: the images to delete, deepest first, and the blobs.
#[derive(Debug, Clone, Default)]
struct Plan {
    images: Vec<Image>,
    blobs: Vec<(Digest, u64)>,
    kept: usize,
}

fn age_below(created_unix_ms: Option<u64>, now_ms: u64, grace: Duration) -> bool {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    created_unix_ms.is_some_and(|t| now_ms.saturating_sub(t) < grace_ms)
}

async fn plan<S: ImageStorer + ?Sized>(
    storer: &S,
    store: &StoreName,
    opts: &GcOptions,
) -> Result<Plan> {
    // Roots first, images second: an image committed after the listing of roots is young,
    // and one a reference names from then on can only be deleted if its delete is refused.
    let refs = storer.list_references(store).await?;
    let pins = storer.pins(store).await?;
    let blobs = storer.list_blobs(store).await?;
    let images = storer.list_images(store, &[]).await?;
    let now = crate::backend::record::now_unix_ms();

    let by_id: HashMap<&ImageId, &Image> = images.iter().map(|i| (&i.id, i)).collect();
    let mut roots: Vec<&ImageId> = Vec::new();
    roots.extend(refs.iter().map(|r| &r.target.image));
    roots.extend(pins.iter().map(|p| &p.image));
    roots.extend(opts.keep.iter());
    roots.extend(
        images
            .iter()
            .filter(|i| age_below(i.created_unix_ms, now, opts.grace))
            .map(|i| &i.id),
    );
    let mut live: HashSet<&ImageId> = HashSet::new();
    for root in roots {
        let mut next = Some(root);
        while let Some(id) = next {
            if !live.insert(id) {
                break;
            }
            next = by_id.get(id).and_then(|i| i.parent.as_ref());
        }
    }
    let mut doomed: Vec<Image> = images
        .iter()
        .filter(|i| !live.contains(&i.id))
        .cloned()
        .collect();
    // Leaf first: every child is deeper than its parent.
    doomed.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| a.id.cmp(&b.id)));
    let kept = images.len() - doomed.len();

    let named: HashSet<&Digest> = refs.iter().flat_map(|r| r.target.blobs()).collect();
    let blobs = blobs
        .into_iter()
        .filter(|b| {
            !named.contains(&b.digest)
                // A blob whose time the storage cannot tell counts as just put.
                && !b.modified_unix_ms.is_none_or(|t| age_below(Some(t), now, opts.grace))
        })
        .map(|b| (b.digest, b.size))
        .collect();
    Ok(Plan {
        images: doomed,
        blobs,
        kept,
    })
}

/// Collects store `store` as `opts` says (see the module documentation).
///
/// Dropped mid-way: every delete is atomic and goes leaf first, so what is gone is a set of
/// whole, unused images whose children went before them; a later run finishes the work.
pub async fn collect<S: ImageStorer + ?Sized>(
    storer: &S,
    store: &StoreName,
    opts: &GcOptions,
) -> Result<GcReport> {
    let plan = plan(storer, store, opts).await?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        kept: plan.kept,
        ..GcReport::default()
    };
    if opts.dry_run {
        report.freed_bytes = plan.images.iter().map(|i| i.size).sum::<u64>()
            + plan.blobs.iter().map(|b| b.1).sum::<u64>();
        report.images = plan.images;
        report.blobs = plan.blobs.into_iter().map(|b| b.0).collect();
        return Ok(report);
    }

    // One depth at a time, deepest first, each depth in batches: siblings never wait for
    // each other, a parent always goes after its children.
    let mut by_depth: BTreeMap<u32, Vec<Image>> = BTreeMap::new();
    for image in plan.images {
        by_depth.entry(image.depth).or_default().push(image);
    }
    for (_, level) in by_depth.into_iter().rev() {
        for batch in level.chunks(BATCH) {
            let results = storer.delete_images(store, batch).await?;
            for (image, r) in batch.iter().zip(results) {
                match r {
                    Ok(gone) => {
                        report.freed_bytes += gone.size;
                        report.images.push(gone);
                    }
                    // Gone already (another collection): nothing to free, nothing kept.
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => report.skipped.push(Skipped {
                        id: image.id.clone(),
                        reason: e.to_string(),
                    }),
                }
            }
            info!(store = %store, deleted = report.images.len(), "collecting");
        }
    }

    for (digest, size) in plan.blobs {
        match storer.delete_blob(store, &digest).await {
            Ok(()) => {
                report.freed_bytes += size;
                report.blobs.push(digest);
            }
            // Named by a reference set since the plan, or deleted by another run.
            Err(Error::Conflict { .. } | Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    info!(
        store = %store,
        images = report.images.len(),
        blobs = report.blobs.len(),
        freed_bytes = report.freed_bytes,
        skipped = report.skipped.len(),
        "collected"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_from_creation_and_unknown_is_old() {
        let g = Duration::from_secs(10);
        assert!(age_below(Some(95_000), 100_000, g));
        assert!(!age_below(Some(90_000), 100_000, g));
        assert!(!age_below(None, 100_000, g));
        // A clock behind the writer's counts the image as just made.
        assert!(age_below(Some(200_000), 100_000, g));
        assert!(age_below(Some(1), u64::MAX, Duration::MAX));
    }
}
