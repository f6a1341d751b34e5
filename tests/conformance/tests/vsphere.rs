//! The conformance suite against the `vsphere://` backend, on vcsim (govmomi's vCenter
//! simulator), which `cargo xtask conformance vsphere` (and `cargo xtask ci`) builds and
//! starts, passing its URL and datastore folder in `IMAGESTORE_TEST_VSPHERE` and
//! `IMAGESTORE_TEST_VSPHERE_DIR` and its login in `IMAGESTORE_VSPHERE_USER` and
//! `IMAGESTORE_VSPHERE_PASSWORD`. Under `CI=true` a missing simulator fails the run. The
//! hooks read VIC's layout in the simulator's datastore folder directly.

#![allow(clippy::expect_used)]

mod disk;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use disk::DiskHooks;
use imagestore_conformance::{Ctx, conformance_tests, require_server};

async fn ctx() -> Option<Ctx> {
    let base = require_server("IMAGESTORE_TEST_VSPHERE")?;
    let dir = PathBuf::from(require_server("IMAGESTORE_TEST_VSPHERE_DIR")?);
    // One datastore folder and one work folder per test binary run.
    static RUN: OnceLock<(String, tempfile::TempDir)> = OnceLock::new();
    let (folder, work) = RUN.get_or_init(|| {
        (
            format!(
                "conformance-{:012x}",
                rand::random::<u64>() & 0xffff_ffff_ffff
            ),
            tempfile::tempdir().expect("temp dir"),
        )
    });
    let url = format!(
        "{base}/{folder}?allow_http=true&work={}",
        work.path().display()
    );
    let hooks = DiskHooks::new(&dir.join(folder), work.path());
    Some(
        Ctx::open(url, Arc::new(hooks))
            .await
            .expect("open the vsphere backend"),
    )
}

conformance_tests!(ctx);
