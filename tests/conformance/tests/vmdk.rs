//! The conformance suite against the `vmdk://` backend, on a datastore folder in a temporary
//! directory. The backend writes ext4 in-process and needs no external program.

#![allow(clippy::expect_used)]

mod disk;

use std::sync::Arc;

use disk::DiskHooks;
use imagestore_conformance::{Ctx, conformance_tests};

async fn ctx() -> Option<Ctx> {
    // One datastore per test binary run: every case makes its own stores inside it.
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let root = ROOT
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
        .join("ds");
    let url = format!("vmdk://{}", root.display());
    let hooks = DiskHooks::new(&root, &root.join(".imagestore-work"));
    Some(
        Ctx::open(url, Arc::new(hooks))
            .await
            .expect("open the vmdk backend"),
    )
}

conformance_tests!(ctx);
