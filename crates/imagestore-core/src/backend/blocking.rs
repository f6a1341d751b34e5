//! The async traits for backends whose bookkeeping is blocking file work.
//!
//! The local backend (`file://`) and the disk backends (`vmdk://`, `vsphere://`) keep records,
//! markers and locks in files and make every change with a few synchronous calls. Such a
//! backend implements two small traits instead of the four storage traits:
//!
//! * [`BlockingCatalog`], for its shared state: the synchronous reads and changes (stores,
//!   records, owners, writable layers, the layer engine's [`Stack`]), each run on tokio's
//!   blocking pool;
//! * [`BlockingBackend`], for its handle: its identity, its id lock and the two operations that
//!   stream a tar (writing an image and importing into a writable layer).
//!
//! This module then implements [`ImageStorer`], [`Resolver`], [`Importer`] and [`Exporter`]
//! for the handle once, with the argument checks every backend makes before any I/O and the
//! commit of a writable layer (lock, diff against the parent, write, discard) that only the
//! hooks differ in.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use url::Url;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Image, Metadata, validate_metadata};
use crate::layer::checkout::{CheckoutOptions, CheckoutReport};
use crate::layer::filter::FilterSpec;
use crate::layer::ingest::IngestLimits;
use crate::layer::rewrite::filter_tar;
use crate::layer::stack::Stack;
use crate::layer::validate::LowerView;
use crate::names::{ImageId, OwnerName, StoreName};

use super::record::OwnerLease;
use crate::refs::{BlobInfo, Expect, Pin, RefName, RefTarget, Reference, References};
use crate::storer::{
    ByteStream, Capabilities, Exporter, ImageStorer, ImportSummary, Importer, JoinedImage,
    Resolver, Writable, check_write_id,
};

/// The synchronous operations of a blocking backend; every method may block on I/O and is
/// only called on the blocking pool. The contracts are those of the async trait methods named
/// in each method's documentation.
pub trait BlockingCatalog: Send + Sync {
    /// [`ImageStorer::create_image_store`].
    fn create_store(&self, name: &StoreName) -> Result<Url>;
    /// [`ImageStorer::delete_image_store`].
    fn delete_store(&self, name: &StoreName) -> Result<()>;
    /// [`ImageStorer::get_image_store`]: the store's URL, `NotFound` if it does not exist.
    fn store_url(&self, name: &StoreName) -> Result<Url>;
    /// [`ImageStorer::list_image_stores`].
    fn list_stores(&self) -> Result<Vec<Url>>;
    /// [`ImageStorer::get_image`].
    fn image(&self, store: &StoreName, id: &ImageId) -> Result<Image>;
    /// [`ImageStorer::list_images`].
    fn images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>>;
    /// [`ImageStorer::delete_image`].
    fn delete_image(&self, image: &Image) -> Result<Image>;
    /// [`ImageStorer::delete_images`].
    fn delete_images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Result<Image>>>;
    /// [`ImageStorer::image_storage_usage`].
    fn store_usage(&self, store: &StoreName) -> Result<u64>;
    /// [`ImageStorer::image_layer_storage_usage`].
    fn layer_usage(&self, store: &StoreName, id: &ImageId) -> Result<u64>;
    /// [`Resolver::url`].
    fn url(&self, store: &StoreName, id: &ImageId) -> Result<Url>;
    /// [`Resolver::owners`].
    fn owners(&self, url: &Url) -> Result<Vec<OwnerName>>;
    /// [`Resolver::acquire`] and [`Resolver::acquire_lease`] (`Some(lease)`: register or
    /// renew), or [`Resolver::release`] (`None`).
    fn set_owner(
        &self,
        store: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        lease: Option<OwnerLease>,
    ) -> Result<()>;
    /// The layers of image or writable layer `id`, for export, diff and checkout.
    fn stack(&self, store: &StoreName, id: &ImageId) -> Result<Stack>;
    /// [`Importer::create_writable`]; the id is already checked.
    fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable>;
    /// [`Importer::get_writable`].
    fn writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable>;
    /// [`Importer::delete_writable`]; the caller holds the id lock.
    fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()>;
    /// [`Exporter::export_raw`].
    fn raw_layer(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream>;
    /// [`Exporter::export_raw_file`].
    fn raw_layer_file(&self, store: &StoreName, id: &ImageId) -> Result<Option<std::fs::File>>;
    /// [`References::set_reference`].
    fn set_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference>;
    /// [`References::get_reference`].
    fn reference(&self, store: &StoreName, name: &RefName) -> Result<Reference>;
    /// [`References::list_references`].
    fn references(&self, store: &StoreName) -> Result<Vec<Reference>>;
    /// [`References::delete_reference`].
    fn delete_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference>;
    /// [`References::put_blob`].
    fn put_blob(&self, store: &StoreName, digest: &Digest, bytes: &[u8]) -> Result<()>;
    /// [`References::get_blob`].
    fn blob(&self, store: &StoreName, digest: &Digest) -> Result<Vec<u8>>;
    /// [`References::list_blobs`].
    fn blobs(&self, store: &StoreName) -> Result<Vec<BlobInfo>>;
    /// [`References::delete_blob`].
    fn delete_blob(&self, store: &StoreName, digest: &Digest) -> Result<()>;
    /// [`References::pins`].
    fn pins(&self, store: &StoreName) -> Result<Vec<Pin>>;
    /// [`References::set_quota`].
    fn set_quota(&self, store: &StoreName, quota: Option<u64>) -> Result<()>;
    /// [`References::quota`].
    fn quota(&self, store: &StoreName) -> Result<Option<u64>>;
}

/// The handle of a blocking backend: the part of the storage traits that is not a plain
/// catalogue call. Implementing it gives the type [`ImageStorer`] and its companions.
#[async_trait]
pub trait BlockingBackend: Send + Sync + fmt::Debug {
    /// What keeps an id lock held; dropping it releases the lock.
    type IdLock: Send;

    /// The shared state the catalogue calls run on.
    fn catalog(&self) -> Arc<dyn BlockingCatalog>;

    /// [`ImageStorer::scheme`].
    fn scheme(&self) -> &'static str;

    /// [`ImageStorer::capabilities`].
    fn capabilities(&self) -> Capabilities;

    /// Waits for and takes the write lock of id `id` in `store` (`NotFound` if the store does
    /// not exist): one writer of an id works at a time. Dropped mid-way, no lock is left held.
    async fn lock_id(&self, store: &StoreName, id: &ImageId) -> Result<Self::IdLock>;

    /// Writes image `id` on `parent` from `body`, taking the id lock itself; with `sum`, the
    /// bytes must hash to it. The id and metadata are already checked. Dropped mid-way, it
    /// must leave nothing visible and free the id (the catalogue's `StagedImage` does both).
    async fn write_layer(
        &self,
        store: &StoreName,
        parent: &ImageId,
        id: &ImageId,
        meta: Metadata,
        sum: Option<Digest>,
        body: ByteStream,
    ) -> Result<Image>;

    /// The bounds for layers this backend reads, imports included: the defaults, unless the
    /// backend can hold less (the disk backends bound a file's size by their disks' capacity).
    fn ingest_limits(&self) -> IngestLimits {
        IngestLimits::default()
    }

    /// Applies the (already filtered) `tar` to writable layer `id` over `lower`, its current
    /// contents; the caller holds the id lock and has checked that the layer exists. Dropped
    /// mid-way, the layer must stay as it was: an import completes by a marker written last.
    async fn import_layer(
        &self,
        store: &StoreName,
        id: &ImageId,
        lower: Arc<dyn LowerView>,
        tar: ByteStream,
        limits: IngestLimits,
    ) -> Result<ImportSummary>;

    /// [`ImageStorer::join_image`]: `Unsupported` unless the backend runs virtual machines.
    async fn join_image(
        &self,
        store: &StoreName,
        id: &ImageId,
        vm: &str,
        disk: &ImageId,
    ) -> Result<JoinedImage> {
        let _ = (store, id, vm, disk);
        Err(JoinedImage::unsupported(BlockingBackend::scheme(self)))
    }
}

/// Runs `f` on `ctx` on the blocking pool; a panicking task becomes a backend error of
/// `backend`.
pub async fn run_blocking<C, T, F>(backend: &'static str, ctx: Arc<C>, f: F) -> Result<T>
where
    C: ?Sized + Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&C) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .map_err(|e| Error::backend(backend, format!("blocking task failed: {e}"), false))?
}

/// Runs a catalogue call of `b` on the blocking pool.
async fn run<B, T, F>(b: &B, f: F) -> Result<T>
where
    B: BlockingBackend + ?Sized,
    T: Send + 'static,
    F: FnOnce(&(dyn BlockingCatalog + 'static)) -> Result<T> + Send + 'static,
{
    run_blocking(b.scheme(), b.catalog(), f).await
}

#[async_trait]
impl<B: BlockingBackend + 'static> ImageStorer for B {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn scheme(&self) -> &'static str {
        BlockingBackend::scheme(self)
    }

    fn capabilities(&self) -> Capabilities {
        BlockingBackend::capabilities(self)
    }

    async fn create_image_store(&self, name: &StoreName) -> Result<Url> {
        let name = name.clone();
        run(self, move |c| c.create_store(&name)).await
    }

    async fn delete_image_store(&self, name: &StoreName) -> Result<()> {
        let name = name.clone();
        run(self, move |c| c.delete_store(&name)).await
    }

    async fn get_image_store(&self, name: &StoreName) -> Result<Url> {
        let name = name.clone();
        run(self, move |c| c.store_url(&name)).await
    }

    async fn list_image_stores(&self) -> Result<Vec<Url>> {
        run(self, |c| c.list_stores()).await
    }

    async fn write_image(
        &self,
        parent: &Image,
        id: &ImageId,
        meta: Metadata,
        sum: &Digest,
        body: ByteStream,
    ) -> Result<Image> {
        check_write_id(id)?;
        validate_metadata(&meta)?;
        self.write_layer(&parent.store, &parent.id, id, meta, Some(sum.clone()), body)
            .await
    }

    async fn get_image(&self, store: &StoreName, id: &ImageId) -> Result<Image> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.image(&s, &id)).await
    }

    async fn list_images(&self, store: &StoreName, ids: &[ImageId]) -> Result<Vec<Image>> {
        let (s, ids) = (store.clone(), ids.to_vec());
        run(self, move |c| c.images(&s, &ids)).await
    }

    async fn delete_image(&self, image: &Image) -> Result<Image> {
        let image = image.clone();
        run(self, move |c| c.delete_image(&image)).await
    }

    async fn delete_images(
        &self,
        store: &StoreName,
        images: &[Image],
    ) -> Result<Vec<Result<Image>>> {
        let s = store.clone();
        let ids: Vec<ImageId> = images.iter().map(|i| i.id.clone()).collect();
        run(self, move |c| c.delete_images(&s, &ids)).await
    }

    async fn image_storage_usage(&self, store: &StoreName) -> Result<u64> {
        let s = store.clone();
        run(self, move |c| c.store_usage(&s)).await
    }

    async fn image_layer_storage_usage(&self, store: &StoreName, id: &ImageId) -> Result<u64> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.layer_usage(&s, &id)).await
    }

    async fn join_image(
        &self,
        store: &StoreName,
        id: &ImageId,
        vm: &str,
        disk: &ImageId,
    ) -> Result<JoinedImage> {
        BlockingBackend::join_image(self, store, id, vm, disk).await
    }
}

#[async_trait]
impl<B: BlockingBackend> Resolver for B {
    async fn url(&self, store: &StoreName, id: &ImageId) -> Result<Url> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.url(&s, &id)).await
    }

    async fn owners(&self, url: &Url) -> Result<Vec<OwnerName>> {
        let url = url.clone();
        run(self, move |c| c.owners(&url)).await
    }

    async fn acquire(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        let (s, id, o) = (store.clone(), id.clone(), owner.clone());
        run(self, move |c| {
            c.set_owner(&s, &id, &o, Some(OwnerLease::new(None)))
        })
        .await
    }

    async fn acquire_lease(
        &self,
        store: &StoreName,
        id: &ImageId,
        owner: &OwnerName,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let (s, id, o) = (store.clone(), id.clone(), owner.clone());
        run(self, move |c| {
            c.set_owner(&s, &id, &o, Some(OwnerLease::new(Some(ttl))))
        })
        .await
    }

    async fn release(&self, store: &StoreName, id: &ImageId, owner: &OwnerName) -> Result<()> {
        let (s, id, o) = (store.clone(), id.clone(), owner.clone());
        run(self, move |c| c.set_owner(&s, &id, &o, None)).await
    }
}

/// The stack of image or writable layer `id`, read on the blocking pool.
async fn stack_of<B: BlockingBackend>(b: &B, store: &StoreName, id: &ImageId) -> Result<Stack> {
    let (s, id) = (store.clone(), id.clone());
    run(b, move |c| c.stack(&s, &id)).await
}

#[async_trait]
impl<B: BlockingBackend> Importer for B {
    async fn create_writable(&self, parent: &Image, id: &ImageId) -> Result<Writable> {
        check_write_id(id)?;
        let (p, id) = (parent.clone(), id.clone());
        run(self, move |c| c.create_writable(&p, &id)).await
    }

    async fn get_writable(&self, store: &StoreName, id: &ImageId) -> Result<Writable> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.writable(&s, &id)).await
    }

    async fn import(
        &self,
        store: &StoreName,
        id: &ImageId,
        filter: &FilterSpec,
        tar: ByteStream,
    ) -> Result<ImportSummary> {
        let _lock = self.lock_id(store, id).await?;
        self.get_writable(store, id).await?;
        let lower: Arc<dyn LowerView> = Arc::new(stack_of(self, store, id).await?.chain());
        let limits = self.ingest_limits();
        let filtered = filter_tar(tar, filter.clone(), limits.tar);
        self.import_layer(store, id, lower, filtered, limits).await
    }

    async fn commit_writable(
        &self,
        store: &StoreName,
        id: &ImageId,
        new_id: &ImageId,
        meta: Metadata,
    ) -> Result<Image> {
        check_write_id(new_id)?;
        validate_metadata(&meta)?;
        let _lock = self.lock_id(store, id).await?;
        let w = self.get_writable(store, id).await?;
        let stack = stack_of(self, store, id).await?;
        let diff = stack.export_since(Some(&w.parent), id, &FilterSpec::all(), true)?;
        let image = self
            .write_layer(store, &w.parent, new_id, meta, None, diff)
            .await?;
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.delete_writable(&s, &id)).await?;
        Ok(image)
    }

    async fn delete_writable(&self, store: &StoreName, id: &ImageId) -> Result<()> {
        let _lock = self.lock_id(store, id).await?;
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.delete_writable(&s, &id)).await
    }
}

#[async_trait]
impl<B: BlockingBackend> Exporter for B {
    async fn export(
        &self,
        store: &StoreName,
        id: &ImageId,
        ancestor: Option<&ImageId>,
        filter: &FilterSpec,
        data: bool,
    ) -> Result<ByteStream> {
        stack_of(self, store, id)
            .await?
            .export_since(ancestor, id, filter, data)
    }

    async fn export_raw(&self, store: &StoreName, id: &ImageId) -> Result<ByteStream> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.raw_layer(&s, &id)).await
    }

    async fn export_raw_file(
        &self,
        store: &StoreName,
        id: &ImageId,
    ) -> Result<Option<std::fs::File>> {
        let (s, id) = (store.clone(), id.clone());
        run(self, move |c| c.raw_layer_file(&s, &id)).await
    }

    async fn checkout(
        &self,
        store: &StoreName,
        id: &ImageId,
        dest: &Path,
        options: &CheckoutOptions,
    ) -> Result<CheckoutReport> {
        stack_of(self, store, id)
            .await?
            .checkout(dest.to_owned(), options.clone())
            .await
    }
}

#[async_trait]
impl<B: BlockingBackend> References for B {
    async fn set_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        target: &RefTarget,
        expect: &Expect,
    ) -> Result<Reference> {
        let (s, n, t, e) = (store.clone(), name.clone(), target.clone(), expect.clone());
        run(self, move |c| c.set_reference(&s, &n, &t, &e)).await
    }

    async fn get_reference(&self, store: &StoreName, name: &RefName) -> Result<Reference> {
        let (s, n) = (store.clone(), name.clone());
        run(self, move |c| c.reference(&s, &n)).await
    }

    async fn list_references(&self, store: &StoreName) -> Result<Vec<Reference>> {
        let s = store.clone();
        run(self, move |c| c.references(&s)).await
    }

    async fn delete_reference(
        &self,
        store: &StoreName,
        name: &RefName,
        expect: &Expect,
    ) -> Result<Reference> {
        let (s, n, e) = (store.clone(), name.clone(), expect.clone());
        run(self, move |c| c.delete_reference(&s, &n, &e)).await
    }

    async fn put_blob(&self, store: &StoreName, digest: &Digest, bytes: Vec<u8>) -> Result<()> {
        let (s, d) = (store.clone(), digest.clone());
        run(self, move |c| c.put_blob(&s, &d, &bytes)).await
    }

    async fn get_blob(&self, store: &StoreName, digest: &Digest) -> Result<Vec<u8>> {
        let (s, d) = (store.clone(), digest.clone());
        run(self, move |c| c.blob(&s, &d)).await
    }

    async fn list_blobs(&self, store: &StoreName) -> Result<Vec<BlobInfo>> {
        let s = store.clone();
        run(self, move |c| c.blobs(&s)).await
    }

    async fn delete_blob(&self, store: &StoreName, digest: &Digest) -> Result<()> {
        let (s, d) = (store.clone(), digest.clone());
        run(self, move |c| c.delete_blob(&s, &d)).await
    }

    async fn pins(&self, store: &StoreName) -> Result<Vec<Pin>> {
        let s = store.clone();
        run(self, move |c| c.pins(&s)).await
    }

    async fn set_quota(&self, store: &StoreName, quota: Option<u64>) -> Result<()> {
        let s = store.clone();
        run(self, move |c| c.set_quota(&s, quota)).await
    }

    async fn quota(&self, store: &StoreName) -> Result<Option<u64>> {
        let s = store.clone();
        run(self, move |c| c.quota(&s)).await
    }
}
