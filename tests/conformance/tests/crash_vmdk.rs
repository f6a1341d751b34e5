//! The crash test (`imagestore_conformance::crash`) against the `vmdk://` backend: 30
//! SIGKILLs of a writer at random moments; after each, every image exports with its files'
//! digests verified and its disk passes `qemu-img check`.

mod disk;

use std::sync::Arc;

use disk::DiskHooks;
use imagestore_conformance::require_tool;

fn main() -> anyhow::Result<()> {
    if !require_tool("qemu-img") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("ds");
    let url = format!("vmdk://{}?capacity_kib=1048576", root.display());
    let hooks = DiskHooks::new(&root, &root.join(".imagestore-work"));
    imagestore_conformance::crash::run(url, Arc::new(hooks), 30)
}
