//! The conformance suite against the `file://` backend.

// A libtest-mimic test binary: what clippy.toml allows in `#[test]` functions is allowed
// here too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod local_hooks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use imagestore_conformance::{Ctx, case_trial, catalogue_trials, support, trials};
use local_hooks::LocalHooks;

async fn ctx(root: PathBuf) -> Result<Ctx> {
    let url = format!("file://{}", root.display());
    Ctx::open(url, Arc::new(LocalHooks { root })).await
}

fn main() -> Result<ExitCode> {
    // One root per test binary run: every case makes its own stores inside it.
    let root = tempfile::tempdir()?;
    let mut all = trials("", Ok(root.path().to_owned()), ctx);
    all.extend(catalogue_trials("", Ok(root.path().to_owned()), ctx));
    // Only file:// holds a 64 GiB sparse file whatever its configuration (the disk backends
    // bound files by their disks' capacity; the corpus checks that every backend refuses one
    // too big).
    all.push(case_trial(
        "large_sparse_file_stays_sparse".to_owned(),
        Ok(root.path().to_owned()),
        ctx,
        |ctx| async move {
            imagestore_conformance::cases::large_sparse_file_stays_sparse(&ctx, 64 << 30).await
        },
    ));
    Ok(support::run(all))
}
