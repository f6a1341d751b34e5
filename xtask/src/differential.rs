//! `cargo xtask differential`: our tar reader against Go's `archive/tar`. Builds the Go lister
//! in `xtask/tarlist/` (standard library only, GOPATH mode, no network) and runs the
//! conformance crate's `differential` test with it; see `docs/security.md`, "A second parser".

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::ci::in_ci;
use crate::util::{cargo, have, root, run, work_dir};

/// The variable the test reads the lister's path from.
pub const TARLIST_VAR: &str = "IMAGESTORE_TARLIST";

/// How to install Go, for messages.
pub const INSTALL_HINT: &str = "apt-get install -y golang-go";

/// Builds the lister (again only when its source is newer than the binary).
pub fn build() -> Result<PathBuf> {
    if !have("go") {
        bail!("Go is not installed; install: {INSTALL_HINT}");
    }
    let dir = work_dir("tarlist")?;
    let bin = dir.join("tarlist");
    let src = root().join("xtask/tarlist/main.go");
    let modified = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
    if modified(&bin).is_some() && modified(&bin) >= modified(&src) {
        return Ok(bin);
    }
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(root().join("xtask/tarlist"))
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("go-cache")))
    .context("building the Go tar lister")?;
    Ok(bin)
}

/// The lister for CI: built, or `None` (with a message) when Go is missing outside CI. Under
/// `CI=true` missing Go is an error.
pub fn for_ci() -> Result<Option<PathBuf>> {
    if have("go") {
        return build().map(Some);
    }
    if in_ci() {
        bail!("CI needs Go for the differential tar test; install: {INSTALL_HINT}");
    }
    eprintln!(
        "ci: Go is not installed, the differential tar test will be reported as ignored; install: {INSTALL_HINT}"
    );
    Ok(None)
}

/// Runs the differential test with the lister. `IMAGESTORE_DIFF_SEED` and
/// `IMAGESTORE_DIFF_COUNT` pass through; disagreeing archives are kept under
/// `target/xtask/differential/`.
pub fn differential() -> Result<()> {
    let bin = build()?;
    let out = work_dir("differential")?;
    run(cargo()
        .args([
            "test",
            "-p",
            "imagestore-conformance",
            "--test",
            "differential",
            "--",
            "--nocapture",
        ])
        .env(TARLIST_VAR, &bin)
        .env("IMAGESTORE_DIFF_OUT", &out)
        .env("CI", "true"))
}
