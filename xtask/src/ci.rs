//! `cargo xtask ci`: formatting, lints per feature set, tests, docs.

use anyhow::{Result, bail};

use crate::fixture;
use crate::util::{cargo, have, run};

/// True when running under CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Generates the Debian image fixture the interop tests use, when the tools are there. Under
/// CI missing tools are an error; elsewhere the tests that need the fixture skip.
fn fixtures() -> Result<()> {
    let tools = ["debootstrap", "umoci", "skopeo"];
    if tools.iter().all(|t| have(t)) {
        fixture::debian()?;
    } else if in_ci() {
        bail!(
            "CI needs {} to build the test fixtures (see .ci/run)",
            tools.join(", ")
        );
    } else {
        eprintln!(
            "ci: no {} here; the interop tests will skip",
            tools.join("/")
        );
    }
    Ok(())
}

/// Feature sets of the facade whose lints and tests must pass. Without a backend there is
/// nothing for the doctests to open, so that set runs the unit and registry tests only.
const FEATURE_SETS: &[&[&str]] = &[
    &["--no-default-features", "--tests"],
    &[],
    &["--features", "full"],
];

/// Runs every check CI runs.
pub fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for set in FEATURE_SETS {
        run(cargo()
            .args(["clippy", "-p", "imagestore", "--all-targets"])
            .args(*set)
            .args(["--", "-D", "warnings"]))?;
        run(cargo().args(["test", "-p", "imagestore"]).args(*set))?;
    }
    fixtures()?;
    run(cargo()
        .args(["test", "--workspace", "--exclude", "imagestore"])
        .env("IMAGESTORE_FIXTURE_DEBIAN", fixture::debian_dir()?))?;
    // The fuzz targets are a workspace of their own; type-check them so they never rot.
    run(cargo().args(["check", "--manifest-path", "fuzz/Cargo.toml", "--bins"]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("ci: all checks passed");
    Ok(())
}
