//! The `vmdk://` backend of imagestore, in VIC's representation: a datastore folder per image
//! holding a VMDK disk. The scratch image is a thin monolithicSparse base disk with an ext4
//! filesystem labelled `containerfs`; every layer is a delta disk whose parent is its parent
//! image's disk and which holds only the 64 KiB grains the layer changed.
//!
//! * [`vmdk`] — the sparse VMDK format, read and written by this crate;
//! * [`ext4`] — building and changing the ext4 filesystem inside the disks;
//! * [`layer`] — building the scratch disk and the delta disk of each layer;
//! * [`disk`] — disks from raw images and raw images from chains;
//! * [`images`] — writing the scratch image and layer images onto a datastore;
//! * [`layout`] — VIC's folders and commit protocol on a datastore;
//! * [`datastore`] / [`local_ds`] — the file operations on a datastore.

#![deny(missing_docs)]

pub mod datastore;
pub mod disk;
pub mod error;
pub mod ext4;
pub mod images;
pub mod layer;
pub mod layout;
pub mod local_ds;
pub mod vmdk;
