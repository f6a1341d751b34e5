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
