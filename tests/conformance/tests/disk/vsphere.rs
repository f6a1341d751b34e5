//! The vsphere:// suite on vcsim, which `cargo xtask conformance vsphere` (and `cargo xtask
//! ci`) builds and starts, passing its URL and datastore folder in `IMAGESTORE_TEST_VSPHERE`
//! and `IMAGESTORE_TEST_VSPHERE_DIR` and its login in `IMAGESTORE_VSPHERE_USER` and
//! `IMAGESTORE_VSPHERE_PASSWORD`. Under `CI=true` a missing simulator fails the run. The
//! hooks read VIC's layout in the simulator's datastore folder directly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use imagestore_conformance::{Ctx, catalogue_trials, support, trials};

use super::DiskHooks;

/// Where the simulator runs, as `cargo xtask conformance vsphere` passes it.
#[derive(Clone)]
struct Simulator {
    base: String,
    dir: PathBuf,
    /// The datastore folder of this test binary run.
    folder: String,
    /// The backend's local work folder of this run.
    work: PathBuf,
}

async fn ctx(sim: Simulator, query: &'static str) -> Result<Ctx> {
    let url = format!(
        "{}/{}?allow_http=true&work={}{query}",
        sim.base,
        sim.folder,
        sim.work.display()
    );
    let hooks = DiskHooks::new(&sim.dir.join(&sim.folder), &sim.work);
    Ctx::open(url, Arc::new(hooks)).await
}

/// Runs the whole suite against `vsphere://` on vcsim, with `query` (`""` or
/// `&format=...`) added to the URL.
pub fn vsphere_suite(query: &'static str) -> Result<ExitCode> {
    const START: &str = "start vcsim with `cargo xtask conformance vsphere`";
    // One datastore folder and one work folder per test binary run.
    let work = tempfile::tempdir()?;
    let folder = format!(
        "conformance-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let need = support::both(
        support::both(
            support::env("IMAGESTORE_TEST_VSPHERE", START),
            support::env("IMAGESTORE_TEST_VSPHERE_DIR", START),
        ),
        support::program("qemu-img"),
    )
    .map(|((base, dir), ())| Simulator {
        base,
        dir: PathBuf::from(dir),
        folder,
        work: work.path().to_owned(),
    });
    let open = move |sim| ctx(sim, query);
    let mut all = trials("", need.clone(), open);
    all.extend(catalogue_trials("", need, open));
    Ok(support::run(all))
}
