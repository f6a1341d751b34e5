//! [`VsphereStore`]: the disk backend on a vSphere datastore, plus what only vSphere has:
//! attaching an image to a VM as a new child disk (VIC's ImageJoin), which then counts
//! among the image's users.

use std::sync::Arc;

use imagestore_core::{ImageId, ImageStorer, Result, StoreName};

use super::config::VsphereConfig;
use super::{DiskInfo, JoinedDisk, VsphereDatastore};
use crate::store::{DiskStore, image_disk};

/// A `vsphere://` image store.
#[derive(Debug, Clone)]
pub struct VsphereStore {
    store: DiskStore,
    ds: Arc<VsphereDatastore>,
}

impl VsphereStore {
    /// Connects and opens the store described by `config`. Without `format=`, its delta
    /// disks are in the format the datastore wants ([`super::DatastoreKind::delta_format`]).
    pub async fn open(config: VsphereConfig) -> Result<VsphereStore> {
        let mut options = config.options;
        let given = config.format_given;
        let ds = tokio::task::spawn_blocking(move || {
            let ds = VsphereDatastore::connect(config)?;
            let format = if given {
                None
            } else {
                Some(ds.datastore_kind()?.delta_format()?)
            };
            Ok::<_, imagestore_core::Error>((ds, format))
        })
        .await
        .map_err(|e| imagestore_core::Error::backend(super::soap::BACKEND, e.to_string(), false))?;
        let (ds, format) = ds?;
        if let Some(f) = format {
            options.format = f;
        }
        let ds = Arc::new(ds);
        let store = DiskStore::open(ds.clone(), options).await?;
        Ok(VsphereStore { store, ds })
    }

    /// The image store.
    pub fn store(&self) -> &DiskStore {
        &self.store
    }

    /// The image store as the trait object the registry hands out.
    pub fn storer(&self) -> Arc<dyn ImageStorer> {
        Arc::new(self.store.clone())
    }

    /// The datastore and its session.
    pub fn datastore(&self) -> &VsphereDatastore {
        &self.ds
    }

    /// Attaches image `id` of `store` to VM `vm` as a new child disk
    /// `VIC/<store>/containers/<disk>/<disk>.vmdk` (a container's disk, in VIC's terms),
    /// under the store lock, so a concurrent delete of the image either sees the VM or
    /// happens first. `NotFound` if the image or the VM does not exist.
    pub async fn join(
        &self,
        store: &StoreName,
        id: &ImageId,
        vm: &str,
        disk: &ImageId,
    ) -> Result<JoinedDisk> {
        let (vm, ds) = (vm.to_owned(), self.ds.clone());
        self.store
            .with_child_disk(store, id, disk, move |parent, child| {
                ds.join_disk(&vm, parent, child)
            })
            .await
    }

    /// The disk chain of image `id` as vSphere sees it (the image's disk first): for checking
    /// it against the image chain the store records.
    pub async fn disk_chain(&self, store: &StoreName, id: &ImageId) -> Result<Vec<DiskInfo>> {
        let (s, id, ds) = (store.clone(), id.clone(), self.ds.clone());
        self.store
            .run(move |cat| {
                let sp = cat.open_store(&s)?;
                cat.record(&s, &sp, &id)?;
                ds.disk_chain(&image_disk(&sp, &id))
            })
            .await
    }

    /// Detaches a joined disk from its VM and destroys it; the image stays.
    pub async fn leave(&self, joined: &JoinedDisk) -> Result<()> {
        let (ds, joined) = (self.ds.clone(), joined.clone());
        self.store.run(move |_| ds.leave_disk(&joined)).await
    }
}
