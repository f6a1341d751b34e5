//! The conformance suite against the `file://` backend.

#![allow(clippy::expect_used)]

mod local_hooks;

use std::sync::Arc;

use imagestore_conformance::{Ctx, conformance_tests};
use local_hooks::LocalHooks;

async fn ctx() -> Option<Ctx> {
    // One root per test binary run: every case makes its own stores inside it.
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let root = ROOT
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
        .to_owned();
    let url = format!("file://{}", root.display());
    Some(
        Ctx::open(url, Arc::new(LocalHooks { root }))
            .await
            .expect("open the local backend"),
    )
}

conformance_tests!(ctx);

/// Only file:// holds a 64 GiB sparse file whatever its configuration (the disk backends bound
/// files by their disks' capacity; the corpus checks that every backend refuses one too big).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_sparse_file_stays_sparse() -> anyhow::Result<()> {
    let Some(ctx) = ctx().await else {
        return Ok(());
    };
    imagestore_conformance::cases::large_sparse_file_stays_sparse(&ctx, 64 << 30).await
}
