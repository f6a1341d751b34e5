//! `cargo xtask ci`: formatting, lints per feature set, tests, docs.

use anyhow::Result;

use crate::util::{cargo, run};

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
    crate::fixture::prepare_for_tests()?;
    run(cargo().args(["test", "--workspace", "--exclude", "imagestore"]))?;
    crate::sample::check_in_ci()?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("ci: all checks passed");
    Ok(())
}
