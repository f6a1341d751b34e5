//! The `vmdk://` and `vsphere://` backends of imagestore, in VIC's representation: a datastore
//! folder per image holding a VMDK disk, on a local folder or on a vSphere datastore. The scratch image is a thin monolithicSparse base disk with an ext4
//! filesystem labelled `containerfs`; every layer is a delta disk whose parent is its parent
//! image's disk and which holds only the 64 KiB grains the layer changed.
//!
//! ```no_run
//! # async fn demo() -> imagestore_core::Result<()> {
//! let config = imagestore_vsphere::Config {
//!     root: "/srv/datastore".into(),
//!     work: None,
//!     options: Default::default(),
//! };
//! let store = imagestore_vsphere::open_vmdk(config).await?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! * [`store`] (with the private `write` and `content`) — the `ImageStorer` on any datastore:
//!   the shared catalogue with layers kept as delta disks, and the VMDK export
//!   ([`VmdkExport`]);
//! * [`datastore`] / [`local_ds`] — the file operations on a datastore, and the local one;
//! * `layout` (internal) — VIC's folders on a datastore;
//! * `build`, `ext4`, `verify`, `extents`, `disk` (internal) — building the scratch disk and
//!   each layer's delta disk (ext4 written in-process), and reading each layer back before
//!   it is committed; `fsread` reads files through a chain's ext4;
//! * [`vmdk`] — the sparse VMDK format, read and written by this crate;
//! * `vsphere` (feature `vcenter`) — the datastore behind vCenter or ESXi (`vsphere://`): a
//!   SOAP client, the `/folder` HTTP endpoint, VMs that use images.

#![deny(missing_docs)]

// The API: configuration, the datastore traits and the local datastore, the store, the VMDK
// format, and (feature `vcenter`) vSphere.
pub mod config;
pub mod datastore;
pub mod local_ds;
pub mod store;
pub mod vmdk;

// How layers become disks. Public only so this crate's integration tests can check each step
// against qemu-img, e2fsck and debugfs; not API, not covered by semver.
#[doc(hidden)]
pub mod build;
#[doc(hidden)]
pub mod disk;
#[doc(hidden)]
pub mod ext4;
#[doc(hidden)]
pub mod fsread;
#[doc(hidden)]
pub mod verify;

mod content;
mod error;
mod extents;
mod layout;
#[cfg(feature = "vcenter")]
pub mod vsphere;
mod write;

use std::sync::Arc;

use imagestore_core::registry::{Backend, OpenFuture};
use imagestore_core::{ImageStorer, Result, Url};

pub use config::{Config, Options};
pub use content::VmdkExport;
pub use store::{DiskLayers, DiskStore, MAX_CHAIN_DEPTH};

/// The scheme of the local-datastore backend.
pub const SCHEME: &str = "vmdk";
/// The scheme of the vSphere backend.
pub const VSPHERE_SCHEME: &str = "vsphere";

/// Opens a `vmdk://` backend on the datastore folder `config.root` (created if missing).
pub async fn open_vmdk(config: Config) -> Result<DiskStore> {
    let Config {
        root,
        work,
        options,
    } = config;
    let ds = tokio::task::spawn_blocking(move || local_ds::LocalDatastore::open(root, work))
        .await
        .map_err(|e| imagestore_core::Error::backend(SCHEME, e.to_string(), false))??;
    DiskStore::open(Arc::new(ds), options).await
}

fn open(url: Url) -> OpenFuture {
    Box::pin(async move {
        let config = Config::from_url(&url)?;
        let store = open_vmdk(config).await?;
        Ok(Arc::new(store) as Arc<dyn ImageStorer>)
    })
}

#[cfg(feature = "vcenter")]
fn open_vsphere(url: Url) -> OpenFuture {
    Box::pin(async move {
        let config = vsphere::config::VsphereConfig::from_url(&url)?;
        Ok(vsphere::VsphereStore::open(config).await?.storer())
    })
}

#[cfg(feature = "vcenter")]
inventory::submit! {
    Backend {
        scheme: VSPHERE_SCHEME,
        feature: "vsphere",
        description: "VIC's layout on a datastore behind vCenter or ESXi (vsphere://host/datacenter/datastore/folder)",
        open: open_vsphere,
    }
}

inventory::submit! {
    Backend {
        scheme: SCHEME,
        feature: "vmdk",
        description: "VMDK delta disks holding ext4 in VIC's layout, on a local datastore folder (vmdk:///absolute/path)",
        open,
    }
}
