//! The crash test (`imagestore_conformance::crash`) against the `vmdk://` backend: 30
//! SIGKILLs of a writer at random moments; after each, every image exports with its files'
//! digests verified and its disk passes `qemu-img check`.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use disk::DiskHooks;
use imagestore_conformance::support;

fn crashes_leave_checked_images(root: PathBuf) -> anyhow::Result<()> {
    let url = format!("vmdk://{}?capacity_kib=1048576", root.display());
    let hooks = DiskHooks::new(&root, &root.join(".imagestore-work"));
    imagestore_conformance::crash::run(url, Arc::new(hooks), 30)
}

fn main() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let root = support::program("qemu-img").map(|()| dir.path().join("ds"));
    Ok(support::run(vec![support::trial(
        "crashes_leave_checked_images",
        root,
        crashes_leave_checked_images,
    )]))
}
