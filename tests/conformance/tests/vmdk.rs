//! The conformance suite against the `vmdk://` backend, on a datastore folder in a temporary
//! directory. The backend writes ext4 in-process; the hooks check its disks with `qemu-img`.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod disk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use disk::DiskHooks;
use imagestore_conformance::{Ctx, catalogue_trials, support, trials};

async fn ctx(root: PathBuf) -> Result<Ctx> {
    let url = format!("vmdk://{}", root.display());
    let hooks = DiskHooks::new(&root, &root.join(".imagestore-work"));
    Ctx::open(url, Arc::new(hooks)).await
}

fn main() -> Result<ExitCode> {
    // One datastore per test binary run: every case makes its own stores inside it.
    let dir = tempfile::tempdir()?;
    let root = support::program("qemu-img").map(|()| dir.path().join("ds"));
    let mut all = trials("", root.clone(), ctx);
    all.extend(catalogue_trials("", root, ctx));
    Ok(support::run(all))
}
