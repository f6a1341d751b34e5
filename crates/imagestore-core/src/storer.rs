//! The storage traits: [`ImageStorer`] and the [`Resolver`], [`Importer`] and [`Exporter`] it
//! builds on, in the vocabulary of VIC's Go interface.
//!
//! Every trait is object safe; callers hold an `Arc<dyn ImageStorer>` from
//! [`crate::registry::open`]. Each method documents its contract; the conformance suite
//! (`tests/conformance`) checks every backend against these contracts.

use std::fmt;
use std::path::Path;
use std::pin::Pin;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Image, Metadata};
use crate::layer::checkout::{CheckoutOptions, CheckoutReport};
use crate::layer::filter::FilterSpec;
use crate::names::{ImageId, OwnerName, StoreName};

/// A stream of bytes going into or coming out of a store (a layer tar, an export).
pub type ByteStream = Pin<Box<dyn AsyncRead + Send>>;

/// Wraps any async reader as a [`ByteStream`].
pub fn byte_stream(r: impl AsyncRead + Send + 'static) -> ByteStream {
    Box::pin(r)
}

/// What a backend can do, so that callers and tests ask instead of checking schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Layer bytes are kept exactly as received, so [`Exporter::export_raw`] works and its
    /// digest equals the sum the layer was written with.
    pub raw_layers: bool,
    /// Longest chain (layers above scratch) the backend accepts.
    pub max_chain_depth: u32,
    /// Several processes or hosts may share one store safely.
    pub shared_writers: bool,
}

impl Capabilities {
    /// Capabilities of a backend that keeps raw layers and accepts `max_chain_depth` layers.
    pub fn new(raw_layers: bool, max_chain_depth: u32, shared_writers: bool) -> Self {
        Capabilities {
            raw_layers,
            max_chain_depth,
            shared_writers,
        }
    }
}

/// A writable layer: a mutable child of an image, like a container's disk.
///
/// Tars are applied to it with [`Importer::import`]; [`Importer::commit_writable`] turns it
/// into a new immutable image. While it exists, its parent counts as in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writable {
    /// The writable layer's id (shares the namespace of image ids within a store).
    pub id: ImageId,
    /// Its store.
    pub store: StoreName,
    /// The image it was created on.
    pub parent: ImageId,
    /// Number of tars imported so far.
    pub imports: u32,
}

/// What an import applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Entries written (files, directories, links, devices).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Entries the filter left out.
    pub filtered: u64,
    /// Bytes of the tar stream read.
    pub bytes: u64,
}

/// Locating images and tracking who uses them (the seed's `storage.Resolver`, plus portable
/// owner bookkeeping).
#[async_trait]
pub trait Resolver: Send + Sync {
    /// A backend-native URL that locates the image's storage without further context
    /// (a directory, an object prefix, a VMDK path). Fails with `NotFound` if the image does
    /// not exist.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn url(&self, store: &StoreName, id: &ImageId) -> Result<Url>;

    /// Everything that currently uses the image at `url` (a URL from [`Resolver::url`]):
    /// registered owners, plus whatever the backend itself knows (VMs on vSphere).
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn owners(&self, url: &Url) -> Result<Vec<OwnerName>>;

    /// Registers `owner` as a user of the image; while any owner is registered the image
    /// cannot be deleted. Acquiring twice is the same as once. `NotFound` if the image does
    /// not exist.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it (file-like
    /// backends finish it on the blocking pool).
    async fn acquire(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()>;

    /// Registers `owner` as a user of the image for `ttl` from now, or renews its
    /// registration for that long: once the lease expires the owner no longer protects the
    /// image (nor is it listed), so a process that died cannot pin it forever.
    /// [`Resolver::acquire`] afterwards makes the registration permanent again. `NotFound` if
    /// the image does not exist.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it.
    async fn acquire_lease(
        &self,
        store: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        ttl: std::time::Duration,
    ) -> Result<()>;

    /// Removes `owner` from the image's users. `NotFound` if it was not registered.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it (file-like
    /// backends finish it on the blocking pool).
    async fn release(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()>;
}

/// Writing tar streams into writable layers (the seed's `storage.Importer`).
#[async_trait]
pub trait Importer: Send + Sync {
    /// Creates an empty writable layer `id` on `parent`. `AlreadyExists` if an image or a
    /// writable layer with that id exists; `NotFound` if the parent does not.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it (file-like
    /// backends finish it on the blocking pool).
    async fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable>;

    /// Reads a writable layer's description.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn get_writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable>;

    /// Applies `tar` to writable layer `id`: entries replace what is there, whiteouts and opaque
    /// markers delete, the filter selects, strips and rebases paths. A hostile or malformed
    /// tar is refused as a whole with `BadArchive` and changes nothing.
    ///
    /// Dropped mid-way: before the import's last file is written nothing of it is applied (the
    /// writable layer stays as it was and the next import works at once); after, it is applied.
    async fn import(
        &self,
        store: &StoreName,
        id: &ImageId,
        filter: &FilterSpec,
        tar: ByteStream,
    ) -> Result<ImportSummary>;

    /// Turns writable layer `id` into a new immutable image `new_id` whose layer is the
    /// difference from the parent (its digest is computed). The writable layer is removed.
    ///
    /// Dropped mid-way: as [`ImageStorer::write_image`] for the new image; the writable layer is
    /// discarded only after the image is committed.
    async fn commit_writable(
        &self,
        store: &StoreName,
        id: &ImageId,
        new_id: &ImageId,
        meta: Metadata,
    ) -> Result<Image>;

    /// Discards writable layer `id` and everything imported into it.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it (file-like
    /// backends finish it on the blocking pool).
    async fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()>;
}

/// Reading image contents as tar streams (the seed's `storage.Exporter`), and checkout.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// A tar of image (or writable layer) `id`: without `ancestor`, the whole merged image;
    /// with it, only the changes since that ancestor (with `.wh.` whiteouts for deletions and
    /// opaque markers for replaced directories). `data = false` gives headers only (sizes
    /// zero), each carrying VIC's `change_type` xattr as a PAX `SCHILY.xattr.change_type`
    /// record: `A` added, `C` modified (the ancestor had the path), `D` a whiteout or opaque
    /// marker ([`crate::layer::export::ChangeType`]).
    /// `InvalidArgument` if `ancestor` is not an ancestor of `id`.
    ///
    /// Dropped mid-way (or the stream dropped before its end): nothing changes.
    async fn export(
        &self,
        store: &StoreName,
        id: &ImageId,
        ancestor: Option<&ImageId>,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream>;

    /// The exact bytes image `id`'s layer was written with; their digest equals its sum.
    /// `Unsupported` on backends without [`Capabilities::raw_layers`].
    ///
    /// Dropped mid-way (or the stream dropped before its end): nothing changes.
    async fn export_raw(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream>;

    /// The bytes of [`Exporter::export_raw`] as an open local file, where the backend keeps
    /// the layer as one (`file://`), so that a server can send it in large reads without
    /// copying it through a stream; `None` where it does not.
    ///
    /// The file is the committed layer: nothing writes to it again, and a delete of the image
    /// only unlinks it, so it stays readable while open.
    async fn export_raw_file(
        &self,
        store: &StoreName,
        id: &ImageId,
    ) -> Result<Option<std::fs::File>> {
        let _ = (store, id);
        Ok(None)
    }

    /// Materialises image (or writable layer) `id` into directory `dest`, which must be empty
    /// or absent. Nothing is ever written outside `dest`.
    ///
    /// Dropped mid-way: the store is unchanged; `dest` may hold part of the tree.
    async fn checkout(
        &self,
        store: &StoreName,
        id: &ImageId,
        dest: &Path,
        options: &CheckoutOptions,
    ) -> Result<CheckoutReport>;
}

/// An image store backend: named stores holding chains of immutable images.
///
/// Every async method may be dropped mid-way (a caller that times out or disconnects); each
/// says what then remains, and `docs/reliability.md` has the rules behind it.
///
/// The contract, checked by the conformance suite on every backend:
/// * a reader never sees a partial image, whatever crashes or concurrent writers do;
/// * the same image id written concurrently yields one write, and every caller the image;
/// * an image with children, writable layers or owners cannot be deleted, and a child is never
///   committed on a parent a concurrent delete removed.
#[async_trait]
pub trait ImageStorer:
    Resolver + Importer + Exporter + crate::refs::References + Send + Sync + fmt::Debug
{
    /// The backend as [`std::any::Any`], so a caller can reach what only one backend offers
    /// (for example the disk backends' VMDK export) by downcasting to its type.
    fn as_any(&self) -> &dyn std::any::Any;

    /// The URL scheme this backend serves (`file`, `s3`, `vmdk`, `vsphere`).
    fn scheme(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates store `name` with its `scratch` root image and returns the store's URL.
    /// `AlreadyExists` if the store exists. On failure nothing of the store remains.
    ///
    /// Dropped mid-way: the store is created whole or not at all (a half-made one is invisible and
    /// replaced by the next creation).
    async fn create_image_store(&self, name: &StoreName) -> Result<Url>;

    /// Deletes store `name`. Refused with `Conflict` (naming the images) while it holds
    /// images or writable layers other than scratch. `NotFound` if it does not exist.
    ///
    /// Dropped mid-way: the change completes or does not happen; never half of it (file-like
    /// backends finish it on the blocking pool).
    async fn delete_image_store(&self, name: &StoreName) -> Result<()>;

    /// The URL of store `name`; `NotFound` if it does not exist. The first call for a store in
    /// a process sweeps leftovers of crashed writes.
    ///
    /// Dropped mid-way: nothing visible changes (a first call may have swept leftovers).
    async fn get_image_store(&self, name: &StoreName) -> Result<Url>;

    /// The URLs of every store, sorted by name.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn list_image_stores(&self) -> Result<Vec<Url>>;

    /// Writes image `id` = `parent` + the layer read from `body`, which must hash to `sum`.
    ///
    /// * `NotFound` if the parent does not exist (only `parent.store` and `parent.id` are read).
    /// * If `id` exists with the same sum and parent, returns it without reading `body`;
    ///   with another sum or parent, `Conflict`.
    /// * `DigestMismatch` if the bytes do not hash to `sum`; `BadArchive` if they are not a
    ///   safe tar (plain, gzip or zstd). Either way nothing is visible and a retry may succeed.
    /// * `LimitExceeded` if the chain would be deeper than [`Capabilities::max_chain_depth`].
    ///
    /// Dropped mid-way: before the commit point nothing is visible and the id can be written again
    /// at once (its staged data is removed); after it, the image is committed and a retry returns
    /// it.
    async fn write_image(
        &self,
        parent: &Image,
        id: &ImageId,
        meta: Metadata,
        sum: &Digest,
        body: ByteStream,
    ) -> Result<Image>;

    /// Image `id` of store `store`; `NotFound` if absent.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn get_image(&self, store: &StoreName, id: &ImageId) -> Result<Image>;

    /// With `ids` empty, every image of the store except scratch, sorted by id; otherwise the
    /// images of `ids` that exist, in the order given (missing ids are skipped).
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn list_images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>>;

    /// Deletes one image and returns it. `ImageInUse` while it has children, writable layers or
    /// owners; `InvalidArgument` for scratch; `NotFound` if absent.
    ///
    /// Dropped mid-way: the image is deleted or still there whole; never half of it.
    async fn delete_image(&self, image: &Image) -> Result<Image>;

    /// Deletes many images of store `store` at once, each as [`ImageStorer::delete_image`]
    /// would: one result per image, in order. Images the list deletes earlier may be the
    /// only users of later ones, so a chain listed leaf first goes whole. A backend may do
    /// the batch in one step (the file-like backends take their store lock once and make
    /// the whole batch durable together; `s3://` takes every image's lease, lists the batch's
    /// links once and removes the records with bulk requests, decision 0021); by default the
    /// deletes run 16 at a time, which suits a list whose images do not depend on each other.
    ///
    /// Dropped mid-way: each image is deleted or still there whole.
    async fn delete_images(
        &self,
        store: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        use futures::StreamExt;
        let _ = store;
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            if pending.len() == 16
                && let Some(r) = pending.next().await
            {
                out.push(r);
            }
            pending.push_back(self.delete_image(image));
        }
        while let Some(r) = pending.next().await {
            out.push(r);
        }
        Ok(out)
    }

    /// Exact bytes used by the store's images, scratch excluded; answered without walking the
    /// store.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn image_storage_usage(&self, store: &StoreName) -> Result<u64>;

    /// Bytes used by one image's layer.
    ///
    /// Dropped mid-way: nothing changes (it only reads).
    async fn image_layer_storage_usage(&self, store: &StoreName, id: &ImageId) -> Result<u64>;

    /// VIC's ImageJoin: attaches image `id` of `store` to the virtual machine named `vm` as a
    /// new child disk named `disk` (a container's read-write layer, in VIC's terms), so the
    /// VM runs on the image. The VM then owns the image until the disk leaves it.
    ///
    /// `Unsupported` on backends without virtual machines (all but `vsphere://`); `NotFound`
    /// for an unknown image or VM.
    async fn join_image(
        &self,
        store: &StoreName,
        id: &ImageId,
        vm: &str,
        disk: &ImageId,
    ) -> Result<JoinedImage> {
        let _ = (store, id, vm, disk);
        Err(JoinedImage::unsupported(self.scheme()))
    }
}

/// What [`ImageStorer::join_image`] attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedImage {
    /// The virtual machine's name.
    pub vm: String,
    /// The new child disk, as the backend names files (`[datastore] path` on vSphere).
    pub disk: String,
    /// Its parent: the image's disk.
    pub parent: String,
}

impl JoinedImage {
    /// The answer of a backend without virtual machines to [`ImageStorer::join_image`].
    pub fn unsupported(backend: &'static str) -> Error {
        Error::Unsupported {
            operation: "ImageJoin",
            backend,
        }
    }
}

/// Conveniences on top of [`ImageStorer`].
#[async_trait]
pub trait ImageStorerExt: ImageStorer {
    /// The store's scratch image.
    async fn scratch(&self, store: &StoreName) -> Result<Image> {
        self.get_image(store, &ImageId::scratch()).await
    }

    /// Writes a layer held in memory.
    async fn write_image_bytes(
        &self,
        parent: &Image,
        id: &ImageId,
        meta: Metadata,
        bytes: Vec<u8>,
    ) -> Result<Image> {
        let sum = Digest::sha256_of(&bytes);
        self.write_image(
            parent,
            id,
            meta,
            &sum,
            byte_stream(std::io::Cursor::new(bytes)),
        )
        .await
    }

    /// Deletes `image` and walks up its chain deleting each parent as well, leaf first, until
    /// a parent that is still in use (another child, a writable layer, an owner), is named in
    /// `keep`, or is scratch (VIC's DeleteBranch). Returns the deleted images, leaf first.
    ///
    /// `InvalidArgument` for scratch or an image named in `keep`. If `image` itself cannot be
    /// deleted (in use, absent) that error is returned and nothing is deleted; once one image
    /// is deleted the walk stops quietly at the first parent it cannot delete, as VIC's does
    /// (a failure other than "in use" is logged).
    ///
    /// Dropped mid-way, or after a crash: every delete is atomic and goes leaf first, so what
    /// is gone is a prefix of the branch and no image ever loses its parent.
    async fn delete_branch(&self, image: &Image, keep: &[ImageId]) -> Result<Vec<Image>> {
        if image.id.is_scratch() {
            return Err(crate::error::Error::invalid(format!(
                "the scratch image of store {} cannot be deleted",
                image.store
            )));
        }
        if keep.contains(&image.id) {
            return Err(crate::error::Error::invalid(format!(
                "{}/{} is in the keep list and cannot be deleted",
                image.store, image.id
            )));
        }
        let mut deleted = vec![self.delete_image(image).await?];
        while let Some(parent) = deleted.last().and_then(|d| d.parent.clone()) {
            if parent.is_scratch() || keep.contains(&parent) {
                break;
            }
            let step = match self.get_image(&image.store, &parent).await {
                Ok(p) => self.delete_image(&p).await,
                Err(e) => Err(e),
            };
            match step {
                Ok(gone) => deleted.push(gone),
                Err(e) => {
                    if !crate::error::is_image_in_use(&e) {
                        tracing::warn!(image = %format!("{}/{parent}", image.store), error = %e, "branch delete stopped");
                    }
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// Collects store `store`: deletes the images no reference, pin, keep list or grace
    /// period keeps (nor any descendant of theirs), leaf first, and the blobs no reference
    /// names ([`crate::gc`]).
    async fn gc(
        &self,
        store: &StoreName,
        opts: &crate::gc::GcOptions,
    ) -> Result<crate::gc::GcReport> {
        crate::gc::collect(self, store, opts).await
    }

    /// The chain from scratch to `id`, scratch first.
    async fn chain(&self, store: &StoreName, id: &ImageId) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        let mut next = Some(id.clone());
        while let Some(cur) = next {
            let img = self.get_image(store, &cur).await?;
            next = img.parent.clone();
            out.push(img);
        }
        out.reverse();
        Ok(out)
    }
}

impl<T: ImageStorer + ?Sized> ImageStorerExt for T {}

/// The parameters of [`Image`] writes checked the same way by every backend before any I/O.
pub fn check_write_id(id: &ImageId) -> Result<()> {
    if id.is_scratch() {
        return Err(crate::error::Error::invalid(
            "image id \"scratch\" is reserved for the root image of a store",
        ));
    }
    Ok(())
}

/// `LimitExceeded` if a child of an image at `parent_depth` would be deeper than `max`.
pub fn check_depth(parent_depth: u32, max: u32) -> Result<()> {
    if parent_depth + 1 > max {
        return Err(crate::error::Error::LimitExceeded {
            what: "chain depth (layers above scratch)",
            value: u64::from(parent_depth) + 1,
            max: u64::from(max),
        });
    }
    Ok(())
}

/// The error of a store deletion refused because the store still holds `left` (image ids, or
/// `writable <id>`): a `Conflict` naming the first few.
pub fn store_not_empty(store: &StoreName, left: &[String]) -> crate::error::Error {
    let shown: Vec<&str> = left.iter().take(5).map(String::as_str).collect();
    crate::error::Error::Conflict {
        kind: crate::error::ObjectKind::Store,
        name: store.to_string(),
        reason: format!(
            "it still holds {} image(s) ({}{}); delete them first",
            left.len(),
            shown.join(", "),
            if left.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ),
    }
}

/// Decides what a write of `id` (on `parent`, expecting `sum`) does when image `name` already
/// exists with `existing_parent` and `existing_sum`: `Ok` when it is the same image (the write
/// returns it), `Conflict` when the parent or sum differs, and `AlreadyExists` without an
/// expected sum (a commit of a writable layer).
pub fn check_existing_write(
    name: String,
    existing_parent: Option<&ImageId>,
    existing_sum: Option<&Digest>,
    parent: &ImageId,
    sum: Option<&Digest>,
) -> Result<()> {
    use crate::error::{Error, ObjectKind};
    let show = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
    if existing_parent != Some(parent) {
        return Err(Error::Conflict {
            kind: ObjectKind::Image,
            name,
            reason: format!(
                "it exists with parent {}, not {parent}",
                show(existing_parent.map(ToString::to_string))
            ),
        });
    }
    match sum {
        Some(sum) if existing_sum != Some(sum) => Err(Error::Conflict {
            kind: ObjectKind::Image,
            name,
            reason: format!(
                "it exists with sum {}, not {sum}",
                show(existing_sum.map(ToString::to_string))
            ),
        }),
        None => Err(Error::already_exists(ObjectKind::Image, name)),
        Some(_) => Ok(()),
    }
}

impl ImportSummary {
    /// The summary of an import whose layer has `toc` and whose tar stream was `bytes` long
    /// (`filtered` is left at zero: the filter counts what it drops).
    pub fn of_toc(toc: &crate::layer::toc::Toc, bytes: u64) -> ImportSummary {
        use crate::layer::toc::EntryKind;
        let count = |f: &dyn Fn(&EntryKind) -> bool| {
            toc.entries.iter().filter(|e| f(&e.kind)).count() as u64
        };
        ImportSummary {
            entries: count(&|k| !k.is_marker()),
            whiteouts: count(&|k| matches!(k, EntryKind::Whiteout | EntryKind::Opaque)),
            filtered: 0,
            bytes,
        }
    }
}
