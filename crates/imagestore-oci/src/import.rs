//! Writing a [`Plan`] into a store, base layer first: each layer becomes the image named by its
//! chain id, written with the blob's digest as its sum (the store verifies it) and, for a
//! compressed blob, its diff id checked on the way. Layers already stored are skipped without
//! opening their blobs, so importing the same image twice writes nothing.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use imagestore_core::{
    ByteStream, Descriptor, Error as StoreError, Expect, Image, ImageId, ImageStorer,
    ImageStorerExt, Metadata, ObjectKind, RefName, RefTarget, StoreName,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::plan::{META_DIFF_ID, META_MEDIA_TYPE, Plan, PlannedLayer, image_id};
use crate::progress::{Event, Phase, Progress};
use crate::source::files::Files;
use crate::spec::Platform;
use crate::verify::{Pump, pump};

/// Opens the blobs of a plan's layers.
#[async_trait]
pub trait Blobs: Send + Sync {
    /// The blob of layer `index` (base is 0), from its first byte.
    async fn open(&self, index: usize) -> Result<ByteStream>;
}

/// Blobs read from a layout, an archive or a directory.
#[derive(Debug)]
pub struct FileBlobs<'a> {
    /// Where the blobs are.
    pub files: &'a Files,
    /// The plan naming them.
    pub plan: &'a Plan,
}

#[async_trait]
impl Blobs for FileBlobs<'_> {
    async fn open(&self, index: usize) -> Result<ByteStream> {
        let layer = self
            .plan
            .layers
            .get(index)
            .ok_or_else(|| Error::invalid(&self.plan.source, format!("no layer {index}")))?;
        let (stream, _) = self.files.stream(&layer.blob)?;
        Ok(stream)
    }
}

/// The outcome of an import or a pull.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    /// The store written to.
    pub store: StoreName,
    /// The top image: the whole image's id.
    pub top: ImageId,
    /// The reference the image came under, if any (the first of `references`).
    pub reference: Option<String>,
    /// The references of the store set to the image, each naming its manifest and config.
    pub references: Vec<RefName>,
    /// Digest of the manifest.
    pub manifest_digest: imagestore_core::Digest,
    /// Digest of the config.
    pub config_digest: imagestore_core::Digest,
    /// Layers written now.
    pub written: usize,
    /// Layers already stored.
    pub skipped: usize,
    /// Bytes of blobs written now.
    pub bytes_written: u64,
}

/// Creates store `name` unless it exists.
pub async fn ensure_store(store: &dyn ImageStorer, name: &StoreName) -> Result<()> {
    match store.create_image_store(name).await {
        Ok(_)
        | Err(StoreError::AlreadyExists {
            kind: ObjectKind::Store,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn conflict(name: &StoreName, id: &ImageId, reason: String) -> Error {
    Error::Store(StoreError::Conflict {
        kind: ObjectKind::Image,
        name: format!("{name}/{id}"),
        reason,
    })
}

/// Checks that an image already stored under a layer's chain id is that layer on that parent.
fn check_existing(
    img: &Image,
    name: &StoreName,
    parent: &ImageId,
    layer: &PlannedLayer,
) -> Result<()> {
    if img.parent.as_ref() != Some(parent) {
        return Err(conflict(
            name,
            &img.id,
            format!(
                "stored on parent {}, expected {parent}",
                img.parent.as_ref().map_or("none", |p| p.as_str())
            ),
        ));
    }
    let same = match img.metadata.get(META_DIFF_ID) {
        Some(v) => v.as_slice() == layer.diff_id.to_string().as_bytes(),
        None => img.sum.as_ref() == Some(&layer.digest),
    };
    if !same {
        return Err(conflict(
            name,
            &img.id,
            format!("stored with another layer than {}", layer.diff_id),
        ));
    }
    Ok(())
}

/// What every layer keeps: its diff id and media type. The manifest and config are blobs of
/// the store, named by the image's references (see [`set_references`]).
fn layer_metadata(layer: &PlannedLayer) -> Metadata {
    let mut m = Metadata::new();
    m.insert(META_DIFF_ID.into(), layer.diff_id.to_string().into_bytes());
    m.insert(
        META_MEDIA_TYPE.into(),
        layer.media_type.clone().into_bytes(),
    );
    m
}

/// The names of `plan`'s references, checked.
pub fn reference_names(plan: &Plan) -> Result<Vec<RefName>> {
    plan.references
        .iter()
        .map(|r| RefName::new(r.as_str()).map_err(|e| Error::context(&plan.source, e)))
        .collect()
}

/// Stores `plan`'s manifest and config as blobs of store `name` (byte for byte) and points
/// each of `names` at image `top` with them, whatever the names pointed at before.
pub async fn set_references(
    store: &dyn ImageStorer,
    name: &StoreName,
    plan: &Plan,
    top: &ImageId,
    names: &[RefName],
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    store
        .put_blob(name, &plan.manifest_digest, plan.manifest.clone())
        .await
        .map_err(|e| Error::context(format!("manifest {}", plan.manifest_digest), e))?;
    store
        .put_blob(name, &plan.config_digest, plan.config.clone())
        .await
        .map_err(|e| Error::context(format!("config {}", plan.config_digest), e))?;
    let target = RefTarget {
        image: top.clone(),
        manifest: Some(Descriptor {
            media_type: plan.manifest_media_type.clone(),
            digest: plan.manifest_digest.clone(),
            size: plan.manifest.len() as u64,
        }),
        config: Some(plan.config_digest.clone()),
        platform: plan.platform.clone(),
    };
    for r in names {
        store
            .set_reference(name, r, &target, &Expect::Any)
            .await
            .map_err(|e| Error::context(format!("reference {r}"), e))?;
    }
    Ok(())
}

/// Writes `plan` into store `name` (which must exist), base first, sets its references
/// ([`set_references`]) and returns what it did.
pub async fn write_chain(
    store: &dyn ImageStorer,
    name: &StoreName,
    plan: &Plan,
    blobs: &dyn Blobs,
    progress: Arc<dyn Progress>,
) -> Result<Imported> {
    let names = reference_names(plan)?;
    let mut parent = store.scratch(name).await?;
    let count = plan.layers.len();
    let (mut written, mut skipped, mut bytes_written) = (0, 0, 0u64);
    for (i, layer) in plan.layers.iter().enumerate() {
        let id = image_id(&layer.chain_id)?;
        progress.event(Event::Start {
            layer: i,
            layers: count,
            phase: Phase::Write,
            digest: layer.digest.clone(),
            total: Some(layer.size),
        });
        match store.get_image(name, &id).await {
            Ok(img) => {
                check_existing(&img, name, &parent.id, layer)?;
                progress.event(Event::Finish {
                    layer: i,
                    phase: Phase::Write,
                    image: Some(id),
                    skipped: true,
                });
                skipped += 1;
                parent = img;
                continue;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let what = format!("layer {i} ({})", layer.digest);
        let body = blobs.open(i).await?;
        let (body, verdict) = pump(
            body,
            Pump {
                diff_id: (layer.digest != layer.diff_id)
                    .then(|| (layer.diff_id.clone(), what.clone())),
                progress: progress
                    .wants_bytes()
                    .then(|| (progress.clone(), i, Phase::Write)),
            },
        );
        let meta = layer_metadata(layer);
        let img = match store
            .write_image(&parent, &id, meta, &layer.digest, body)
            .await
        {
            Ok(img) => img,
            Err(e) => {
                return Err(match verdict.take() {
                    Some(v) => v,
                    None => match e {
                        StoreError::DigestMismatch { expected, actual } => Error::DigestMismatch {
                            what: format!("layer {i} blob"),
                            expected,
                            actual,
                        },
                        other => Error::context(what, other),
                    },
                });
            }
        };
        progress.event(Event::Finish {
            layer: i,
            phase: Phase::Write,
            image: Some(id),
            skipped: false,
        });
        written += 1;
        bytes_written += layer.size;
        parent = img;
    }
    set_references(store, name, plan, &parent.id, &names).await?;
    Ok(Imported {
        store: name.clone(),
        top: parent.id,
        reference: plan.reference.clone(),
        references: names,
        manifest_digest: plan.manifest_digest.clone(),
        config_digest: plan.config_digest.clone(),
        written,
        skipped,
        bytes_written,
    })
}

/// Imports the image at `path` (an OCI layout, an oci-archive or a docker-archive) into
/// store `name`, creating the store if needed. `tag` picks an image when the source holds
/// several; `platform` picks from a multi-platform index.
pub async fn import_path(
    store: &dyn ImageStorer,
    name: &StoreName,
    path: &Path,
    tag: Option<&str>,
    platform: &Platform,
    progress: Arc<dyn Progress>,
) -> Result<Imported> {
    let source = crate::source::open(path).await?;
    let plan = source.plan(tag, platform).await?;
    ensure_store(store, name).await?;
    let blobs = FileBlobs {
        files: &source.files,
        plan: &plan,
    };
    write_chain(store, name, &plan, &blobs, progress).await
}
