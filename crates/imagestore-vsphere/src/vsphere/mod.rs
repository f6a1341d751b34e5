//! The `vsphere://` datastore: VIC's layout on a datastore behind vCenter or ESXi, reached
//! through the SOAP API (`FileManager`, the datastore browser, the property collector) and the
//! datastore's `/folder` HTTP endpoint, which carries file contents both ways with the
//! session cookie. Layers are built locally, exactly as for `vmdk://`, and streamed up; disks
//! are streamed down into a local cache when a chain is read.
//!
//! Every datastore path is `[<datastore>] <folder>/<path>`; paths are checked before they are
//! sent (no empty segment, no `..`, never the datastore or the folder root for deletes),
//! because the server does not confine them.

mod cache;
pub mod config;
mod datastore;
pub mod disks;
mod locks;
pub mod native;
mod retry;
pub mod soap;
mod store;
pub mod vms;
pub mod xml;

pub use datastore::{VSPHERE_OPTIONS, VsphereDatastore, redacted};
pub use disks::DiskInfo;
pub use native::DatastoreKind;
pub use store::VsphereStore;
pub use vms::JoinedDisk;
